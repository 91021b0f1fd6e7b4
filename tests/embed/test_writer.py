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


def _identity(**changes):
    from geofm.model.identity import ModelIdentity
    from geofm.model.presets import get_preset

    return ModelIdentity.from_config(get_preset("tiny"), random_init=True, seed=0).replace(
        **{"time_location": "zero", "bands": ("red", "nir"), **changes})


def _write(path: Path, metadata) -> Path:
    return write_scene(path, **{**_args(), "metadata": metadata})


def test_model_and_run_facts_are_stored_apart(tmp_path: Path):
    from geofm.embed.writer import read_scene_info, scene_metadata

    meta = scene_metadata(_identity(), failed_chips=["c9"], chips=3, filled_chips=1)
    path = _write(tmp_path / "S.parquet", meta)
    stored = json.loads(pq.read_schema(path).metadata[b"geofm"])
    assert set(stored) == {"model", "run"}
    assert stored["run"] == {"failed_chips": ["c9"], "chips": 3, "filled_chips": 1}
    info = read_scene_info(path)
    assert info is not None and info.model == _identity() and info.failed_chips == ["c9"]


def test_older_flat_layout_is_read(tmp_path: Path):
    from geofm.embed.writer import read_scene_info

    flat = {**_identity().to_dict(), "bands": "red,nir", "failed_chips": ["c1"]}
    info = read_scene_info(_write(tmp_path / "S.parquet", flat))
    assert info is not None and info.model == _identity() and info.failed_chips == ["c1"]


def test_check_one_model_ignores_run_facts_and_refuses_two_models(tmp_path: Path):
    from geofm.embed.writer import check_one_model, scene_metadata
    from geofm.exceptions import ModelMismatchError

    a = _write(tmp_path / "A.parquet", scene_metadata(_identity(), failed_chips=["c1"]))
    b = _write(tmp_path / "B.parquet", scene_metadata(_identity(checkpoint="elsewhere")))
    ident, infos = check_one_model([a, b], purpose="be tested")
    assert ident == _identity() and [i.failed_chips for i in infos] == [["c1"], []]
    c = _write(tmp_path / "C.parquet", scene_metadata(_identity(seed=2, bands=["red"])))
    with pytest.raises(ModelMismatchError, match=r"A.parquet and .*C.parquet hold vectors of "
                                                 r"different models \(seed 0 vs 2, bands "
                                                 r"red,nir vs red\).*cannot be tested.*"
                                                 r"--overwrite") as err:
        check_one_model([a, b, c], purpose="be tested")
    assert err.value.fields == ("seed", "bands")


def test_check_one_model_without_metadata(tmp_path: Path):
    import pyarrow as pa

    from geofm.embed.writer import check_one_model, scene_metadata
    from geofm.exceptions import ModelMismatchError

    bare = [tmp_path / "X.parquet", tmp_path / "Y.parquet"]
    for path in bare:
        pq.write_table(pa.table({"a": [1]}), path)
    with pytest.raises(GeofmValueError, match="no readable 'geofm' schema metadata"):
        check_one_model(bare, purpose="share an index")
    ident, _ = check_one_model(bare, purpose="x", require_metadata=False)
    assert ident.preset is None  # unknown, but the same unknown everywhere
    known = _write(tmp_path / "K.parquet", scene_metadata(_identity()))
    with pytest.raises(ModelMismatchError):  # an unknown model never matches a known one
        check_one_model([*bare, known], purpose="x", require_metadata=False)
