"""Checkpoints never run code: malicious pickles are refused on every encoder load path.

Each malicious file carries an object whose ``__reduce__`` calls ``exec`` to write a
sentinel file; a positive control shows that full unpickling really runs it, and every
geofm load must leave the sentinel absent and fail with a message naming the file, the
refused global and the fix.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
import types
from pathlib import Path, PurePosixPath

import pytest
import torch

from geofm.cli import main
from geofm.exceptions import CheckpointError
from geofm.model import load_encoder
from geofm.model.safe_load import load_torch_file, refused_globals

# torch notes that bare pickles (protocol 4/5) are not what torch.save writes
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")



def _write(kind: str, folder: Path, payload: object, reference: dict) -> Path:
    """One malicious file of ``kind``; all of them run ``payload`` when fully unpickled."""
    if kind == "payload.ckpt":  # nothing but the payload, torch zip format
        path = folder / kind
        torch.save({"state_dict": {}, "hyper_parameters": {"x": payload}}, path)
    elif kind == "weights+payload.ckpt":  # real Clay weights, payload in hyper_parameters
        path = folder / "clay_tiny_payload.ckpt"
        hp = {**reference["hyper_parameters"], "callback": payload}
        torch.save({**reference, "hyper_parameters": hp}, path)
    elif kind == "legacy.pt":  # the pre-zip torch.save format
        path = folder / kind
        torch.save({"w": torch.ones(2), "x": payload}, path,
                   _use_new_zipfile_serialization=False)
    elif kind == "raw.pt":  # a bare pickle (protocol 5: STACK_GLOBAL, not GLOBAL)
        path = folder / kind
        path.write_bytes(pickle.dumps(payload, protocol=5))
    elif kind == "pickle.safetensors":  # a torch file wearing a .safetensors name
        path = folder / kind
        torch.save({"state_dict": {}, "x": payload}, path)
    else:
        raise AssertionError(kind)
    return path


KINDS = ("payload.ckpt", "weights+payload.ckpt", "legacy.pt", "raw.pt", "pickle.safetensors")


@pytest.mark.parametrize("kind", KINDS)
def test_payloads_really_run_when_fully_unpickled(kind: str, tmp_path: Path, payload: object,
                                                  reference_ckpt: dict) -> None:
    # positive control: without the safe loader these files do execute code
    sentinel = tmp_path / "SENTINEL"  # the payload fixture's target
    path = _write(kind, tmp_path, payload, reference_ckpt)
    if kind == "raw.pt":
        pickle.loads(path.read_bytes())
    else:  # a file object: torch.load hands a path named .safetensors to safetensors
        with open(path, "rb") as f:
            torch.load(f, map_location="cpu", weights_only=False)
    assert sentinel.read_text() == "pwned"


@pytest.mark.parametrize("kind", KINDS)
def test_load_encoder_refuses_every_payload(kind: str, tmp_path: Path, sentinel: Path,
        payload: object,
                                            reference_ckpt: dict) -> None:
    path = _write(kind, tmp_path, payload, reference_ckpt)
    if kind == "pickle.safetensors":
        match = r"pickle\.safetensors' is named \.safetensors but holds torch pickle data"
    else:
        match = (rf"checkpoint '.*{path.name}' pickles builtins\.exec, which the safe loader "
                 r"\(torch weights_only=True\) refuses.*geofm checkpoint convert "
                 rf".*{path.name} .*{path.stem}\.safetensors --trust-pickle")
    with pytest.raises(CheckpointError, match=match):
        load_encoder(path)
    with pytest.raises(CheckpointError):
        load_encoder(path, preset="tiny")
    assert not sentinel.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_embed_cli_refuses_every_payload(kind: str, tmp_path: Path, sentinel: Path,
        payload: object,
                                         reference_ckpt: dict, geofm_log) -> None:
    root = tmp_path / "root"
    (root / "meta").mkdir(parents=True)  # embed loads the model before reading any chip
    path = _write(kind, tmp_path, payload, reference_ckpt)
    assert main(["embed", "--root", str(root), "--checkpoint", str(path), "--device",
                 "cpu", "--no-progress"]) == 1
    assert not sentinel.exists()
    assert path.name in geofm_log.text
    assert ("builtins.exec" in geofm_log.text if kind != "pickle.safetensors"
            else "holds torch pickle data" in geofm_log.text)
    assert not (root / "embeddings").exists()


def test_refused_globals_are_read_statically(tmp_path: Path, sentinel: Path, payload: object,
                                             reference_ckpt: dict) -> None:
    for kind in ("payload.ckpt", "legacy.pt", "raw.pt"):
        assert refused_globals(_write(kind, tmp_path, payload, reference_ckpt)) == [
            "builtins.exec"]
    assert not sentinel.exists()


def test_truncated_file_is_a_clear_error(tmp_path: Path, reference_dir: Path) -> None:
    path = tmp_path / "cut.pt"
    path.write_bytes((reference_dir / "clay_tiny.ckpt").read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"cannot read thing '.*cut\.pt'.*corrupt, "
                                              r"truncated.*Get it again"):
        load_torch_file(path, what="thing", fix_refused="No.", fix_unreadable="Get it again.")
    raw = tmp_path / "cut_raw.pt"
    raw.write_bytes(pickle.dumps({"a": 1})[:-3])
    with pytest.raises(CheckpointError, match=r"cannot read thing '.*cut_raw\.pt'"):
        load_torch_file(raw, what="thing", fix_refused="No.", fix_unreadable="Again.")


def _fake_module(monkeypatch: pytest.MonkeyPatch, dotted: str, **attrs: object) -> None:
    """Register ``dotted`` (and its parents) in ``sys.modules`` so pickle can name it."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    for key, value in attrs.items():
        monkeypatch.setattr(sys.modules[dotted], key, value, raising=False)


