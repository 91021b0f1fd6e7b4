"""The pretrain stage: outputs, resume, options check, NaN stop, CLI, round trip via embed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from geofm.cli import main
from geofm.exceptions import GeofmFileExistsError, GeofmValueError, TrainingError
from geofm.model import load_encoder
from geofm.model.loading import file_sha256
from geofm.model.safe_load import load_torch_file
from geofm.pretrain import pretrain
from geofm.pretrain import stage as stage_mod


def _state(path: Path) -> dict:
    return load_torch_file(path, what="test", fix_refused="", fix_unreadable="")["state_dict"]


def _epochs(out: Path) -> list[dict]:
    return json.loads((out / "metrics.json").read_text())["epochs"]


def test_outputs_are_plain_safe_and_loadable(root: Path, tmp_path: Path, small: dict) -> None:
    out = tmp_path / "out"
    record = pretrain(root, out=out, epochs=2, **small)
    assert record.counts["epochs"] == 2 and record.counts["val_locations"] >= 1
    rows = _epochs(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert r["train_loss"] > 0 and r["val_loss"] > 0 and r["seconds"] > 0
        assert r["train_chips"] > 0 and r["val_chips"] > 0
    last = load_torch_file(out / "last.ckpt", what="test", fix_refused="", fix_unreadable="")
    assert last["epoch"] == 2 and last["optimizer"]["state"]  # AdamW moments kept
    enc = load_torch_file(out / "encoder.ckpt", what="test", fix_refused="", fix_unreadable="")
    assert any(k.startswith("model.decoder.") for k in enc["state_dict"])
    hp = enc["hyper_parameters"]
    assert all(isinstance(v, str | int | float) for v in hp.values())
    assert hp["pretrain_epochs"] == 2 and hp["pretrain_mask_ratio"] == 0.75
    encoder = load_encoder(out / "encoder.ckpt")
    assert encoder.identity.random_init is False and encoder.dim == 32
    assert encoder.identity.sha256 == file_sha256(out / "encoder.ckpt")
    # the locations of the validation chips are never trained on
    run = json.loads((root / "run.json").read_text())["stages"]["pretrain"]
    assert run["status"] == "ok" and run["counts"]["train_locations"] >= 1


def test_rerun_continues_and_equals_an_uninterrupted_run(root: Path, tmp_path: Path,
                                                         small: dict) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    pretrain(root, out=a, epochs=1, **small)
    first = _epochs(a)
    pretrain(root, out=a, epochs=3, **small)  # continues after epoch 1
    rows = _epochs(a)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[0] == first[0]
    pretrain(root, out=b, epochs=3, **small)
    for x, y in zip(rows, _epochs(b), strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-5)
    sa, sb = _state(a / "encoder.ckpt"), _state(b / "encoder.ckpt")
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-6)
    pretrain(root, out=a, epochs=3, **small)  # nothing left to do
    assert len(_epochs(a)) == 3


def test_rerun_with_other_options_is_refused(root: Path, tmp_path: Path, small: dict) -> None:
    out = tmp_path / "out"
    pretrain(root, out=out, epochs=1, **small)
    with pytest.raises(GeofmFileExistsError, match=r"pretrain_mask_ratio 0\.75 vs 0\.5"):
        pretrain(root, out=out, epochs=2, mask_ratio=0.5, **small)
    pretrain(root, out=out, epochs=1, mask_ratio=0.5, overwrite=True, **small)
    assert json.loads((out / "metrics.json").read_text())["hyper_parameters"][
        "pretrain_mask_ratio"] == 0.5


def test_nan_loss_stops_and_keeps_the_last_good_epoch(root: Path, tmp_path: Path, small: dict,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    real = stage_mod._Trainer._loss

    def poisoned(self, batch, tasks, *, epoch, step):  # type: ignore[no-untyped-def]
        loss = real(self, batch, tasks, epoch=epoch, step=step)
        return loss * float("nan") if epoch == 2 and step == 1 else loss

    monkeypatch.setattr(stage_mod._Trainer, "_loss", poisoned)
    pretrain(root, out=out, epochs=1, **small)
    before = {n: (out / n).read_bytes() for n in ("last.ckpt", "encoder.ckpt", "metrics.json")}
    with pytest.raises(TrainingError, match="loss is nan at epoch 2, step 1") as info:
        pretrain(root, out=out, epochs=3, **small)
    assert (info.value.epoch, info.value.step) == (2, 1)
    assert info.value.checkpoint == str(out / "last.ckpt")
    assert {n: (out / n).read_bytes() for n in before} == before
    run = json.loads((root / "run.json").read_text())["stages"]["pretrain"]
    assert run["status"] == "error" and "TrainingError" in run["error"]


def test_absurd_learning_rate_diverges_into_a_clear_error(root: Path, tmp_path: Path,
                                                          small: dict) -> None:
    with pytest.raises(TrainingError, match="Lower --lr"):
        pretrain(root, out=tmp_path / "out", epochs=2, **{**small, "lr": 1e30})
    assert not (tmp_path / "out" / "last.ckpt").exists()


def test_cli_round_trip_through_embed(root: Path, tmp_path: Path, reference_dir: Path) -> None:
    out = tmp_path / "out"
    ref = reference_dir / "clay_tiny.ckpt"
    assert main(["pretrain", "--root", str(root), "--out", str(out), "--checkpoint", str(ref),
                 "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-progress"]) == 0
    hp = load_torch_file(out / "encoder.ckpt", what="t", fix_refused="",
                         fix_unreadable="")["hyper_parameters"]
    assert hp["pretrain_init"] == str(ref) and hp["pretrain_init_sha256"] == file_sha256(ref)
    assert main(["embed", "--root", str(root), "--checkpoint", str(out / "encoder.ckpt"),
                 "--workers", "0", "--no-progress"]) == 0
    model = json.loads((root / "run.json").read_text())["stages"]["embed"]["model"]
    assert model["random_init"] is False
    assert model["provenance"].startswith("geofm pretrain: ")
    assert "epochs=1" in model["provenance"] and f"init={ref}" in model["provenance"]
    assert model["sha256"] == file_sha256(out / "encoder.ckpt") != file_sha256(ref)
    trained, original = load_encoder(out / "encoder.ckpt"), load_encoder(ref)
    assert not torch.equal(trained.cls_token, original.cls_token)  # weights did change
    # continuing from the stage's own encoder.ckpt brings its decoder too
    again = tmp_path / "again"
    assert main(["pretrain", "--root", str(root), "--out", str(again), "--checkpoint",
                 str(out / "encoder.ckpt"), "--epochs", "1", "--batch-size", "8", "--lr",
                 "1e-12", "--workers", "0", "--no-progress"]) == 0
    s0, s1 = _state(out / "encoder.ckpt"), _state(again / "encoder.ckpt")
    key = "model.decoder.mask_token"
    torch.testing.assert_close(s0[key], s1[key], rtol=0, atol=1e-6)


def test_cli_bad_input(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       caplog: pytest.LogCaptureFixture) -> None:
    base = ["pretrain", "--out", str(tmp_path / "out"), "--model", "tiny", "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        main([*base, "--root", str(root), "--mask-ratio", "1.5"])
    assert exc.value.code == 2 and "mask ratio 1.5 is outside (0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*base, "--root", str(root), "--checkpoint", "x.ckpt"])
    assert exc.value.code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*base, "--root", str(empty)]) == 1
    assert "run `geofm chip" in caplog.text
    caplog.clear()
    # a root whose chips are all invalid
    import geopandas as gpd

    from geofm.layout import RunRoot

    rr = RunRoot(root)
    for path in rr.meta_dir.glob("*.parquet"):
        gdf = gpd.read_parquet(path)
        gdf["valid"] = False
        gdf.to_parquet(path)
    assert main([*base, "--root", str(root)]) == 1
    assert "has no valid chips to pretrain on" in caplog.text
    with pytest.raises(GeofmValueError, match="exactly one of --model"):
        pretrain(root, out=tmp_path / "o")


@pytest.mark.slow
def test_kill_9_then_rerun_continues(root: Path, tmp_path: Path, reference_dir: Path,
                                     small: dict) -> None:
    out = tmp_path / "out"
    args = [sys.executable, "-m", "geofm", "pretrain", "--root", str(root), "--out", str(out),
            "--checkpoint", str(reference_dir / "clay_tiny.ckpt"), "--epochs", "3",
            "--batch-size", "8", "--workers", "0", "--no-progress", "-q"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(args, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.json").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "epoch 1 never finished"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = len(_epochs(out))
    assert 1 <= done < 3, "the kill came after the last epoch: resume not exercised"
    assert subprocess.run(args, env=env).returncode == 0
    rows = _epochs(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # same seed, same steps: equal to an uninterrupted run
    ref = tmp_path / "ref"
    pretrain(root, out=ref, checkpoint=reference_dir / "clay_tiny.ckpt", epochs=3,
             batch_size=8, progress=False)
    for x, y in zip(rows, _epochs(ref), strict=True):
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-4)
