import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geofm.cli import main
from geofm.exceptions import SearchIndexError
from geofm.index import build_index
from geofm.index.table import IndexInfo, open_table
from geofm.layout import RunRoot
from geofm.manifest import read_manifest


def _keys(root):
    table = open_table(RunRoot.of(root))
    return table.search().select(["key"]).limit(None).to_arrow().column("key").to_pylist()


def test_build_writes_table_info_and_manifest(tmp_path, make_embedded_root):
    truth = make_embedded_root(tmp_path, n_classes=2, per_class=3, dim=8)
    record = build_index(tmp_path)
    n = len(truth) * 3
    assert record.counts == {"rows": n, "bad_vectors": 0, "added": n, "updated": 0,
                             "table_rows": n, "failed_chips": 0, "unembedded_scenes": 0}
    info = IndexInfo.read(RunRoot.of(tmp_path))
    assert (info.embedding, info.dim, info.model["preset"], info.rows) == ("cls", 8, "tiny", n)
    table = open_table(RunRoot.of(tmp_path)).search().limit(None).to_arrow()
    vec = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, rtol=1e-5)
    cons = pd.read_parquet(RunRoot.of(tmp_path).consolidated_path)
    raw = np.stack(cons["embedding"].to_numpy())
    np.testing.assert_allclose(info.mean, raw.mean(axis=0), rtol=1e-4, atol=1e-6)
    stage = read_manifest(tmp_path)["stages"]["index"]
    assert stage["status"] == "ok" and stage["counts"]["table_rows"] == n
    assert stage["model"]["preset"] == "tiny"


def test_rerun_and_incremental_scenes_add_no_duplicates(tmp_path, make_embedded_root):
    truth = make_embedded_root(tmp_path, n_classes=2, per_class=3, dim=8)
    root = RunRoot.of(tmp_path)
    late = root.scene_ids(root.embeddings_dir)[-1]
    parked = tmp_path / "parked"
    parked.mkdir()
    shutil.move(root.embeddings_path(late), parked / "e.parquet")
    first = build_index(tmp_path)
    assert first.counts["added"] == len(truth) * 2
    again = build_index(tmp_path)
    assert again.counts["added"] == 0 and again.counts["updated"] == 0
    shutil.move(parked / "e.parquet", root.embeddings_path(late))
    third = build_index(tmp_path)
    assert third.counts["added"] == len(truth)
    keys = _keys(tmp_path)
    assert len(keys) == len(set(keys)) == len(truth) * 3
    assert sum(k.startswith(late + "/") for k in keys) == len(truth)


def test_analyze_columns_refresh_existing_rows(tmp_path, make_embedded_root):
    truth = make_embedded_root(tmp_path, n_classes=2, per_class=3, dim=8)
    build_index(tmp_path)
    chip = sorted(truth)[1]
    (tmp_path / "analysis").mkdir()
    pd.DataFrame({"chip_id": [chip], "status": ["change"], "change": [True],
                  "change_date": [pd.Timestamp("2021-07-15", tz="UTC")],
                  "magnitude": [2.0]}).to_parquet(tmp_path / "analysis" / "changes.parquet")
    record = build_index(tmp_path)
    assert record.counts["added"] == 0 and record.counts["updated"] == 3  # 3 dates
    rows = open_table(RunRoot.of(tmp_path)).search().where(f"chip_id = '{chip}'").limit(
        None).to_arrow()
    assert rows.column("change").to_pylist() == [True] * 3
    assert len(_keys(tmp_path)) == len(truth) * 3


def test_other_embedding_needs_overwrite(tmp_path, make_embedded_root):
    make_embedded_root(tmp_path, n_classes=2, per_class=2, dim=8)
    build_index(tmp_path)
    with pytest.raises(SearchIndexError, match="pass --overwrite"):
        build_index(tmp_path, embedding="mean")
    record = build_index(tmp_path, embedding="mean", overwrite=True)
    assert IndexInfo.read(RunRoot.of(tmp_path)).embedding == "mean"
    assert record.counts["table_rows"] == len(_keys(tmp_path))


def test_index_of_another_model_needs_overwrite_run_facts_do_not(tmp_path, make_embedded_root):
    make_embedded_root(tmp_path, n_classes=2, per_class=2, dim=8)
    build_index(tmp_path)
    root = RunRoot.of(tmp_path)

    def rewrite(change):
        for scene in root.scene_ids(root.embeddings_dir):
            path = root.embeddings_path(scene)
            table = pq.read_table(path)
            stored = change(json.loads(table.schema.metadata[b"geofm"]))
            pq.write_table(table.replace_schema_metadata({"geofm": json.dumps(stored)}), path)

    # the same vectors, stored in the {model, run} layout with a run fact: still this index
    rewrite(lambda flat: {"model": flat, "run": {"failed_chips": []}})
    assert build_index(tmp_path).counts["added"] == 0
    # every scene re-embedded with another seed: the index holds other vectors
    rewrite(lambda m: {**m, "model": {**m["model"], "seed": 5}})
    with pytest.raises(SearchIndexError, match=r"index vs run: seed None vs 5.*pass --overwrite"):
        build_index(tmp_path)
    build_index(tmp_path, overwrite=True)
    assert IndexInfo.read(root).model["seed"] == 5


def test_zero_vector_is_a_failure_not_indexed(tmp_path, make_embedded_root):
    truth = make_embedded_root(tmp_path, n_classes=2, per_class=2, dim=8)
    root = RunRoot.of(tmp_path)
    scene = root.scene_ids(root.embeddings_dir)[0]
    table = pq.read_table(root.embeddings_path(scene))
    vecs = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    vecs[0] = 0.0
    col = pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 8)
    table = table.set_column(table.schema.get_field_index("embedding"), "embedding", col)
    pq.write_table(table, root.embeddings_path(scene))
    code = main(["index", "--root", str(tmp_path)])
    assert code == 1
    stage = read_manifest(tmp_path)["stages"]["index"]
    assert stage["status"] == "failed" and "zero or not finite" in stage["failures"][0]["reason"]
    assert len(_keys(tmp_path)) == len(truth) * 3 - 1


def test_cli_index_then_info_json(tmp_path, make_embedded_root):
    make_embedded_root(tmp_path, n_classes=2, per_class=2, dim=8)
    assert main(["index", "--root", str(tmp_path), "--embedding", "mean"]) == 0
    info = json.loads((tmp_path / "index" / "geofm_index.json").read_text())
    assert info["embedding"] == "mean" and info["dim"] == 8 and len(info["mean"]) == 8