@pytest.mark.parametrize("module", ["lightning.fabric.utilities.data",
                                    "pytorch_lightning.utilities.parsing"])
def test_lightning_attribute_dict_loads_with_the_safe_loader(
        module: str, tmp_path: Path, reference_ckpt: dict,
        monkeypatch: pytest.MonkeyPatch) -> None:
    class AttributeDict(dict):  # what Lightning's hparams are, under Lightning's name
        def __getattr__(self, key: str) -> object:
            try:
                return self[key]
            except KeyError as err:
                raise AttributeError(key) from err

    AttributeDict.__module__, AttributeDict.__qualname__ = module, "AttributeDict"
    _fake_module(monkeypatch, module, AttributeDict=AttributeDict)
    hp = AttributeDict(**reference_ckpt["hyper_parameters"])
    hp["data"] = AttributeDict(batch_size=8, root=Path("/data/chips"))
    hp["args"] = argparse.Namespace(lr=1e-4)
    path = tmp_path / "lightning.ckpt"
    torch.save({**reference_ckpt, "hyper_parameters": hp,
                "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 3}}}},
                "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0)}},
                                      "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95)}]}],
                "callbacks": {"ModelCheckpoint{'monitor': 'val/loss'}": {
                    "best_model_path": "/ckpt/best.ckpt", "best_model_score": torch.tensor(0.3)}},
                }, path)
    for name in list(sys.modules):  # the loader must not need the package
        if name.split(".")[0] == module.split(".")[0]:
            monkeypatch.delitem(sys.modules, name)
    before = set(torch.serialization.get_safe_globals())  # torch keeps no order
    with pytest.raises(pickle.UnpicklingError):  # torch's defaults alone refuse it
        torch.load(path, map_location="cpu", weights_only=True)
    obj = load_torch_file(path, what="checkpoint", fix_refused="", fix_unreadable="")
    assert set(torch.serialization.get_safe_globals()) == before  # allowed for that load only
    assert type(obj["hyper_parameters"]) is dict and obj["hyper_parameters"]["dim"] == 64
    assert obj["hyper_parameters"]["data"] == {"batch_size": 8,
                                               "root": PurePosixPath("/data/chips")}
    assert vars(obj["hyper_parameters"]["args"]) == {"lr": 1e-4}
    model = load_encoder(path)
    assert (model.preset, model.dim, model.identity.heads) == ("custom", 64, 2)


def test_namespace_hparams_load_safely(tmp_path: Path, reference_ckpt: dict,
                                       caplog: pytest.LogCaptureFixture) -> None:
    hp = argparse.Namespace(**reference_ckpt["hyper_parameters"])
    path = tmp_path / "namespace.ckpt"
    torch.save({**reference_ckpt, "hyper_parameters": hp}, path)
    with caplog.at_level(logging.WARNING):
        model = load_encoder(path)
    assert model.identity.heads == 2
    assert not caplog.records  # no fallback, nothing to warn about


def test_other_objects_are_refused_and_named(tmp_path: Path, reference_ckpt: dict) -> None:
    import datetime

    hp = {**reference_ckpt["hyper_parameters"], "when": datetime.date(2024, 5, 1),
          "split": slice(0, 3)}
    path = tmp_path / "dated.ckpt"
    torch.save({**reference_ckpt, "hyper_parameters": hp}, path)
    with pytest.raises(CheckpointError, match=r"dated\.ckpt' pickles builtins\.slice, "
                                              r"datetime\.date, which the safe loader"):
        load_encoder(path)


def test_globals_a_caller_allowed_stay_allowed(tmp_path: Path, reference_ckpt: dict) -> None:
    path = tmp_path / "namespace.ckpt"
    torch.save({**reference_ckpt, "hyper_parameters": argparse.Namespace(dim=64)}, path)
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        load_torch_file(path, what="checkpoint", fix_refused="", fix_unreadable="")
        assert argparse.Namespace in torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def test_safetensors_is_told_from_a_pickle_by_its_header(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from geofm.model.safe_load import looks_like_torch_file

    # a real safetensors file whose header length starts with the pickle PROTO byte 0x80
    for pad in range(0, 400):
        path = tmp_path / "w.safetensors"
        save_file({"w": torch.ones(3)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        raise AssertionError("no header length with a 0x80 first byte")
    assert not looks_like_torch_file(path)
    torch.save({"w": torch.ones(3)}, tmp_path / "zip.pt")
    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"w": 1}, protocol=2))
    assert looks_like_torch_file(tmp_path / "zip.pt")
    assert looks_like_torch_file(tmp_path / "raw.pt")


def test_legacy_file_names_refused_torch_classes(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"  # a whole module, pickled the pre-zip way
    torch.save(torch.nn.Linear(2, 2), path, _use_new_zipfile_serialization=False)
    assert refused_globals(path) == ["torch.nn.modules.linear.Linear"]
    with pytest.raises(CheckpointError, match=r"model\.pt' pickles torch\.nn\.modules\.linear"
                                              r"\.Linear, which the safe loader"):
        load_encoder(path)


def test_torch_with_a_known_weights_only_bypass_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, path)
    assert load_torch_file(path, what="checkpoint", fix_refused="", fix_unreadable="")
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    with pytest.raises(CheckpointError, match=r"plain\.pt'.*torch 2\.5\.1\+cpu.*"
                                              r"CVE-2025-32434.*torch>=2\.6"):
        load_torch_file(path, what="checkpoint", fix_refused="", fix_unreadable="")
