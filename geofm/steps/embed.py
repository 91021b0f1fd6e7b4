"""Processing-job entry point of ``embed``: ``python -m geofm.steps.embed``.

Inputs: ``--bundles``, this instance's shard of the chip step's scene bundles
(``ShardedByS3Key``: whole scenes, see :mod:`geofm.steps._mounts`), unpacked into
``--root`` as ``meta/`` and ``chips/``; ``--checkpoint-dir``, the folder the checkpoint
was downloaded to (it must hold exactly one file; it comes from S3 as a processing
input and is never baked into the image). ``--checkpoint PATH`` or ``--model PRESET``
given explicitly win over the folder. Output folders of ``--root``: ``embeddings/`` and
``manifests/embed-<host>.json``. Every other option goes to ``geofm embed``
(``--batch-size``, ``--device``, ``--patches`` ...). Exit code 1 if any scene or batch
failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError
from geofm.steps import _mounts

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Options of the embed step (stage options are forwarded, see the module doc)."""
    parser = _mounts.step_parser("embed", __doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bundles", type=Path, default=Path(_mounts.input_dir(_mounts.BUNDLES)),
                        help="folder of scene bundles, this instance's shard "
                             "(default: %(default)s)")
    parser.add_argument("--checkpoint-dir", type=Path,
                        default=Path(_mounts.input_dir("checkpoint")),
                        help="folder holding the one checkpoint file (default: %(default)s)")
    return parser


def find_checkpoint(folder: Path) -> Path:
    """The single checkpoint file in ``folder`` (searched recursively).

    Raises:
        GeofmFileNotFoundError: the folder is missing or holds no file.
        GeofmValueError: it holds more than one file.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise GeofmFileNotFoundError(
            f"no checkpoint file in {folder}; point the checkpoint input (CheckpointUri) at "
            "the checkpoint object in S3, or pass --checkpoint PATH or --model tiny "
            "(random weights, testing only)"
        )
    if len(files) > 1:
        names = ", ".join(str(p.relative_to(folder)) for p in files[:5])
        raise GeofmValueError(
            f"{len(files)} files in checkpoint folder {folder} ({names}); point the "
            "checkpoint input at one checkpoint object, or pass --checkpoint PATH"
        )
    return files[0]


def _work(args: argparse.Namespace, stage_args: list[str]) -> int:
    scenes = _mounts.extract_bundles(args.bundles, args.root)
    if not scenes:
        log.warning("no scene bundles in %s (an empty shard): nothing to embed", args.bundles)
        return 0
    if not _mounts.has_option(stage_args, "--checkpoint", "--model"):
        stage_args = ["--checkpoint", str(find_checkpoint(args.checkpoint_dir)), *stage_args]
    return _mounts.run_stage("embed", ["--root", str(args.root), *stage_args])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the embed step; returns the exit code (see the module doc)."""
    args, stage_args = build_parser().parse_known_args(argv)
    return _mounts.run_step("embed", args, lambda: _work(args, stage_args))


if __name__ == "__main__":
    sys.exit(main())
