from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geofm.embed import embed
from geofm.exceptions import CheckpointError, GeofmError, GeofmFileExistsError, GeofmWarning
from geofm.layout import RunRoot
from geofm.manifest import read_manifest


@functools.cache
def _encoder(ckpt: Path):
    from geofm.model import load_encoder

    return load_encoder(ckpt)


def _forward(ckpt: Path, chip_path: Path, *, date, lat: float, lon: float):
    """Direct, unbatched encoder forward of one chip: (cls [D], mean [D], patches [L, D])."""
    import torch

    from geofm.chipfile import read_chip_array
    from geofm.model import make_datacube

    bands = ["blue", "green", "red", "nir"]
    enc = _encoder(ckpt)
    pixels, _ = read_chip_array(chip_path, bands)
    cube = make_datacube(torch.from_numpy(pixels[None]), sensor="sentinel-2-l2a", bands=bands,
                         dates=[date], lats=[lat], lons=[lon], device="cpu")
    with torch.no_grad():
        out = enc(cube)[0].numpy()
    return out[0], out[1:].mean(axis=0), out[1:]


def _vectors(table, column: str) -> np.ndarray:
    return np.stack(table.column(column).to_numpy(zero_copy_only=False))


def test_outputs_match_direct_forward_across_scene_batches(tiny_root: Path, ckpt: Path):
    rr = RunRoot(tiny_root)
    # batch 4 over 3 scenes x 3 chips: batches straddle scenes
    record = embed(tiny_root, checkpoint=ckpt, batch_size=4, device="cpu", patches="full",
                   progress=False)
    assert record.failures == []
    assert record.counts["chips"] == 9 and record.counts["scenes"] == 3
    scenes = rr.scene_ids(rr.meta_dir)
    assert rr.scene_ids(rr.embeddings_dir) == scenes
    for s, scene_id in enumerate(scenes):
        table = pq.read_table(rr.embeddings_path(scene_id))
        assert table.column_names == ["chip_id", "scene_id", "date", "embedding",
                                      "embedding_mean"]
        assert str(table.schema.field("date").type) == "timestamp[ns, tz=UTC]"
        for col in ("embedding", "embedding_mean"):
            vec_type = table.schema.field(col).type
            assert pa.types.is_fixed_size_list(vec_type) and vec_type.list_size == 64
            assert vec_type.value_type == pa.float32()
        meta = pq.read_table(rr.meta_path(scene_id)).to_pandas()
        valid_ids = meta.loc[meta["valid"], "chip_id"].tolist()
        assert table.column("chip_id").to_pylist() == valid_ids
        assert set(table.column("scene_id").to_pylist()) == {scene_id}
        patches = np.load(rr.patches_path(scene_id))
        assert patches.dtype == np.float16 and patches.shape == (3, 64, 64)
        cls, mean = _vectors(table, "embedding"), _vectors(table, "embedding_mean")
        for c, chip_id in enumerate(valid_ids):
            date = table.column("date")[c].as_py()
            exp_cls, exp_mean, exp_patches = _forward(
                ckpt, rr.chip_path(scene_id, chip_id), date=date, lat=50.2, lon=10.25 + c)
            np.testing.assert_allclose(cls[c], exp_cls, atol=1e-4)
            np.testing.assert_allclose(mean[c], exp_mean, atol=1e-4)
            np.testing.assert_allclose(patches[c], exp_patches, atol=2e-2)
        assert date.month == s + 1
    # lat/lon swapped gives a different vector: the test above pins the order
    scene_id, chip_id = scenes[0], "33UUP_64_0000_0000"
    swapped, _, _ = _forward(ckpt, rr.chip_path(scene_id, chip_id),
                             date=np.datetime64("2021-01-01T10:30"), lat=10.25, lon=50.2)
    first = _vectors(pq.read_table(rr.embeddings_path(scene_id)), "embedding")[0]
    assert np.abs(first - swapped).max() > 1e-3


