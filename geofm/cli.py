"""The ``geofm`` command line: one thin subcommand per stage.

Each subcommand lives in its stage module, which provides::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run_cli(args: argparse.Namespace) -> int: ...   # exit code

Modules are imported only when their subcommand runs, so ``geofm --help`` stays fast.
Exit codes: 0 success; 1 the stage failed or some units of work failed (the rest is
written, ``run.json`` lists the failures); 2 bad command line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from geofm import __version__
from geofm.exceptions import GeofmError
from geofm.log import setup_logging

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("geofm.synth", "write a synthetic Sentinel-2 L2A time series with planted truth"),
    "chip": ("geofm.chip", "cut STAC scenes into a stable chip grid (NetCDF, thumbnails, meta)"),
    "embed": ("geofm.embed", "embed chips with a Clay encoder"),
    "analyze": ("geofm.analyze", "PCA, similarity to baseline, change detection"),
    "index": ("geofm.index", "consolidate into GeoParquet + LanceDB"),
    "search": ("geofm.search", "similarity search over an indexed run"),
    "report": ("geofm.generative.report", "language-model answers over a run's changed chips"),
    "run": ("geofm.pipeline", "run chip -> embed -> analyze -> index"),
    "demo": ("geofm.demo", "synth + run + example searches + report; no network, no weights"),
    "pretrain": ("geofm.pretrain", "Clay's masked-autoencoder pretraining on a run's chips"),
    "finetune": ("geofm.finetune", "train a head on the frozen encoder"),
    "predict": ("geofm.finetune.predict", "apply a trained head; write class-map GeoTIFFs"),
    "checkpoint": ("geofm.model.convert", "convert a checkpoint to .safetensors (no code)"),
    "serve": ("geofm.serve", "the map app over a run root: changes, timelines, search"),
}

log = logging.getLogger("geofm")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def build_parser(subcommand: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser; add full options only for ``subcommand``."""
    parser = argparse.ArgumentParser(
        prog="geofm", description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"geofm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("--version", action="version", version=f"geofm {__version__}")
        _common(sp)
        if name == subcommand:
            importlib.import_module(module_name).add_arguments(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geofm`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    subcommand = next((a for a in argv if not a.startswith("-")), None)
    if subcommand not in SUBCOMMANDS:
        subcommand = None
    parser = build_parser(subcommand)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    setup_logging(-1 if args.quiet else args.verbose)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        return int(module.run_cli(args))
    except GeofmError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; finished outputs are kept and a re-run resumes")
        return 130


def stage_main(command: str, argv: Sequence[str] | None = None) -> int:
    """Run one subcommand with ``argv`` (without the subcommand name); for ``main()``s."""
    return main([command, *(sys.argv[1:] if argv is None else argv)])
