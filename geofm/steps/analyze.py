"""Processing-job entry point of ``analyze``: ``python -m geofm.steps.analyze``.

Inputs (``FullyReplicated``: PCA is fitted once, over all embeddings): ``--meta`` and
``--embeddings``, the folders written by the chip and embed steps (all shards merged
in S3), symlinked into ``--root``. Optional ``--previous-analysis``: the ``analysis/``
folder of the previous run (the pipeline's ``previous-analysis`` input); it is copied
into ``--root`` first, so the stage runs incrementally (new or changed scenes scored
against the stored reference, alerts kept) instead of from scratch. Output folders of
``--root``: ``analysis/`` and ``manifests/analyze-<host>.json``. Every other option
goes to ``geofm analyze`` (``--embedding``, ``--baseline-start`` ...). Exit code 1 if
any chip failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from geofm.steps import _mounts


def build_parser() -> argparse.ArgumentParser:
    """Options of the analyze step (stage options are forwarded, see the module doc)."""
    parser = _mounts.step_parser("analyze", __doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(f"--{_mounts.PREVIOUS_ANALYSIS}", dest="previous_analysis",
                        type=Path, default=None,
                        help="the previous run's analysis/ folder: analyse incrementally "
                             "(default: none, analyse from scratch; the pipeline mounts it "
                             f"at {_mounts.input_dir(_mounts.PREVIOUS_ANALYSIS)})")
    return _mounts.add_folder_inputs(parser, "analyze")


def _work(args: argparse.Namespace, stage_args: list[str]) -> int:
    _mounts.link_folder_inputs(args, "analyze")
    if args.previous_analysis is not None:
        _mounts.seed_folder(args.root, "analysis", args.previous_analysis)
    return _mounts.run_stage("analyze", ["--root", str(args.root), *stage_args])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the analyze step; returns the exit code (see the module doc)."""
    args, stage_args = build_parser().parse_known_args(argv)
    return _mounts.run_step("analyze", args, lambda: _work(args, stage_args))


if __name__ == "__main__":
    sys.exit(main())