def test_identity_in_parquet_metadata_and_run_json(tiny_root: Path, ckpt: Path):
    from geofm.model.loading import file_sha256

    embed(tiny_root, checkpoint=ckpt, batch_size=8, device="cpu", progress=False)
    rr = RunRoot(tiny_root)
    scene_id = rr.scene_ids(rr.embeddings_dir)[0]
    stored = json.loads(pq.read_schema(rr.embeddings_path(scene_id)).metadata[b"geofm"])
    meta, run = stored["model"], stored["run"]
    assert meta["sha256"] == file_sha256(ckpt)
    assert meta["random_init"] is False and meta["dim"] == 64
    assert meta["bands"] == ["blue", "green", "red", "nir"] and run["failed_chips"] == []
    assert run["chips"] == 3 and run["filled_chips"] == 0
    stage = read_manifest(tiny_root)["stages"]["embed"]
    assert stage["status"] == "ok"
    assert stage["model"]["sha256"] == meta["sha256"]
    assert stage["model"]["checkpoint"] == str(ckpt)


def test_resume_skips_done_scenes_and_overwrite_recomputes(tiny_root: Path, ckpt: Path):
    rr = RunRoot(tiny_root)
    embed(tiny_root, checkpoint=ckpt, device="cpu", patches="full", progress=False)
    stamps = {p: os.stat(p).st_mtime_ns for p in rr.embeddings_dir.iterdir()}
    assert len(stamps) == 6
    # drop one scene's output: only that scene is redone
    redo = rr.embeddings_path(rr.scene_ids(rr.meta_dir)[1])
    redo.unlink()
    record = embed(tiny_root, checkpoint=ckpt, device="cpu", patches="full", progress=False)
    assert record.counts["skipped_scenes"] == 2 and record.counts["chips"] == 3
    assert redo.exists()
    for path, stamp in stamps.items():
        if path.name.split("_patches")[0].split(".parquet")[0] != redo.stem:
            assert os.stat(path).st_mtime_ns == stamp, path
    record = embed(tiny_root, checkpoint=ckpt, device="cpu", patches="full", progress=False)
    assert record.counts["chips"] == 0 and record.counts["skipped_scenes"] == 3
    # overwrite recomputes everything; without patches the stale grids are removed
    record = embed(tiny_root, checkpoint=ckpt, device="cpu", overwrite=True, progress=False)
    assert record.counts["chips"] == 9 and record.counts["skipped_scenes"] == 0
    assert not list(rr.embeddings_dir.glob("*_patches.npy"))
    # asking for patches later redoes the scenes that lack them
    record = embed(tiny_root, checkpoint=ckpt, device="cpu", patches="full", progress=False)
    assert record.counts["chips"] == 9
    assert len(list(rr.embeddings_dir.glob("*_patches.npy"))) == 3


def test_other_model_outputs_need_overwrite(tiny_root: Path, ckpt: Path):
    embed(tiny_root, checkpoint=ckpt, device="cpu", progress=False)
    with pytest.warns(GeofmWarning, match="RANDOM"):
        with pytest.raises(GeofmFileExistsError, match="another model.*--overwrite"):
            embed(tiny_root, model="tiny", device="cpu", progress=False)
    with pytest.warns(GeofmWarning, match="RANDOM"):
        record = embed(tiny_root, model="tiny", device="cpu", overwrite=True, progress=False,
                       batch_size=16)
    rr = RunRoot(tiny_root)
    meta = json.loads(pq.read_schema(rr.embeddings_path(rr.scene_ids(rr.meta_dir)[0]))
                      .metadata[b"geofm"])["model"]
    assert meta["random_init"] is True and meta["preset"] == "tiny" and meta["dim"] == 192
    assert record.extra["model"]["random_init"] is True
    assert read_manifest(tiny_root)["stages"]["embed"]["model"]["random_init"] is True


