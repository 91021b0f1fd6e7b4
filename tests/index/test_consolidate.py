import json

import geopandas as gpd
import pandas as pd
import pyarrow.parquet as pq
import pytest

from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError
from geofm.index.consolidate import consolidate
from geofm.layout import RunRoot
from geofm.manifest import StageRecord


def test_one_row_per_embedded_chip_and_date_with_metadata(tmp_path, make_embedded_root):
    truth = make_embedded_root(tmp_path, n_classes=2, per_class=3, dim=8)
    root = RunRoot.of(tmp_path)
    frame, vectors, identity = consolidate(root, embedding="cls",
                                           record=StageRecord(root, "index"))
    assert len(frame) == len(truth) * 3  # the invalid chip is not embedded -> not indexed
    assert set(frame["chip_id"]) == set(truth)
    assert vectors.shape == (len(frame), 8)
    assert identity.preset == "tiny" and identity.dim == 8
    assert frame.crs.to_epsg() == 4326
    assert frame.geometry.bounds["minx"].between(10, 20).all()  # lon/lat, not UTM metres
    emb = pq.read_table(root.embeddings_path(frame["scene_id"].iat[0]))
    first = emb.column("embedding")[0].as_py()
    assert vectors[0].tolist() == pytest.approx(first)
    mean_vecs, _, _ = consolidate(root, embedding="mean", record=StageRecord(root, "index"))
    assert mean_vecs["embedding_mean"].iat[0].tolist() == pytest.approx(
        emb.column("embedding_mean")[0].as_py())
    assert frame["change"].isna().all()


def test_change_columns_joined_per_chip(tmp_path, make_embedded_root):
    truth = make_embedded_root(tmp_path, n_classes=2, per_class=3, dim=8)
    changed = sorted(truth)[0]
    (tmp_path / "analysis").mkdir()
    pd.DataFrame({"chip_id": [changed], "status": ["change"], "change": [True],
                  "change_date": [pd.Timestamp("2021-07-15", tz="UTC")],
                  "magnitude": [4.5], "n_observations": [3]}).to_parquet(
        tmp_path / "analysis" / "changes.parquet")
    root = RunRoot.of(tmp_path)
    frame, _, _ = consolidate(root, embedding="cls", record=StageRecord(root, "index"))
    rows = frame[frame["chip_id"] == changed]
    assert (rows["change_status"] == "change").all() and rows["change"].all()
    assert (rows["magnitude"] == 4.5).all()
    assert frame.loc[frame["chip_id"] != changed, "change"].isna().all()


def test_scenes_of_different_models_are_refused(tmp_path, make_embedded_root):
    make_embedded_root(tmp_path, n_classes=2, per_class=2, dim=8)
    root = RunRoot.of(tmp_path)
    last = root.embeddings_path(root.scene_ids(root.embeddings_dir)[-1])
    table = pq.read_table(last)
    other = json.loads(table.schema.metadata[b"geofm"])
    other["preset"] = "base"
    pq.write_table(table.replace_schema_metadata({"geofm": json.dumps(other)}), last)
    with pytest.raises(GeofmValueError, match="cannot share an index"):
        consolidate(root, embedding="cls", record=StageRecord(root, "index"))


def test_scene_without_meta_is_a_recorded_failure(tmp_path, make_embedded_root):
    make_embedded_root(tmp_path, n_classes=2, per_class=2, dim=8)
    root = RunRoot.of(tmp_path)
    lost = root.scene_ids(root.meta_dir)[0]
    root.meta_path(lost).unlink()
    record = StageRecord(root, "index")
    frame, _, _ = consolidate(root, embedding="cls", record=record)
    assert [f.unit for f in record.failures] == [lost]
    assert "re-run `geofm chip`" in record.failures[0].reason
    assert lost not in set(frame["scene_id"]) and len(frame) > 0


def test_no_embeddings_and_bad_embedding_kind(tmp_path):
    root = RunRoot.of(tmp_path)
    with pytest.raises(GeofmFileNotFoundError, match="run `geofm embed"):
        consolidate(root, embedding="cls", record=StageRecord(root, "index"))
    with pytest.raises(GeofmValueError, match="'patch' is not one of"):
        consolidate(root, embedding="patch", record=StageRecord(root, "index"))


def test_consolidated_parquet_reads_back_as_geoparquet(tmp_path, make_embedded_root):
    from geofm.index import build_index

    truth = make_embedded_root(tmp_path, n_classes=2, per_class=2, dim=8)
    build_index(tmp_path)
    back = gpd.read_parquet(RunRoot.of(tmp_path).consolidated_path)
    assert len(back) == len(truth) * 3 and back.crs.to_epsg() == 4326
    assert {"embedding", "embedding_mean", "change", "cloud_fraction"} <= set(back.columns)
    assert len(back["embedding"].iat[0]) == 8
