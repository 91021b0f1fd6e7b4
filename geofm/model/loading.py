"""Build a :class:`ClayEncoder` from a checkpoint or a preset, with strict checks.

Formats: a Lightning ``.ckpt`` (encoder keys under ``model.encoder.``; decoder, teacher,
projection and other keys ignored; sizes from ``hyper_parameters``), a bare encoder
state dict (``.pt`` / ``.pth``, with or without the ``model.encoder.`` prefix) and
``.safetensors`` (sizes from its metadata, as written by ``geofm checkpoint convert``).
Torch files are only ever read with torch's restricted unpickler
(:mod:`geofm.model.safe_load`): a checkpoint never runs code. Every encoder key must be
present with the right shape and no extra encoder key may appear; anything else raises
:class:`CheckpointError` listing the keys, before the model is returned.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geofm.exceptions import (
    CheckpointError,
    GeofmFileNotFoundError,
    GeofmValueError,
    GeofmWarning,
)
from geofm.model.presets import PRESETS, EncoderConfig, get_preset
from geofm.model.safe_load import load_torch_file, looks_like_torch_file

if TYPE_CHECKING:
    import torch

    from geofm.model.encoder import ClayEncoder
    from geofm.model.identity import ModelIdentity

logger = logging.getLogger(__name__)

#: Prefix of the encoder's keys inside a Clay Lightning checkpoint.
CKPT_PREFIX = "model.encoder."
#: Hyper-parameter names that carry explicit encoder sizes (upstream ``ClayMAE`` names).
SIZE_KEYS = ("dim", "depth", "heads", "dim_head", "mlp_ratio")
#: How many offending keys an error message lists before summarising.
_LIST_LIMIT = 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; anything else as ``torch.device``."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except RuntimeError as err:
        raise GeofmValueError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or "
                              "'auto'") from err
    if target.type == "cuda" and not torch.cuda.is_available():
        raise GeofmValueError(f"device {device!r} requested but CUDA is not available; use "
                              "device='cpu' or 'auto'")
    return target


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    more = len(keys) - _LIST_LIMIT
    return shown + (f", ... ({more} more)" if more > 0 else "")


def convert_command(path: Path) -> str:
    """The ``geofm checkpoint convert`` command line that makes ``path`` safe to load."""
    import shlex

    return (f"geofm checkpoint convert {shlex.quote(str(path))} "
            f"{shlex.quote(str(path.with_suffix('.safetensors')))} --trust-pickle")


def _read_torch(path: Path) -> Any:
    return load_torch_file(
        path, what="checkpoint",
        fix_refused=("If you trust the file and where it came from, convert it once with "
                     f"`{convert_command(path)}` (that runs the file's code) and pass the "
                     ".safetensors file instead."),
        fix_unreadable="Download or export it again.")


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if looks_like_torch_file(path):
        raise CheckpointError(
            f"checkpoint {str(path)!r} is named .safetensors but holds torch pickle data, "
            "which the safetensors reader refuses (geofm never unpickles a .safetensors "
            "file); rename it to .pt to read it with the safe torch loader, or download "
            "a real .safetensors file")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # any reader failure means an unusable file
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); the file is corrupt, "
            "truncated or not a checkpoint: download or export it again") from err
    return state, hparams_from_metadata(metadata, path)


def config_to_metadata(config: EncoderConfig) -> dict[str, str]:
    """An encoder's sizes as ``.safetensors`` string metadata (read by :func:`read_checkpoint`).

    ``model_size`` is written only for a preset's own sizes, so a custom encoder
    reads back as ``custom``.
    """
    meta = {k: str(getattr(config, k)) for k in (*SIZE_KEYS, "patch_size")}
    if config.name in PRESETS and PRESETS[config.name] == config:
        meta["model_size"] = config.name
    return meta


def hparams_from_metadata(metadata: Mapping[str, str], path: Path) -> dict[str, Any]:
    """Sizes stored by :func:`config_to_metadata`, parsed; other metadata is ignored."""
    out: dict[str, Any] = {}
    for key in (*SIZE_KEYS, "patch_size", "model_size"):
        if key not in metadata:
            continue
        text = metadata[key]
        try:
            out[key] = (text if key == "model_size" else
                        float(text) if key == "mlp_ratio" else int(text))
        except ValueError as err:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: metadata {key}={text!r} is not a number; "
                "convert the checkpoint again with `geofm checkpoint convert`") from err
    return out


def split_checkpoint(obj: Any, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an unpickled checkpoint into (state dict, hyper-parameters).

    Args:
        obj: a Lightning checkpoint (``state_dict`` + ``hyper_parameters``/``hparams``,
            a mapping or an ``argparse.Namespace``-like object) or a bare state dict.
        path: the file it came from (for messages).

    Raises:
        CheckpointError: ``obj`` holds no state dict of tensors.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, "
                              "not a state dict; save model.state_dict(), not the model")
    hparams: dict[str, Any] = {}
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        raw = obj.get("hyper_parameters", obj.get("hparams")) or {}
        if not isinstance(raw, Mapping) and hasattr(raw, "__dict__"):
            raw = vars(raw)  # e.g. an argparse.Namespace
        hparams = dict(raw) if isinstance(raw, Mapping) else {}
        obj = obj["state_dict"]
    state = dict(obj)
    bad = [k for k, v in state.items() if not hasattr(v, "shape")]
    if bad:
        raise CheckpointError(f"checkpoint {str(path)!r} has non-tensor entries "
                              f"{_listing(sorted(map(str, bad)))}; it is not a state dict")
    return state, hparams


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint file into (state dict, hyper-parameters), never running its code.

    Torch files (``.ckpt``, ``.pt``, ``.pth``) are read with the restricted unpickler of
    :func:`geofm.model.safe_load.load_torch_file`; ``.safetensors`` files with the
    safetensors reader, their sizes from the metadata ``geofm checkpoint convert`` writes.

    Args:
        path: ``.ckpt``, ``.pt``, ``.pth`` or ``.safetensors`` file.

    Returns:
        The raw state dict (keys as stored) and the hyper-parameters (empty if none).

    Raises:
        GeofmFileNotFoundError: ``path`` does not exist.
        CheckpointError: the file cannot be read, pickles objects the safe loader refuses
            (the message names them and the ``geofm checkpoint convert`` fix), or holds
            no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise GeofmFileNotFoundError(
            f"checkpoint {str(path)!r} does not exist; give the path of a Clay .ckpt, "
            "an encoder state dict (.pt/.pth) or a .safetensors file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return split_checkpoint(_read_torch(path), path)


def encoder_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """Pick the encoder's entries of a state dict and strip their prefix.

    With any ``model.encoder.`` key present (a Clay Lightning / ClayMAEModule state dict)
    only those are kept, other keys (decoder, teacher, projection) are ignored. Likewise
    for ``encoder.`` (a ``ClayMAE`` state dict). Otherwise every key is taken as an
    encoder key.
    """
    for prefix in (CKPT_PREFIX, "encoder."):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def config_from_hparams(hparams: Mapping[str, Any], path: Path) -> EncoderConfig | None:
    """Sizes named by Lightning hyper-parameters (``model_size`` and/or explicit dims).

    Returns ``None`` when the hyper-parameters say nothing about the size.
    """
    size = hparams.get("model_size")
    explicit = {k: hparams[k] for k in SIZE_KEYS if hparams.get(k) is not None}
    patch = hparams.get("patch_size")
    if size in PRESETS:
        base = PRESETS[str(size)]
        values = {**base.as_dict(), **explicit}
        name = str(size) if not explicit or all(
            values[k] == getattr(base, k) for k in explicit) else "custom"
    elif explicit:
        missing = [k for k in SIZE_KEYS if k not in explicit]
        if missing:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: hyper_parameters name model_size={size!r} "
                f"but lack {', '.join(missing)}; pass preset= one of {', '.join(PRESETS)}")
        values = {**explicit, "patch_size": 8}
        name = "custom" if size is None else str(size)
    elif size is not None:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: unknown model_size {size!r} in hyper_parameters; "
            f"pass preset= one of {', '.join(PRESETS)}")
    else:
        return None
    if patch is not None:
        values["patch_size"] = patch
    values["name"] = name
    return EncoderConfig(dim=int(values["dim"]), depth=int(values["depth"]),
                         heads=int(values["heads"]), dim_head=int(values["dim_head"]),
                         mlp_ratio=float(values["mlp_ratio"]),
                         patch_size=int(values["patch_size"]), name=name)


def infer_config(state: Mapping[str, Any], path: Path) -> EncoderConfig:
    """The preset whose shapes equal those of an encoder state dict.

    Attention heads cannot be read from weights, so the sizes must match a preset
    exactly; otherwise :class:`CheckpointError` asks for ``preset=``.
    """
    try:
        dim = int(state["cls_token"].shape[-1])
        inner = int(state["transformer.layers.0.0.to_qkv.weight"].shape[0]) // 3
        mlp_dim = int(state["transformer.layers.0.1.net.1.weight"].shape[0])
        kernel = int(state["patch_embedding.weight_generator.fc_weight.weight"].shape[0])
        depth = 1 + max(int(m.group(1)) for k in state
                        if (m := re.match(r"transformer\.layers\.(\d+)\.", k)))
    except (KeyError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a Clay encoder state dict (no {err}); "
            f"pass a Clay checkpoint, or preset= one of {', '.join(PRESETS)}") from err
    patch = math.isqrt(kernel // dim) if dim else 0
    for cfg in PRESETS.values():
        if (cfg.dim, cfg.depth, cfg.heads * cfg.dim_head, cfg.mlp_dim, cfg.patch_size) == (
                dim, depth, inner, mlp_dim, patch):
            return cfg
    raise CheckpointError(
        f"checkpoint {str(path)!r} has no hyper-parameters and its sizes (dim={dim}, "
        f"depth={depth}, attention width={inner}, mlp={mlp_dim}, patch={patch}) match no "
        f"preset; attention heads cannot be read from weights: pass preset= one of "
        f"{', '.join(PRESETS)}")


def check_state(model: ClayEncoder, state: Mapping[str, Any], path: Path) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k} (checkpoint {tuple(state[k].shape)}, model {expected[k]})"
                   for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if wrong:
            parts.append(f"shape mismatch: {_listing(wrong)}")
        c = model.config
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit the {c.name} encoder (dim={c.dim}, "
            f"depth={c.depth}, heads={c.heads}, patch={c.patch_size}); "
            + "; ".join(parts)
            + ". Use the checkpoint of a Clay encoder of these sizes, or pass the matching "
              "preset=")


def training_provenance(hparams: Mapping[str, Any]) -> str | None:
    """How a checkpoint was trained, from the ``pretrain_*`` hyper-parameters it carries.

    ``geofm pretrain`` writes them (start weights, epochs, mask ratio, losses ...).

    Returns:
        ``"geofm pretrain: epochs=3, init=random, ..."`` (keys sorted, plain values), or
        ``None`` for a checkpoint without them (e.g. Clay's own).
    """
    items = sorted((k[len("pretrain_"):], v) for k, v in hparams.items()
                   if isinstance(k, str) and k.startswith("pretrain_")
                   and isinstance(v, str | int | float | bool))
    if not items:
        return None
    return "geofm pretrain: " + ", ".join(f"{k}={v}" for k, v in items)


def _identity(model: ClayEncoder, *, checkpoint: str | None, sha256: str | None,
              seed: int | None, provenance: str | None = None) -> ModelIdentity:
    """The loaded encoder's :class:`ModelIdentity` (no time_location / bands yet)."""
    from geofm.model.identity import ModelIdentity

    return ModelIdentity.from_config(model.config, random_init=model.random_init,
                                     checkpoint=checkpoint, sha256=sha256, seed=seed,
                                     provenance=provenance)


def _config_for(preset: str | EncoderConfig) -> EncoderConfig:
    return preset if isinstance(preset, EncoderConfig) else get_preset(preset)


def load_encoder(path: str | os.PathLike[str] | None = None, *,
                 preset: str | EncoderConfig | None = None,
                 device: str | torch.device = "cpu", seed: int = 0) -> ClayEncoder:
    """Load a Clay encoder from a checkpoint, or build a random-weight one from a preset.

    Args:
        path: Lightning ``.ckpt``, encoder state dict (``.pt``/``.pth``) or
            ``.safetensors``; ``None`` builds seeded random weights (testing only: emits
            a :class:`GeofmWarning` and sets ``random_init``).
        preset: ``tiny``, ``small``, ``base``, ``large`` (or an :class:`EncoderConfig`).
            With a checkpoint it overrides the sizes in its hyper-parameters; needed for
            a bare state dict whose sizes match no preset.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` or a ``torch.device``.
        seed: seed of the random weights (``path=None`` only).

    Returns:
        The encoder in eval mode on ``device``, float32, with ``dim``, ``patch_size``,
        ``preset``, ``random_init`` and ``identity`` set.

    Raises:
        GeofmFileNotFoundError: ``path`` does not exist.
        CheckpointError: corrupt file, a file that pickles objects the safe loader
            refuses (it is never unpickled; the message names the ``geofm checkpoint
            convert`` fix), unknown sizes, or any missing / unexpected / mis-shaped
            encoder key.
        GeofmValueError: neither ``path`` nor ``preset`` given, or an unknown preset.
    """
    import torch

    from geofm.model.encoder import ClayEncoder

    target = resolve_device(device)
    if path is None:
        if preset is None:
            raise GeofmValueError("load_encoder needs a checkpoint path or a preset "
                                  f"(one of {', '.join(PRESETS)})")
        config = _config_for(preset)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ClayEncoder(config)
            model.reset_parameters()
        model.random_init = True
        model.identity = _identity(model, checkpoint=None, sha256=None, seed=seed)
        warnings.warn(
            f"RANDOM WEIGHTS: the {config.name!r} encoder has random weights, for testing "
            f"only (seed {seed}); its embeddings mean nothing. Pass a Clay checkpoint for "
            "real use.",
            GeofmWarning, stacklevel=2)
        return model.to(target).eval()

    path = Path(path)
    state, hparams = read_checkpoint(path)
    enc = encoder_state(state)
    if preset is not None:
        config = _config_for(preset)
    else:
        config = config_from_hparams(hparams, path) or infer_config(enc, path)
    with torch.device("meta"):
        model = ClayEncoder(config)
    check_state(model, enc, path)
    # Fresh float32 copies on the target device: tensors from one shared buffer (e.g.
    # safetensors) can be misaligned, which changes kernel paths and results in the last bit.
    enc = {k: v.to(device=target, dtype=torch.float32, copy=True) for k, v in enc.items()}
    model.load_state_dict(enc, strict=True, assign=True)
    model.identity = _identity(model, checkpoint=str(path), sha256=file_sha256(path),
                               seed=None, provenance=training_provenance(hparams))
    logger.info("loaded %s encoder (dim %d, depth %d) from %s", config.name, config.dim,
                config.depth, path)
    return model.to(target).eval()