def _rewrite_metadata(path: Path, change) -> None:
    table = pq.read_table(path)
    stored = change(json.loads(table.schema.metadata[b"geofm"]))
    pq.write_table(table.replace_schema_metadata({"geofm": json.dumps(stored)}), path)


def test_resume_reads_the_older_flat_metadata_and_compares_bands(tiny_root: Path, ckpt: Path):
    embed(tiny_root, checkpoint=ckpt, device="cpu", progress=False)
    rr = RunRoot(tiny_root)
    scenes = rr.scene_ids(rr.embeddings_dir)

    def flat(stored):  # the layout of earlier versions: identity, bands, failed_chips mixed
        return {**stored["model"], "bands": ",".join(stored["model"]["bands"]),
                "failed_chips": stored["run"]["failed_chips"]}

    for scene in scenes:
        _rewrite_metadata(rr.embeddings_path(scene), flat)
    record = embed(tiny_root, checkpoint=ckpt, device="cpu", progress=False)
    assert record.counts["skipped_scenes"] == 3 and record.counts["chips"] == 0
    # the checkpoint moved: the same file is the same model
    moved = tiny_root.parent / "moved.ckpt"
    moved.write_bytes(ckpt.read_bytes())
    record = embed(tiny_root, checkpoint=moved, device="cpu", progress=False)
    assert record.counts["skipped_scenes"] == 3
    # a scene whose vectors were made from other bands is another model's output
    _rewrite_metadata(rr.embeddings_path(scenes[1]), lambda m: {**m, "bands": "red,nir"})
    with pytest.raises(GeofmFileExistsError, match=r"another model.*bands red,nir vs "
                                                   r"blue,green,red,nir.*--overwrite"):
        embed(tiny_root, checkpoint=ckpt, device="cpu", progress=False)


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    (b"not a checkpoint at all", "checkpoint"),
])
def test_bad_checkpoint_fails_before_any_work(tiny_root: Path, tmp_path: Path, content, match):
    bad = tmp_path / "bad.ckpt"
    if content is not None:
        bad.write_bytes(content)
    with pytest.raises(GeofmError, match=match):
        embed(tiny_root, checkpoint=bad, device="cpu", progress=False)
    rr = RunRoot(tiny_root)
    assert not rr.embeddings_dir.exists()
    entry = read_manifest(tiny_root)["stages"]["embed"]  # the fatal error is recorded
    assert entry["status"] == "error" and match in entry["error"]
    assert entry["config"]["checkpoint"] == str(bad)


def test_wrong_architecture_checkpoint_fails_before_any_work(tiny_root: Path, ckpt: Path):
    with pytest.raises(CheckpointError, match="does not fit"):
        embed(tiny_root, checkpoint=ckpt, model="small", device="cpu", progress=False)
    assert not RunRoot(tiny_root).embeddings_dir.exists()


def test_unreadable_chip_is_reported_and_exit_code_is_1(tiny_root: Path, ckpt: Path):
    from geofm.cli import main

    rr = RunRoot(tiny_root)
    scene_id = rr.scene_ids(rr.meta_dir)[1]
    broken = rr.chip_path(scene_id, "33UUP_64_0000_0001")
    broken.write_bytes(b"\x89HDF garbage")
    code = main(["embed", "--root", str(tiny_root), "--checkpoint", str(ckpt), "--device",
                 "cpu", "--workers", "0", "--batch-size", "4", "--no-progress"])
    assert code == 1
    stage = read_manifest(tiny_root)["stages"]["embed"]
    assert stage["status"] == "failed"
    assert [f["unit"] for f in stage["failures"]] == ["33UUP_64_0000_0001"]
    assert stage["failures"][0]["path"] == str(broken)
    assert "cannot read chip" in stage["failures"][0]["reason"]
    table = pq.read_table(rr.embeddings_path(scene_id))
    assert table.column("chip_id").to_pylist() == ["33UUP_64_0000_0000", "33UUP_64_0000_0002"]
    meta = json.loads(table.schema.metadata[b"geofm"])
    assert meta["run"]["failed_chips"] == ["33UUP_64_0000_0001"]
    assert meta["run"]["chips"] == 2
    # the other scenes are complete
    assert len(rr.scene_ids(rr.embeddings_dir)) == 3
    # a re-run retries the incomplete scene only (and fails again on the same chip)
    record = embed(tiny_root, checkpoint=ckpt, device="cpu", progress=False)
    assert record.counts["skipped_scenes"] == 2 and record.counts["failed_chips"] == 1


