from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from geofm.embed.writer import read_scene_metadata, write_scene
from geofm.exceptions import GeofmValueError


def _args(n: int = 3, d: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    return dict(scene_id="S", chip_ids=[f"c{i}" for i in range(n)],
                dates=np.array(["2021-01-01T10:00"] * n, dtype="datetime64[ns]"),
                embedding=rng.normal(size=(n, d)).astype(np.float32),
                embedding_mean=rng.normal(size=(n, d)).astype(np.float32),
                metadata={"sha256": "abc", "bands": "red"})


def test_round_trip_and_metadata(tmp_path: Path):
    args = _args()
    patches = np.random.default_rng(1).normal(size=(3, 5, 4))
    path = write_scene(tmp_path / "S.parquet", **args, patches=patches,
                       patches_path=tmp_path / "S_patches.npy")
    table = pq.read_table(path)
    got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(got, args["embedding"])
    assert table.column("date")[0].as_py().isoformat() == "2021-01-01T10:00:00+00:00"
    assert read_scene_metadata(path) == {"sha256": "abc", "bands": "red"}
    assert json.loads(table.schema.metadata[b"geofm"])["bands"] == "red"
    saved = np.load(tmp_path / "S_patches.npy")
    assert saved.dtype == np.float16
    np.testing.assert_allclose(saved, patches, atol=1e-2)


def test_refuses_nan_vectors_and_leaves_nothing(tmp_path: Path):
    args = _args()
    args["embedding_mean"][1, 2] = np.nan
    with pytest.raises(GeofmValueError, match="refusing to write non-finite"):
        write_scene(tmp_path / "S.parquet", **args)
    assert list(tmp_path.iterdir()) == []


def test_shape_mismatch(tmp_path: Path):
    args = _args()
    args["chip_ids"] = ["a"]
    with pytest.raises(GeofmValueError, match=r"do not match 1 chip ids"):
        write_scene(tmp_path / "S.parquet", **args)


def test_metadata_of_foreign_parquet_is_none(tmp_path: Path):
    import pyarrow as pa

    pq.write_table(pa.table({"a": [1]}), tmp_path / "x.parquet")
    assert read_scene_metadata(tmp_path / "x.parquet") is None
