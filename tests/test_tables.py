"""Broken stage Parquet files end in one TableError naming the file and the fix."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geofm.cli import main
from geofm.exceptions import GeofmFileNotFoundError, TableError
from geofm.layout import RunRoot
from geofm.tables import iter_row_group_batches, read_geoframe, read_schema, read_table


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_read_table_schema_and_geoframe_turn_pyarrow_errors_into_table_error(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), path)
    assert read_table(path, made_by="embed").column("a").to_pylist() == [1, 2]
    with pytest.raises(TableError, match=r"t\.parquet cannot be read as Parquet .*re-run "
                                         r"`geofm embed` on this run root with --overwrite"):
        read_table(path, made_by="embed", columns=["missing"])
    with pytest.raises(TableError, match="not written by `geofm chip`") as info:
        read_geoframe(path, made_by="chip")  # no "geo" metadata
    assert info.value.path == path and info.value.made_by == "chip"
    _truncate(path)
    for read in (read_table, read_schema, read_geoframe):
        with pytest.raises(TableError, match=r"probably truncated"):
            read(path, made_by="analyze")
    with pytest.raises(GeofmFileNotFoundError, match=r"gone\.parquet does not exist; re-run "
                                                     r"`geofm chip`"):
        read_table(tmp_path / "gone.parquet", made_by="chip")


def _expect_exit_1(argv, path, writer, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{path} cannot be read as Parquet" in err
    assert f"re-run `geofm {writer}` on this run root with --overwrite" in err


@pytest.mark.filterwarnings("ignore:RANDOM WEIGHTS")
def test_truncated_meta_fails_embed(chipped_root, writable_copy, capsys):
    chipped = RunRoot(writable_copy(chipped_root))
    bad = _truncate(chipped.meta_path(chipped.scene_ids(chipped.meta_dir)[0]))
    _expect_exit_1(["embed", "--root", str(chipped.path), "--model", "tiny", "--no-progress",
                    "--workers", "0"], bad, "chip", capsys)
    assert not chipped.embeddings_dir.exists()


def test_truncated_meta_fails_index(embedded_root, writable_copy, capsys):
    embedded = RunRoot(writable_copy(embedded_root))
    bad = _truncate(embedded.meta_path(embedded.scene_ids(embedded.embeddings_dir)[0]))
    _expect_exit_1(["index", "--root", str(embedded.path)], bad, "chip", capsys)


def test_truncated_embeddings_fail_analyze_and_index(embedded_root, writable_copy, capsys):
    root = RunRoot(writable_copy(embedded_root))
    bad = _truncate(root.embeddings_path(root.scene_ids(root.embeddings_dir)[-1]))
    _expect_exit_1(["analyze", "--root", str(root.path), "--no-progress"], bad, "embed",
                   capsys)
    _expect_exit_1(["index", "--root", str(root.path)], bad, "embed", capsys)


def test_a_folder_of_parts_reads_as_one_table_and_a_broken_part_is_a_table_error(tmp_path):
    from geofm.tables import iter_row_groups, read_metadata

    folder = tmp_path / "timeseries.parquet"
    folder.mkdir()
    with pytest.raises(GeofmFileNotFoundError, match="holds no Parquet part"):
        read_schema(folder, made_by="analyze")
    for k in (1, 2):
        pq.write_table(pa.table({"a": [k, k]}), folder / f"part-{k:05d}.parquet")
    assert sorted(read_table(folder, made_by="analyze").column("a").to_pylist()) == [1, 1, 2, 2]
    assert read_schema(folder, made_by="analyze").names == ["a"]
    part = folder / "part-00002.parquet"
    assert read_metadata(part, made_by="analyze").num_rows == 2
    assert [len(t) for t in iter_row_groups(part, made_by="analyze")] == [2]
    _truncate(part)
    for call in (lambda: read_table(folder, made_by="analyze"),
                 lambda: read_metadata(part, made_by="analyze"),
                 lambda: list(iter_row_groups(part, made_by="analyze"))):
        with pytest.raises(TableError, match="re-run `geofm analyze`"):
            call()


def test_iter_row_group_batches_streams_whole_chunks_or_through_a_buffer(tmp_path):
    path = tmp_path / "e.parquet"
    values = np.arange(50 * 4, dtype=np.float32)
    pq.write_table(pa.table({"a": np.arange(50), "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(values), 4)}), path, row_group_size=20)
    for limit in (1 << 20, 0):  # each chunk read whole / through the read buffer
        batches = list(iter_row_group_batches(path, made_by="embed", column="embedding",
                                              batch_size=8, max_prebuffer=limit))
        # batches never span a row group: 8 + 8 + 4 per group of 20, then 8 + 2
        assert [len(b) for b in batches] == [8, 8, 4, 8, 8, 4, 8, 2]
        got = np.concatenate([b.flatten().to_numpy() for b in batches])
        np.testing.assert_array_equal(got, values)
    with pytest.raises(TableError, match="no column 'nope'"):
        list(iter_row_group_batches(path, made_by="embed", column="nope", batch_size=8))