def _set_pixels(path: Path, fn) -> None:
    import xarray as xr

    from geofm.chipfile import write_chip

    ds = xr.open_dataset(path, engine="h5netcdf", mask_and_scale=False).load()
    bands = ["blue", "green", "red", "nir"]
    pixels = np.stack([ds[b].values[0] for b in bands]).astype(np.float32)
    fn(pixels)
    write_chip(path, pixels, bands=bands, x=ds.x.values, y=ds.y.values, epsg=32633,
               date=ds.time.values[0], nodata=0, attrs={"sensor": "sentinel-2-l2a"})


def test_invalid_pixels_filled_below_threshold_rejected_above(tiny_root: Path, ckpt: Path):
    rr = RunRoot(tiny_root)
    scene_id = rr.scene_ids(rr.meta_dir)[0]
    few = rr.chip_path(scene_id, "33UUP_64_0000_0000")
    many = rr.chip_path(scene_id, "33UUP_64_0000_0002")

    def few_bad(p):  # 2% of the pixels: NaN in one band, nodata in another
        p[0, :1, :] = np.nan
        p[2, 1:2, :40] = 0

    def many_bad(p):  # 25% NaN
        p[1, :16, :] = np.nan

    _set_pixels(few, few_bad)
    _set_pixels(many, many_bad)
    record = embed(tiny_root, checkpoint=ckpt, device="cpu", progress=False)
    assert [f.unit for f in record.failures] == ["33UUP_64_0000_0002"]
    assert "25.0% of its pixels are nodata or NaN" in record.failures[0].reason
    assert record.counts["filled_chips"] == 1
    table = pq.read_table(rr.embeddings_path(scene_id))
    assert table.column("chip_id").to_pylist() == ["33UUP_64_0000_0000", "33UUP_64_0000_0001"]
    vec = _vectors(table, "embedding")
    assert np.isfinite(vec).all() and np.isfinite(_vectors(table, "embedding_mean")).all()

    # the filled chip equals a forward where invalid pixels hold the band mean
    from geofm.sensors import get_sensor

    def fill(p):
        mean, _ = get_sensor("sentinel-2-l2a").normalisation(["blue", "green", "red", "nir"])
        bad = ~np.isfinite(p).all(axis=0) | (p == 0).any(axis=0)
        p[:, bad] = mean[:, None]

    _set_pixels(few, fill)
    exp, _, _ = _forward(ckpt, few, date=table.column("date")[0].as_py(), lat=50.2, lon=10.25)
    np.testing.assert_allclose(vec[0], exp, atol=1e-4)

    # a higher threshold embeds the 25% chip too
    record = embed(tiny_root, checkpoint=ckpt, device="cpu", progress=False, max_invalid=0.3)
    assert record.failures == [] and record.counts["filled_chips"] == 1


def test_non_finite_output_is_a_failure_not_a_vector(tiny_root: Path, ckpt: Path):
    rr = RunRoot(tiny_root)
    scene_id = rr.scene_ids(rr.meta_dir)[2]

    def huge(p):  # finite DNs whose normalised values overflow float32 in the encoder
        p[:] = 3e38

    _set_pixels(rr.chip_path(scene_id, "33UUP_64_0000_0001"), huge)
    record = embed(tiny_root, checkpoint=ckpt, device="cpu", progress=False)
    assert [f.unit for f in record.failures] == ["33UUP_64_0000_0001"]
    assert "non-finite" in record.failures[0].reason
    table = pq.read_table(rr.embeddings_path(scene_id))
    assert "33UUP_64_0000_0001" not in table.column("chip_id").to_pylist()
    for sid in rr.scene_ids(rr.embeddings_dir):
        assert np.isfinite(_vectors(pq.read_table(rr.embeddings_path(sid)), "embedding")).all()


