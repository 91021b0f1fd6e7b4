"""Processing-job entry point of ``index``: ``python -m geofm.steps.index``.

Inputs (``FullyReplicated``): ``--meta``, ``--embeddings`` and ``--analysis``, the
folders written by the earlier steps, symlinked into ``--root``. Output folders of
``--root``: ``index/`` (LanceDB, table ``chips``), ``consolidated/consolidated.parquet``
(a copy of the root's ``consolidated.parquet``: processing outputs are folders) and
``manifests/index-<host>.json``. Every other option goes to ``geofm index``. Exit code
1 if the stage recorded failures.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence

from geofm.io import atomic_path
from geofm.layout import RunRoot
from geofm.steps import _mounts


def build_parser() -> argparse.ArgumentParser:
    """Options of the index step (stage options are forwarded, see the module doc)."""
    parser = _mounts.step_parser("index", __doc__.splitlines()[0] if __doc__ else None)
    return _mounts.add_folder_inputs(parser, "index")


def _work(args: argparse.Namespace, stage_args: list[str]) -> int:
    _mounts.link_folder_inputs(args, "index")
    code = _mounts.run_stage("index", ["--root", str(args.root), *stage_args])
    consolidated = RunRoot.of(args.root).consolidated_path
    if consolidated.is_file():
        with atomic_path(args.root / _mounts.CONSOLIDATED / consolidated.name) as tmp:
            shutil.copyfile(consolidated, tmp)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the index step; returns the exit code (see the module doc)."""
    args, stage_args = build_parser().parse_known_args(argv)
    return _mounts.run_step("index", args, lambda: _work(args, stage_args))


if __name__ == "__main__":
    sys.exit(main())
