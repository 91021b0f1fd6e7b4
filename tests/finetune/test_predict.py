import json

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401
import torch

from geofm.chipfile import open_chip
from geofm.exceptions import CheckpointError
from geofm.finetune.cache import ChipEncoder
from geofm.finetune.data import read_chip_table
from geofm.finetune.predict import main, predict
from geofm.finetune.train import load_head


@pytest.fixture(scope="module")
def predicted(trained_head, chipped_root, tiny_encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred")
    table = read_chip_table(chipped_root)
    scene = table["scene_id"].value_counts().index[0]  # the scene with most valid chips
    record = predict(chipped_root, trained_head / "best.pt", out, encoder=tiny_encoder,
                     scenes=[scene], progress=False)
    return out, scene, record


def test_class_map_aligns_pixel_for_pixel_with_its_chips(predicted, trained_head, chipped_root,
                                                         tiny_encoder):
    out, scene, record = predicted
    assert record.counts["written"] == 1 and not record.failures
    head, cfg = load_head(trained_head / "best.pt")
    rows = read_chip_table(chipped_root)
    rows = rows[rows["scene_id"] == scene].reset_index(drop=True)
    assert len(rows) >= 2
    # the inputs are built as in training (time/location zeroed for random weights, the
    # same encoder layers)
    chip_encoder = ChipEncoder(tiny_encoder, chipped_root, rows, tuple(cfg["bands"]),
                               time_location=cfg["time_location"], layers=tuple(cfg["layers"]))
    tokens, _ = chip_encoder(range(len(rows)))
    pixels = torch.from_numpy(chip_encoder.read(range(len(rows)))[0])  # unet: the bands too
    with torch.inference_mode():
        expected = head(tokens, pixels).argmax(dim=1).numpy() + 1
    with rasterio.open(out / f"{scene}.tif") as src:
        assert src.nodata == 0 and src.dtypes[0] == "uint8"
        assert src.tags()["class_1"] == cfg["class_names"][0]
        mosaic = src.read(1)
        for i, rel in enumerate(rows["chip_path"]):
            ds = open_chip(chipped_root / rel)
            assert src.crs == ds.rio.crs
            x, y = ds["x"].values, ds["y"].values
            # every chip pixel centre falls in the mosaic pixel that holds its prediction
            r0, c0 = src.index(x[0], y[0])
            r1, c1 = src.index(x[-1], y[-1])
            assert (r1 - r0 + 1, c1 - c0 + 1) == (y.size, x.size)
            cx, cy = src.xy(r0, c0)
            assert (cx, cy) == pytest.approx((x[0], y[0]))
            np.testing.assert_array_equal(mosaic[r0:r1 + 1, c0:c1 + 1], expected[i])
        # outside the chips: nodata (chips of this run have no nodata pixels)
        assert (mosaic > 0).sum() == len(rows) * 64 * 64


def test_rerun_skips_and_run_json(predicted, trained_head, chipped_root, tiny_encoder):
    out, scene, _ = predicted
    record = predict(chipped_root, trained_head / "best.pt", out, encoder=tiny_encoder,
                     scenes=[scene], progress=False)
    assert record.counts["skipped"] == 1 and record.counts["written"] == 0
    run = json.loads((out / "run.json").read_text())["stages"]["predict"]
    assert run["status"] == "ok" and run["model"]["preset"] == "tiny"


def test_head_from_another_encoder_is_refused(trained_head, chipped_root, tiny_encoder,
                                              tmp_path):
    blob = torch.load(trained_head / "best.pt", weights_only=True)
    blob["config"]["encoder"]["sha256"] = "0" * 64
    blob["config"]["encoder"]["random_init"] = False
    torch.save(blob, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt was trained on another encoder "
                                              r"\(sha256: head trained with '0000"):
        predict(chipped_root, tmp_path / "other.pt", tmp_path / "o", encoder=tiny_encoder,
                progress=False)


def test_head_keeps_the_shared_identity_and_other_seeds_are_refused(trained_head, chipped_root,
                                                                   tmp_path):
    from geofm.exceptions import GeofmWarning
    from geofm.model import load_encoder
    from geofm.model.identity import ModelIdentity

    cfg = load_head(trained_head / "best.pt", device="cpu")[1]
    saved = ModelIdentity.from_dict(cfg["encoder"])
    # the head records how its inputs were made, in the one identity type
    assert saved.bands == tuple(cfg["bands"]) and saved.time_location == cfg["time_location"]
    assert saved.random_init and saved.seed == 0
    with pytest.warns(GeofmWarning, match="RANDOM WEIGHTS"):
        seed1 = load_encoder(preset="tiny", seed=1)
    with pytest.raises(CheckpointError, match=r"another encoder \(seed: head trained with 0, "
                                              r"now 1\)"):
        predict(chipped_root, trained_head / "best.pt", tmp_path / "o", encoder=seed1,
                progress=False)


def test_head_from_before_bands_joined_the_identity_still_predicts(trained_head, chipped_root,
                                                                   tiny_encoder, predicted,
                                                                   tmp_path):
    _, scene, _ = predicted
    blob = torch.load(trained_head / "best.pt", weights_only=True)
    for key in ("bands", "time_location"):  # older heads kept these beside the identity only
        del blob["config"]["encoder"][key]
    torch.save(blob, tmp_path / "old.pt")
    record = predict(chipped_root, tmp_path / "old.pt", tmp_path / "o", encoder=tiny_encoder,
                     scenes=[scene], progress=False)
    assert record.counts["written"] == 1
    # ... and their bands still count: a head of other bands is refused
    blob["config"]["encoder"]["bands"] = ["red"]
    torch.save(blob, tmp_path / "red.pt")
    with pytest.raises(CheckpointError, match="bands: head trained with"):
        predict(chipped_root, tmp_path / "red.pt", tmp_path / "o3", encoder=tiny_encoder,
                scenes=[scene], progress=False)


def test_cli_unknown_scene_is_an_error(trained_head, chipped_root, tmp_path):
    with pytest.warns(Warning, match="RANDOM WEIGHTS"):
        code = main(["--root", str(chipped_root), "--head", str(trained_head / "best.pt"),
                     "--out", str(tmp_path), "--model", "tiny", "--scenes", "nope", "-q"])
    assert code == 1
    run = json.loads((tmp_path / "run.json").read_text())["stages"]["predict"]
    assert run["status"] == "error" and "scene(s) nope have no valid chips" in run["error"]
