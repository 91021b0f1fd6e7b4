"""``geofm checkpoint convert``: safe by default, full unpickling only with --trust-pickle."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from geofm.cli import main
from geofm.exceptions import CheckpointError, GeofmFileExistsError, GeofmValueError
from geofm.model import load_encoder
from geofm.model.convert import convert_checkpoint

KEYS = ("pixels", "time", "latlon", "gsd", "waves")



@pytest.fixture(scope="module")
def expected(ckpt_path: Path, reference_dir: Path) -> tuple[dict, torch.Tensor]:
    """A reference input cube and the original checkpoint's tokens for it."""
    case = torch.load(reference_dir / "clay_tiny_cases.pt", map_location="cpu",
                      weights_only=True)["rgbn_32px"]
    cube = {k: case[k] for k in KEYS}
    with torch.inference_mode():
        return cube, load_encoder(ckpt_path)(cube)


def _same_tokens(path: Path, expected: tuple[dict, torch.Tensor]) -> None:
    cube, tokens = expected
    model = load_encoder(path)  # no preset: the sizes come from the metadata
    assert (model.preset, model.dim, model.identity.depth, model.identity.heads,
            model.patch_size) == ("custom", 64, 2, 2, 8)
    assert model.identity.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with torch.inference_mode():
        torch.testing.assert_close(model(cube), tokens, rtol=0, atol=0)


def test_safe_file_converts_without_trust_and_gives_identical_tokens(
        ckpt_path: Path, tmp_path: Path, expected: tuple[dict, torch.Tensor],
        geofm_log: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "clay_tiny.safetensors"
    assert main(["checkpoint", "convert", str(ckpt_path), str(out), "-q"]) == 0
    with safe_open(str(out), framework="pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert {k: meta[k] for k in ("dim", "depth", "heads", "dim_head", "mlp_ratio",
                                 "patch_size")} == {
        "dim": "64", "depth": "2", "heads": "2", "dim_head": "32", "mlp_ratio": "2.0",
        "patch_size": "8"}
    assert "model_size" not in meta  # custom sizes, not a preset
    assert meta["geofm_source_sha256"] == hashlib.sha256(ckpt_path.read_bytes()).hexdigest()
    assert "cls_token" in keys and not any(k.startswith(("model.", "decoder")) for k in keys)
    assert "--trust-pickle" not in geofm_log.text
    _same_tokens(out, expected)


def test_refused_file_needs_trust_pickle_then_converts(
        reference_ckpt: dict, tmp_path: Path, expected: tuple[dict, torch.Tensor],
        geofm_log: pytest.LogCaptureFixture) -> None:
    # real weights plus a harmless object the safe loader does not allow
    src = tmp_path / "dated.ckpt"
    hp = {**reference_ckpt["hyper_parameters"], "started": datetime.date(2024, 5, 1)}
    torch.save({**reference_ckpt, "hyper_parameters": hp}, src)
    out = tmp_path / "dated.safetensors"
    assert main(["checkpoint", "convert", str(src), str(out)]) == 1
    assert not out.exists()
    assert "dated.ckpt' pickles datetime.date" in geofm_log.text
    assert main(["checkpoint", "convert", str(src), str(out), "--trust-pickle"]) == 0
    assert "RUNS ANY CODE THE FILE CONTAINS" in geofm_log.text
    _same_tokens(out, expected)


def test_payload_is_refused_without_trust_and_runs_only_with_it(
        reference_ckpt: dict, tmp_path: Path, sentinel: Path, payload: object) -> None:
    src = tmp_path / "payload.ckpt"
    hp = {**reference_ckpt["hyper_parameters"], "cb": payload}
    torch.save({**reference_ckpt, "hyper_parameters": hp}, src)
    with pytest.raises(CheckpointError, match=r"payload\.ckpt' pickles builtins\.exec"):
        convert_checkpoint(src, tmp_path / "a.safetensors")
    assert not sentinel.exists() and not (tmp_path / "a.safetensors").exists()
    # the documented opt-in really unpickles: that is why it says so loudly
    convert_checkpoint(src, tmp_path / "b.safetensors", trust_pickle=True)
    assert sentinel.read_text() == "pwned"


def test_any_state_dict_keeps_its_tensors(tmp_path: Path) -> None:
    src = tmp_path / "head.pt"
    state = {"conv.weight": torch.ones(2, 3), "conv.bias": torch.zeros(2)}
    torch.save(state, src)
    out = convert_checkpoint(src, tmp_path / "head.safetensors")
    with safe_open(str(out), framework="pt") as f:
        assert set(f.keys()) == set(state)
        assert set(f.metadata()) == {"geofm_source", "geofm_source_sha256"}  # no sizes
        torch.testing.assert_close(f.get_tensor("conv.weight"), state["conv.weight"])


def test_bad_outputs_and_command_lines(ckpt_path: Path, tmp_path: Path) -> None:
    with pytest.raises(GeofmValueError, match=r"must end in \.safetensors"):
        convert_checkpoint(ckpt_path, tmp_path / "out.pt")
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"")
    with pytest.raises(GeofmFileExistsError, match="pass --overwrite"):
        convert_checkpoint(ckpt_path, out)
    assert main(["checkpoint", "convert", str(ckpt_path), str(out), "--overwrite",
                 "-q"]) == 0
    assert main(["checkpoint", "convert", str(tmp_path / "missing.ckpt"),
                 str(tmp_path / "x.safetensors"), "-q"]) == 1
    for argv in (["checkpoint"], ["checkpoint", "convert", str(ckpt_path)],
                 ["checkpoint", "convert", "a", "b", "--trust"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_preset_sizes_and_misnamed_pickle(tmp_path: Path) -> None:
    from geofm.exceptions import GeofmWarning

    with pytest.warns(GeofmWarning):
        tiny = load_encoder(preset="tiny", seed=1)
    state = {"model.encoder." + k: v for k, v in tiny.state_dict().items()}
    src = tmp_path / "tiny.safetensors"  # a torch pickle under a .safetensors name
    torch.save({"state_dict": state, "hyper_parameters": {"model_size": "tiny"}}, src)
    with pytest.raises(CheckpointError, match=r"tiny\.safetensors' is named \.safetensors "
                                              r"but holds torch pickle data"):
        convert_checkpoint(src, tmp_path / "out.safetensors")
    out = convert_checkpoint(src, tmp_path / "out.safetensors", trust_pickle=True)
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["model_size"] == "tiny"
    model = load_encoder(out)
    assert model.preset == "tiny" and not model.random_init
    for name, value in tiny.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)
