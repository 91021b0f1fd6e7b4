import json

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch

from geofm.exceptions import GeofmFileExistsError, GeofmFileNotFoundError, GeofmValueError
from geofm.finetune import finetune, main
from geofm.finetune.data import load_labelled_chips, read_chip_table


def test_outputs_of_a_training_run(trained_head, chipped_root, class_names):
    metrics = json.loads((trained_head / "metrics.json").read_text())
    assert metrics["class_names"] == class_names
    assert len(metrics["history"]) == 2
    assert metrics["best_epoch"] in (1, 2)
    assert metrics["best"]["mean_iou"] == max(h["mean_iou"] for h in metrics["history"])
    assert (trained_head / "curves.png").read_bytes()[:4] == b"\x89PNG"
    blob = torch.load(trained_head / "best.pt", weights_only=True)
    cfg = blob["config"]
    assert cfg["task"] == "segmentation" and cfg["n_classes"] == 6 and cfg["patch_size"] == 8
    assert cfg["encoder"]["preset"] == "tiny" and cfg["encoder"]["random_init"] is True
    assert cfg["bands"] == ["blue", "green", "red", "nir"]
    # the token whitening is on by default and was fitted before training
    assert cfg["head_options"]["whiten"] is True
    assert bool(blob["state_dict"]["whitening.fitted"])
    assert not torch.equal(blob["state_dict"]["whitening.matrix"], torch.eye(cfg["dim"]))
    # random weights: time/location channels zeroed, as `geofm embed` does (auto rule)
    assert cfg["time_location"] == "zero" and cfg["encoder"]["time_location"] == "zero"
    # split by location: disjoint, and together every chip location of the run
    train, val = set(cfg["train_locations"]), set(cfg["val_locations"])
    assert not train & val
    assert train | val == set(read_chip_table(chipped_root)["chip_id"])
    # the default decoder sees the bands, through a normalisation fitted on training chips
    assert cfg["head_options"]["decoder"] == "unet" and cfg["head_options"]["bands"] == 4
    assert not torch.equal(blob["state_dict"]["pixel_norm.std"], torch.ones(4))
    # the per-pixel baseline ran on the same validation pixels as the head
    baseline = metrics["baseline"]
    assert 0 < baseline["mean_iou"] <= 1 and baseline["train_pixels"] > 0
    assert sum(baseline["support"]) == sum(metrics["best"]["support"])
    run = json.loads((trained_head / "run.json").read_text())["stages"]["finetune"]
    assert run["status"] == "ok"
    assert run["baseline"]["mean_iou"] == baseline["mean_iou"]  # extra: top-level keys
    assert run["counts"]["train_samples"] + run["counts"]["val_samples"] == run["counts"][
        "samples"]


