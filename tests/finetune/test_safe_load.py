"""finetune / predict never run code from a checkpoint: encoder (--checkpoint) or head.

The safe loader itself is tested in tests/model/test_safe_load.py; here every finetune /
predict path that opens a file gets a malicious one and must fail with exit code 1, a
message naming the file, and no sentinel written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from geofm.cli import main
from geofm.exceptions import CheckpointError
from geofm.finetune.train import load_head


@pytest.fixture
def bad_encoder(reference_dir: Path, tmp_path: Path, payload: object) -> Path:
    """Real Clay tiny weights with a payload in ``hyper_parameters``."""
    ckpt = torch.load(reference_dir / "clay_tiny.ckpt", map_location="cpu", weights_only=True)
    path = tmp_path / "clay_payload.ckpt"
    torch.save({**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"],
                                             "cb": payload}}, path)
    return path


@pytest.fixture
def bad_head(trained_head: Path, tmp_path: Path, payload: object) -> Path:
    """A real head checkpoint with a payload in its config."""
    blob = torch.load(trained_head / "best.pt", map_location="cpu", weights_only=True)
    blob["config"]["note"] = payload
    path = tmp_path / "best.pt"
    torch.save(blob, path)
    return path


def _error(out: Path, stage: str) -> str:
    run = json.loads((out / "run.json").read_text())["stages"][stage]
    assert run["status"] == "error"
    return str(run["error"])


def test_predict_refuses_a_malicious_head(bad_head: Path, chipped_root: Path, tmp_path: Path,
                                          sentinel: Path) -> None:
    out = tmp_path / "pred"
    assert main(["predict", "--root", str(chipped_root), "--head", str(bad_head), "--out",
                 str(out), "--model", "tiny", "--device", "cpu", "-q"]) == 1
    assert not sentinel.exists()
    error = _error(out, "predict")
    assert str(bad_head) in error and "pickles builtins.exec" in error
    assert "Re-run `geofm finetune" in error
    assert not list(out.glob("*.tif"))


def test_predict_refuses_a_malicious_encoder(trained_head: Path, bad_encoder: Path,
                                             chipped_root: Path, tmp_path: Path,
                                             sentinel: Path) -> None:
    out = tmp_path / "pred"
    assert main(["predict", "--root", str(chipped_root), "--head",
                 str(trained_head / "best.pt"), "--out", str(out), "--checkpoint",
                 str(bad_encoder), "--device", "cpu", "-q"]) == 1
    assert not sentinel.exists()
    error = _error(out, "predict")
    assert "clay_payload.ckpt' pickles builtins.exec" in error
    assert "geofm checkpoint convert" in error and "--trust-pickle" in error


def test_finetune_refuses_a_malicious_encoder(bad_encoder: Path, chipped_root: Path,
                                              label_raster: Path, tmp_path: Path,
                                              sentinel: Path) -> None:
    out = tmp_path / "ft"
    assert main(["finetune", "--root", str(chipped_root), "--labels", str(label_raster),
                 "--out", str(out), "--checkpoint", str(bad_encoder), "--epochs", "1",
                 "--device", "cpu", "--no-progress", "-q"]) == 1
    assert not sentinel.exists()
    assert "clay_payload.ckpt' pickles builtins.exec" in _error(out, "finetune")
    assert not (out / "best.pt").exists()


def test_load_head_refuses_payload_and_truncation(bad_head: Path, trained_head: Path,
                                                  tmp_path: Path, sentinel: Path) -> None:
    with pytest.raises(CheckpointError, match=r"head checkpoint '.*best\.pt' pickles "
                                              r"builtins\.exec.*Re-run `geofm finetune"):
        load_head(bad_head)
    assert not sentinel.exists()
    cut = tmp_path / "cut.pt"
    cut.write_bytes((trained_head / "best.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cannot read head checkpoint '.*cut\.pt'.*"
                                              r"Re-run `geofm finetune --out DIR`"):
        load_head(cut)
    junk = tmp_path / "junk.pt"
    torch.save({"weights": [1, 2]}, junk)  # readable, but not a head
    with pytest.raises(CheckpointError, match=r"junk\.pt is not a readable geofm head"):
        load_head(junk)