@pytest.mark.slow
def test_workers_give_the_same_vectors(tiny_root: Path, ckpt: Path, tmp_path: Path):
    other = tmp_path / "copy"
    shutil.copytree(tiny_root, other)
    embed(tiny_root, checkpoint=ckpt, device="cpu", progress=False, batch_size=2, workers=0)
    embed(other, checkpoint=ckpt, device="cpu", progress=False, batch_size=5, workers=2)
    rr, ro = RunRoot(tiny_root), RunRoot(other)
    for sid in rr.scene_ids(rr.embeddings_dir):
        a, b = pq.read_table(rr.embeddings_path(sid)), pq.read_table(ro.embeddings_path(sid))
        assert a.column("chip_id").equals(b.column("chip_id"))
        np.testing.assert_allclose(_vectors(a, "embedding"), _vectors(b, "embedding"),
                                   atol=1e-5)


def test_bad_options_fail_fast(tiny_root: Path, ckpt: Path, tmp_path: Path):
    with pytest.raises(GeofmError, match="--checkpoint PATH.*--model"):
        embed(tiny_root, progress=False)
    with pytest.raises(GeofmError, match="unknown patches mode 'grid'"):
        embed(tiny_root, checkpoint=ckpt, patches="grid", progress=False)
    with pytest.raises(GeofmError, match="no chip metadata"):
        embed(tmp_path / "empty", checkpoint=ckpt, progress=False)


@pytest.mark.slow
def test_embeds_the_chip_stage_output(chipped_root: Path, writable_copy, ckpt: Path):
    import pandas as pd

    root = writable_copy(chipped_root)
    rr = RunRoot(root)
    record = embed(root, checkpoint=ckpt, device="cpu", batch_size=16, progress=False)
    assert record.failures == []
    n_valid = 0
    for scene_id in rr.scene_ids(rr.meta_dir):
        meta = pd.read_parquet(rr.meta_path(scene_id))
        valid = meta.loc[meta["valid"], "chip_id"].tolist()
        n_valid += len(valid)
        if valid:
            table = pq.read_table(rr.embeddings_path(scene_id))
            assert table.column("chip_id").to_pylist() == valid
            assert np.isfinite(_vectors(table, "embedding")).all()
    assert n_valid > 0 and record.counts["chips"] == n_valid


def test_bands_without_clay_statistics_fail_before_work(tiny_root: Path, ckpt: Path):
    import geopandas as gpd

    rr = RunRoot(tiny_root)
    scene_id = rr.scene_ids(rr.meta_dir)[2]
    meta = gpd.read_parquet(rr.meta_path(scene_id))
    meta["bands"] = "coastal,blue"
    meta.to_parquet(rr.meta_path(scene_id))
    with pytest.raises(GeofmError, match="bands coastal,blue.*no Clay normalisation"):
        embed(tiny_root, checkpoint=ckpt, device="cpu", progress=False)
    assert not rr.embeddings_dir.exists()


def test_a_failing_batch_is_reported_per_chip(tmp_path: Path, ckpt: Path, make_root):
    root = make_root(tmp_path / "root", n_scenes=1, n_chips=2, size=60)  # 60 % 8 != 0
    record = embed(root, checkpoint=ckpt, device="cpu", progress=False)
    assert [f.unit for f in record.failures] == ["33UUP_60_0000_0000", "33UUP_60_0000_0001"]
    assert "not a multiple of the patch size" in record.failures[0].reason
    assert record.counts["chips"] == 0
    assert not RunRoot(root).embeddings_dir.exists()
    assert read_manifest(root)["stages"]["embed"]["status"] == "failed"
