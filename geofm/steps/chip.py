"""Processing-job entry point of ``chip``: ``python -m geofm.steps.chip``.

Input: ``--items``, a folder of STAC Item JSON files (or ItemCollections); on SageMaker
this instance's shard of the items prefix (``ShardedByS3Key``), so asset hrefs must be
absolute (``s3://``, ``https://``). Output folders of ``--root``: ``meta/``,
``thumbnails/``, ``bundles/<scene_id>.tar`` (one per scene with its metadata and its
``chips/``: what the embed step is sharded over; see :mod:`geofm.steps._mounts`) and
``manifests/chip-<host>.json``; ``chips/`` itself stays in the root.
Every other option goes to ``geofm chip`` (``--chip-size``, ``--bands``, ``--max-cloud``
...). Exit code 1 if any scene failed; the other scenes are still written and bundled.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from geofm.steps import _mounts

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Options of the chip step (stage options are forwarded, see the module doc)."""
    parser = _mounts.step_parser("chip", __doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=Path, default=Path(_mounts.input_dir("items")),
                        help="folder of STAC items, this instance's shard (default: %(default)s)")
    return parser


def _work(args: argparse.Namespace, stage_args: list[str]) -> int:
    items = _mounts.require_dir(args.items, "items")
    if not any(p.is_file() and not p.name.startswith(".") for p in items.rglob("*")):
        log.warning("no items in %s (an empty shard): nothing to chip", items)
        return 0
    code = _mounts.run_stage("chip", ["--items", str(items), "--out", str(args.root),
                                      *stage_args])
    bundles = _mounts.write_bundles(args.root, args.root / _mounts.BUNDLES)
    log.info("wrote %d scene bundle(s) in %s", len(bundles), args.root / _mounts.BUNDLES)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chip step; returns the exit code (see the module doc)."""
    args, stage_args = build_parser().parse_known_args(argv)
    return _mounts.run_step("chip", args, lambda: _work(args, stage_args))


if __name__ == "__main__":
    sys.exit(main())
