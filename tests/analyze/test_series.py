"""iter_vectors streams blocks in order with a reading thread, and fails loudly."""

import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geofm.analyze import series
from geofm.analyze.series import index_embeddings, iter_vectors
from geofm.exceptions import GeofmValueError, TableError

DIM = 4


def _write(path, n, offset=0.0, *, row_group_size=None):
    vectors = (np.arange(n * DIM, dtype=np.float32) + offset).reshape(n, DIM)
    pq.write_table(pa.table({
        "chip_id": [f"c{i}" for i in range(n)],
        "date": pa.array([0] * n, type=pa.timestamp("ns", tz="UTC")),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)}),
        path, row_group_size=row_group_size)
    return vectors


def _files(tmp_path):
    paths = [tmp_path / f"s{i}.parquet" for i in range(3)]
    data = [_write(p, 7 + i, 100.0 * i, row_group_size=3) for i, p in enumerate(paths)]
    return paths, data


def test_blocks_come_in_file_and_row_order_within_row_groups(tmp_path, monkeypatch):
    paths, data = _files(tmp_path)
    monkeypatch.setattr(series, "BLOCK_ROWS", 2)
    index = index_embeddings(paths, ["s0", "s1", "s2"])
    seen = []
    for f in iter_vectors(index, "embedding", order=[2, 0, 1]):
        blocks = list(f.blocks)
        # row groups of 3 rows, blocks of at most 2: a block never spans two groups
        assert [len(ok) for _, _, ok in blocks][:2] == [2, 1]
        np.testing.assert_array_equal(np.concatenate([v for _, v, _ in blocks]), data[f.index])
        assert [s for s, _, _ in blocks] == np.cumsum([0] + [len(k) for _, _, k in blocks])[
            :-1].tolist()
        assert f.ok.all() and f.ok.size == data[f.index].shape[0]
        seen.append(f.index)
    assert seen == [2, 0, 1]


def test_a_file_that_changed_or_broke_while_streaming_fails_with_its_name(tmp_path):
    paths, _ = _files(tmp_path)
    index = index_embeddings(paths, ["s0", "s1", "s2"])
    _write(paths[1], 3)  # re-embedded meanwhile: fewer rows
    with pytest.raises(GeofmValueError, match=r"s1\.parquet changed while being analysed "
                                              r"\(3 rows, 8 before\)"):
        for f in iter_vectors(index, "embedding"):
            list(f.blocks)
    paths[1].write_bytes(paths[1].read_bytes()[:40])  # truncated
    with pytest.raises(TableError, match=r"s1\.parquet cannot be read as Parquet"):
        for f in iter_vectors(index, "embedding"):
            list(f.blocks)


def test_stopping_early_ends_the_reading_thread(tmp_path):
    paths, _ = _files(tmp_path)
    index = index_embeddings(paths, ["s0", "s1", "s2"])
    stream = iter_vectors(index, "embedding")
    next(stream)  # the reader is now decoding ahead
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "geofm-read"]