def test_encoder_weights_unchanged_by_training(chipped_root, label_raster, tiny_encoder,
                                               tmp_path):
    before = {k: v.clone() for k, v in tiny_encoder.state_dict().items()}
    dates = read_chip_table(chipped_root)["date"].sort_values()
    middle = str(dates.iloc[len(dates) // 2].date())
    # cache="none": the encoder runs inside every training step
    finetune(chipped_root, label_raster, tmp_path / "h", encoder=tiny_encoder, epochs=1,
             batch_size=4, cache="none", date_window_days=45, label_date=middle,
             progress=False)
    after = tiny_encoder.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert not tiny_encoder.training
    assert not any(p.requires_grad for p in tiny_encoder.parameters())


def test_labels_follow_the_label_raster(chipped_root, label_raster):
    data = load_labelled_chips(chipped_root, [label_raster])
    with rasterio.open(label_raster) as src:
        full = src.read(1)
        for loc, grid in enumerate(data.grids):
            row = int(round((src.transform.f - grid.transform.f) / 10))
            col = int(round((grid.transform.c - src.transform.c) / 10))
            np.testing.assert_array_equal(data.labels[loc], full[row:row + 64, col:col + 64])
    majority = data.chip_labels()
    for loc, lab in enumerate(data.labels):
        assert majority[loc] == np.bincount(lab.ravel()).argmax()


def test_date_window_keeps_only_acquisitions_near_the_label_date(chipped_root, label_raster):
    table = read_chip_table(chipped_root)
    centre = table["date"].sort_values().iloc[len(table) // 2]
    data = load_labelled_chips(chipped_root, [label_raster], date_window_days=40,
                               label_date=str(centre.date()))
    expected = (table["date"] - pd.Timestamp(centre.date(), tz="UTC")).abs() <= pd.Timedelta(
        days=40)
    assert len(data.samples) == int(expected.sum()) < len(table)
    with pytest.raises(GeofmValueError, match="no chip .* within 3 days of the label date "
                                              "1990-01-01"):
        load_labelled_chips(chipped_root, [label_raster], date_window_days=3,
                            label_date="1990-01-01")
    with pytest.raises(GeofmValueError, match="needs the label date"):
        load_labelled_chips(chipped_root, [label_raster], date_window_days=3)


def test_label_raster_that_misses_the_chips(chipped_root, label_raster, tmp_path):
    moved = tmp_path / "elsewhere.tif"
    with rasterio.open(label_raster) as src:
        profile = src.profile
        profile["transform"] = src.transform @ src.transform.translation(0, 0)
        t = src.transform
        profile["transform"] = type(t)(t.a, t.b, t.c + 200_000, t.d, t.e, t.f - 300_000)
        data = src.read()
    with rasterio.open(moved, "w", **profile) as dst:
        dst.write(data)
    with pytest.raises(GeofmValueError, match=r"label raster .*elsewhere.tif does not overlap "
                                              r"the chips: its bounds are .* in EPSG:32633"):
        load_labelled_chips(chipped_root, [moved])


def test_class_codes_beyond_the_heads_classes(chipped_root, label_raster):
    with pytest.raises(GeofmValueError, match=r"has class code 6 but the head has 3 classes"):
        load_labelled_chips(chipped_root, [label_raster], n_classes=3)


def test_missing_label_file_and_existing_output(chipped_root, trained_head, label_raster,
                                                tmp_path):
    with pytest.raises(GeofmFileNotFoundError, match="label raster .*nope.tif does not exist"):
        finetune(chipped_root, tmp_path / "nope.tif", tmp_path / "o", model="tiny",
                 progress=False)
    with pytest.raises(GeofmFileExistsError, match="best.pt exists; pass --overwrite"):
        finetune(chipped_root, label_raster, trained_head, model="tiny", progress=False)


def test_cli_classification_run(chipped_root, label_raster, tmp_path):
    out = tmp_path / "cls"
    with pytest.warns(Warning, match="RANDOM WEIGHTS"):
        code = main(["--root", str(chipped_root), "--labels", str(label_raster), "--out",
                     str(out), "--task", "classification", "--model", "tiny", "--epochs", "1",
                     "--batch-size", "8", "--no-progress", "-q"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "classification" and len(metrics["history"]) == 1
    n_val = metrics["counts"]["val_samples"]
    assert sum(map(sum, metrics["best"]["confusion"])) == n_val  # one count per chip


def test_time_location_rule_follows_the_embed_stage(chipped_root, tiny_encoder):
    from geofm.finetune.cache import ChipEncoder, resolve_time_location

    assert resolve_time_location(tiny_encoder, "auto") == "zero"
    assert resolve_time_location(tiny_encoder, "encode") == "encode"
    with pytest.raises(GeofmValueError, match="unknown time_location 'sometimes'"):
        resolve_time_location(tiny_encoder, "sometimes")
    table = read_chip_table(chipped_root)
    one = table[table["chip_id"] == table["chip_id"].iloc[0]].head(2).reset_index(drop=True)
    # same pixels, two different dates and positions: only "encode" tells them apart
    out = {}
    for rule in ("zero", "encode"):
        enc = ChipEncoder(encoder=tiny_encoder, root=chipped_root, samples=one,
                          bands=("blue", "green", "red", "nir"), time_location=rule)
        pixels, _ = enc.read([0])
        moved = one.copy()
        moved.loc[1, ["lat", "lon"]] = moved.loc[0, ["lat", "lon"]].to_numpy() + 10.0
        enc.samples = moved
        moved.loc[1, "date"] = moved.loc[0, "date"] + pd.Timedelta(days=100)
        out[rule] = enc.encode_pixels(np.concatenate([pixels, pixels]), [0, 1])
    assert torch.allclose(out["zero"][0], out["zero"][1])
    assert not torch.allclose(out["encode"][0], out["encode"][1])


def test_cli_no_whiten_trains_a_head_without_the_whitening(chipped_root, label_raster,
                                                          tmp_path):
    out = tmp_path / "plain"
    with pytest.warns(Warning, match="RANDOM WEIGHTS"):
        code = main(["--root", str(chipped_root), "--labels", str(label_raster), "--out",
                     str(out), "--model", "tiny", "--epochs", "1", "--batch-size", "8",
                     "--no-whiten", "--no-progress", "-q"])
    assert code == 0
    blob = torch.load(out / "best.pt", weights_only=True)
    assert blob["config"]["head_options"]["whiten"] is False
    assert not any(k.startswith("whitening.") for k in blob["state_dict"])


def test_cli_shuffle_decoder_without_baseline_is_the_earlier_head(chipped_root, label_raster,
                                                                   tmp_path):
    out = tmp_path / "shuffle"
    with pytest.warns(Warning, match="RANDOM WEIGHTS"):
        code = main(["--root", str(chipped_root), "--labels", str(label_raster), "--out",
                     str(out), "--model", "tiny", "--epochs", "1", "--batch-size", "8",
                     "--decoder", "shuffle", "--no-baseline", "--no-augment",
                     "--sampling", "uniform", "--epoch-samples", "0", "--no-progress", "-q"])
    assert code == 0
    blob = torch.load(out / "best.pt", weights_only=True)
    assert "decoder" not in blob["config"]["head_options"]  # loads as the old head did
    assert not any(k.startswith("pixel_norm.") for k in blob["state_dict"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["baseline"] is None
    run = json.loads((out / "run.json").read_text())["stages"]["finetune"]
    assert run["config"]["decoder"] == "shuffle" and run["config"]["epoch_samples"] is None


def test_cli_context_dropout_reaches_the_head(chipped_root, label_raster, tmp_path):
    from geofm.finetune.train import load_head

    out = tmp_path / "ctx"
    with pytest.warns(Warning, match="RANDOM WEIGHTS"):
        code = main(["--root", str(chipped_root), "--labels", str(label_raster), "--out",
                     str(out), "--model", "tiny", "--epochs", "1", "--batch-size", "8",
                     "--context-dropout", "0.3", "--no-baseline", "--no-progress", "-q"])
    assert code == 0
    head, cfg = load_head(out / "best.pt")
    assert cfg["head_options"]["context_dropout"] == 0.3 and head.context_dropout == 0.3
    assert cfg["head_options"]["pixel_branch"] == 32
