"""Checkpoint loading: formats, strict key checks, identity, random init.

Refusing code in checkpoints is tested in test_safe_load.py, conversion in test_convert.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from geofm.exceptions import CheckpointError, GeofmFileNotFoundError, GeofmWarning
from geofm.model import load_encoder
from geofm.model.presets import EncoderConfig

TINY_REF = EncoderConfig(dim=64, depth=2, heads=2, dim_head=32, mlp_ratio=2.0, patch_size=8)
KEYS = ("pixels", "time", "latlon", "gsd", "waves")


@pytest.fixture(scope="module")
def case(reference_dir: Path) -> dict:
    path = reference_dir / "clay_tiny_cases.pt"
    c = torch.load(path, map_location="cpu", weights_only=True)["rgbn_32px"]
    return {k: c[k] for k in KEYS}


def _encode(model: torch.nn.Module, cube: dict) -> torch.Tensor:
    with torch.inference_mode():
        return model(cube)


def _save(tmp_path: Path, obj: dict, name: str = "bad.ckpt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _encoder_only(state: dict, *, prefix: str = "") -> dict:
    p = "model.encoder."
    return {prefix + k[len(p):]: v for k, v in state.items() if k.startswith(p)}


def test_lightning_ckpt_identity_and_sizes_from_hparams(ckpt_path: Path) -> None:
    model = load_encoder(ckpt_path)
    assert (model.dim, model.patch_size, model.preset, model.random_init) == (64, 8, "custom",
                                                                              False)
    ident = model.identity
    assert ident.checkpoint == str(ckpt_path)
    assert ident.sha256 == hashlib.sha256(ckpt_path.read_bytes()).hexdigest()
    assert (ident.dim, ident.depth, ident.heads, ident.random_init) == (64, 2, 2,
                                                                                   False)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_missing_key_is_listed(tmp_path: Path, reference_ckpt: dict) -> None:
    state = dict(reference_ckpt["state_dict"])
    del state["model.encoder.transformer.layers.1.0.to_out.weight"]
    del state["model.encoder.cls_token"]
    path = _save(tmp_path, {**reference_ckpt, "state_dict": state})
    with pytest.raises(CheckpointError,
                       match=r"bad\.ckpt.*missing keys: cls_token, transformer\.layers\.1\.0"
                             r"\.to_out\.weight"):
        load_encoder(path)


def test_unexpected_encoder_key_is_listed(tmp_path: Path, reference_ckpt: dict) -> None:
    state = {**reference_ckpt["state_dict"], "model.encoder.transformer.layers.2.0.norm.weight":
             torch.ones(64)}
    path = _save(tmp_path, {**reference_ckpt, "state_dict": state})
    with pytest.raises(CheckpointError,
                       match=r"unexpected keys: transformer\.layers\.2\.0\.norm\.weight"):
        load_encoder(path)


def test_wrong_shape_is_listed(tmp_path: Path, reference_ckpt: dict) -> None:
    state = {**reference_ckpt["state_dict"],
             "model.encoder.transformer.norm.weight": torch.ones(65)}
    path = _save(tmp_path, {**reference_ckpt, "state_dict": state})
    with pytest.raises(CheckpointError, match=r"shape mismatch: transformer\.norm\.weight "
                                              r"\(checkpoint \(65,\), model \(64,\)\)"):
        load_encoder(path)


def test_wrong_preset_for_checkpoint(reference_ckpt: dict, ckpt_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"tiny encoder.*missing keys: transformer\."
                                              r"layers\.2.*shape mismatch: cls_token"):
        load_encoder(ckpt_path, preset="tiny")


def test_corrupt_file_names_it(tmp_path: Path, ckpt_path: Path) -> None:
    path = tmp_path / "corrupt.ckpt"
    path.write_bytes(ckpt_path.read_bytes()[:4000])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*corrupt\.ckpt"):
        load_encoder(path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00not a safetensors file")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*junk\.safetensors"):
        load_encoder(junk)


def test_missing_file() -> None:
    with pytest.raises(GeofmFileNotFoundError, match=r"nowhere\.ckpt.*does not exist"):
        load_encoder("/nonexistent/nowhere.ckpt")


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = _save(tmp_path, {"weights": [1, 2, 3]}, "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt.*non-tensor entries.*weights"):
        load_encoder(path)


def test_unknown_model_size(tmp_path: Path, reference_ckpt: dict) -> None:
    path = _save(tmp_path, {**reference_ckpt, "hyper_parameters": {"model_size": "huge"}})
    with pytest.raises(CheckpointError, match=r"unknown model_size 'huge'.*pass preset="):
        load_encoder(path)


def test_named_model_size_in_hparams(tmp_path: Path) -> None:
    with pytest.warns(GeofmWarning):
        tiny = load_encoder(preset="tiny", seed=3)
    state = {"model.encoder." + k: v for k, v in tiny.state_dict().items()}
    state["model.decoder.mask_patch"] = torch.zeros(96)
    path = _save(tmp_path, {"state_dict": state,
                            "hyper_parameters": {"model_size": "tiny", "patch_size": 8}})
    model = load_encoder(path)
    assert model.preset == "tiny" and model.identity.heads == 4
    for name, value in tiny.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)


def test_bare_state_dict_and_safetensors_round_trip(tmp_path: Path, reference_ckpt: dict,
                                                    case: dict, ckpt_path: Path) -> None:
    from safetensors.torch import save_file

    expected = _encode(load_encoder(ckpt_path), case)
    bare = _encoder_only(reference_ckpt["state_dict"])
    prefixed = _encoder_only(reference_ckpt["state_dict"], prefix="model.encoder.")
    paths = [_save(tmp_path, bare, "bare.pt"), _save(tmp_path, prefixed, "prefixed.pth")]
    save_file({k: v.contiguous() for k, v in bare.items()}, str(tmp_path / "enc.safetensors"))
    paths.append(tmp_path / "enc.safetensors")
    for path in paths:
        model = load_encoder(path, preset=TINY_REF)
        assert model.identity.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        torch.testing.assert_close(_encode(model, case), expected, rtol=0, atol=0)


def test_bare_state_dict_needs_preset_when_sizes_are_custom(tmp_path: Path,
                                                            reference_ckpt: dict) -> None:
    path = _save(tmp_path, _encoder_only(reference_ckpt["state_dict"]), "bare.pt")
    with pytest.raises(CheckpointError, match=r"heads cannot be read from weights: pass "
                                              r"preset="):
        load_encoder(path)


def test_bare_state_dict_of_a_preset_is_inferred(tmp_path: Path) -> None:
    with pytest.warns(GeofmWarning):
        tiny = load_encoder(preset="tiny")
    path = tmp_path / "tiny.safetensors"
    from safetensors.torch import save_file

    save_file(tiny.state_dict(), str(path))
    model = load_encoder(path)
    assert model.preset == "tiny" and not model.random_init
    cube = {"pixels": torch.randn(1, 2, 16, 16), "time": torch.zeros(1, 4),
            "latlon": torch.zeros(1, 4), "gsd": torch.tensor(10.0),
            "waves": torch.tensor([0.49, 0.84])}
    torch.testing.assert_close(_encode(model, cube), _encode(tiny, cube), rtol=0, atol=0)


def test_safetensors_sizes_from_metadata(tmp_path: Path, reference_ckpt: dict, case: dict,
                                         ckpt_path: Path) -> None:
    from safetensors.torch import save_file

    bare = {k: v.contiguous() for k, v in _encoder_only(reference_ckpt["state_dict"]).items()}
    sizes = {"dim": "64", "depth": "2", "heads": "2", "dim_head": "32", "mlp_ratio": "2.0",
             "patch_size": "8"}
    save_file(bare, str(tmp_path / "sized.safetensors"), metadata=sizes)
    model = load_encoder(tmp_path / "sized.safetensors")  # custom sizes, no preset needed
    assert (model.preset, model.identity.heads) == ("custom", 2)
    torch.testing.assert_close(_encode(model, case), _encode(load_encoder(ckpt_path), case),
                               rtol=0, atol=0)
    save_file(bare, str(tmp_path / "bad.safetensors"), metadata={**sizes, "heads": "two"})
    with pytest.raises(CheckpointError, match=r"bad\.safetensors': metadata heads='two' is "
                                              r"not a number"):
        load_encoder(tmp_path / "bad.safetensors")


def test_random_init_warns_flags_and_is_seeded() -> None:
    state = torch.random.get_rng_state()
    with pytest.warns(GeofmWarning, match="random weights, for testing only"):
        a = load_encoder(preset="tiny", seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    with pytest.warns(GeofmWarning):
        b = load_encoder(None, preset="tiny", seed=0)
    with pytest.warns(GeofmWarning):
        c = load_encoder(preset="tiny", seed=1)
    assert a.random_init and a.identity.random_init and a.identity.checkpoint is None
    assert (a.dim, a.preset, a.identity.depth, a.identity.heads) == (192, "tiny", 6, 4)
    assert torch.equal(a.cls_token, b.cls_token)
    assert not torch.equal(a.cls_token, c.cls_token)


def test_needs_path_or_preset() -> None:
    from geofm.exceptions import GeofmValueError

    with pytest.raises(GeofmValueError, match="needs a checkpoint path or a preset"):
        load_encoder()
    with pytest.raises(GeofmValueError, match="unknown encoder preset 'giant'"):
        load_encoder(preset="giant")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda() -> None:
    from geofm.exceptions import GeofmValueError

    with pytest.raises(GeofmValueError, match="'cuda' requested but CUDA is not available"):
        load_encoder(preset="tiny", device="cuda")
