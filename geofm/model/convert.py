"""``geofm checkpoint convert``: rewrite a checkpoint as a ``.safetensors`` file.

A ``.safetensors`` file holds tensors and string metadata only, so loading it can never
run code. ``convert`` writes the encoder's state dict (keys without the
``model.encoder.`` prefix; any other state dict: all its tensors) and the encoder sizes
found in the checkpoint's hyper-parameters as metadata, so :func:`geofm.model.
load_encoder` reads the converted file without a preset.

By default the input is read with the same safe loader as every other geofm load
(:mod:`geofm.model.safe_load`). ``--trust-pickle`` (``trust_pickle=True``) unpickles it
fully instead, which RUNS ANY CODE THE FILE CONTAINS: the one explicit way to use a
checkpoint the safe loader refuses, for a file the user trusts.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geofm.exceptions import (
    CheckpointError,
    GeofmFileExistsError,
    GeofmFileNotFoundError,
    GeofmValueError,
)

logger = logging.getLogger(__name__)


def _trusted_load(path: Path) -> Any:
    import torch

    logger.warning(
        "--trust-pickle: fully unpickling %s. This RUNS ANY CODE THE FILE CONTAINS, with "
        "your permissions; only do this for a file you trust, from a source you trust.",
        path)
    try:  # a file object: torch.load would hand a path named .safetensors to safetensors
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=False)
    except Exception as err:  # any reader failure means an unusable file
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r} even with --trust-pickle "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); the "
            "file is corrupt, truncated or not a checkpoint: download or export it again"
        ) from err


def convert_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                       trust_pickle: bool = False, overwrite: bool = False) -> Path:
    """Write the tensors of checkpoint ``src`` (and its encoder sizes) to ``dst``.

    Args:
        src: Lightning ``.ckpt``, state dict (``.pt``/``.pth``) or ``.safetensors``.
        dst: the ``.safetensors`` file to write (atomically).
        trust_pickle: unpickle a torch ``src`` fully, running any code it contains;
            without it ``src`` is read with the safe loader, which refuses such files.
        overwrite: replace an existing ``dst``.

    Returns:
        ``dst``. Its tensors: the encoder state dict (``model.encoder.`` / ``encoder.``
        prefix stripped) if ``src`` has encoder keys, else every tensor as stored. Its
        metadata: ``dim``, ``depth``, ``heads``, ``dim_head``, ``mlp_ratio``,
        ``patch_size`` (and ``model_size`` for a preset) when the hyper-parameters name
        the sizes, plus ``geofm_source`` (file name) and ``geofm_source_sha256``.

    Raises:
        GeofmFileNotFoundError: ``src`` does not exist.
        GeofmFileExistsError: ``dst`` exists and ``overwrite`` is False.
        GeofmValueError: ``dst`` does not end in ``.safetensors`` or is ``src``.
        CheckpointError: ``src`` is unreadable, refused by the safe loader (without
            ``trust_pickle``) or holds no state dict of tensors.
    """
    from safetensors.torch import save_file

    from geofm.io import atomic_path
    from geofm.model.loading import (
        config_from_hparams,
        config_to_metadata,
        encoder_state,
        file_sha256,
        read_checkpoint,
        split_checkpoint,
    )
    from geofm.model.safe_load import looks_like_torch_file

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise GeofmFileNotFoundError(f"checkpoint {str(src)!r} does not exist; give the path "
                                     "of a .ckpt, .pt/.pth or .safetensors file")
    if dst.suffix != ".safetensors":
        raise GeofmValueError(f"output {str(dst)!r} must end in .safetensors")
    if dst.resolve() == src.resolve():
        raise GeofmValueError(f"output {str(dst)!r} is the input; choose another file name")
    if dst.exists() and not overwrite:
        raise GeofmFileExistsError(f"{dst} exists; pass --overwrite to replace it or choose "
                                   "another output")
    if trust_pickle and looks_like_torch_file(src):
        state, hparams = split_checkpoint(_trusted_load(src), src)
    else:
        state, hparams = read_checkpoint(src)
    tensors = encoder_state(state)
    metadata = {"geofm_source": src.name, "geofm_source_sha256": file_sha256(src)}
    try:
        config = config_from_hparams(hparams, src)
    except CheckpointError as err:
        logger.warning("%s; the sizes are not recorded, pass preset= when loading %s",
                       err, dst)
        config = None
    if config is not None:
        metadata.update(config_to_metadata(config))
    # own contiguous copies: safetensors refuses tensors that share memory
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(dst) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    logger.info("wrote %d tensors to %s (sizes: %s)", len(tensors), dst,
                "unknown" if config is None else
                f"{config.name}, dim {config.dim}, depth {config.depth}, heads {config.heads}")
    return dst


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``geofm checkpoint`` actions (``convert``) to ``parser``."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    conv = actions.add_parser(
        "convert", allow_abbrev=False,  # --trust-pickle only when spelled out
        help="rewrite a checkpoint as .safetensors (tensors + sizes, no code)",
        description="Rewrite a checkpoint as .safetensors: the encoder's tensors and its "
                    "sizes, which load without unpickling anything.")
    conv.add_argument("src", type=Path, metavar="IN", help=".ckpt, .pt/.pth or .safetensors")
    conv.add_argument("dst", type=Path, metavar="OUT", help="the .safetensors file to write")
    conv.add_argument("--trust-pickle", action="store_true",
                      help="fully unpickle IN, RUNNING ANY CODE IT CONTAINS: only for a file "
                           "you trust (without it IN is read with the safe loader)")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    # accepted after the action too; SUPPRESS keeps the values given before it
    conv.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                      help="more logging")
    conv.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                      help="warnings and errors only")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``geofm checkpoint ACTION`` from parsed arguments; returns the exit code."""
    convert_checkpoint(args.src, args.dst, trust_pickle=args.trust_pickle,
                       overwrite=args.overwrite)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``geofm checkpoint`` with ``argv``."""
    from geofm.cli import stage_main

    return stage_main("checkpoint", argv)
