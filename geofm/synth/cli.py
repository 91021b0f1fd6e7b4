"""The ``geofm synth`` subcommand."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``geofm synth`` options (each maps to a :func:`synthesize` argument)."""
    parser.add_argument("out", metavar="OUT", help="output folder (created; must be empty)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=512,
                        help="tile side in 10 m pixels, a multiple of --chip-size (default 512)")
    parser.add_argument("--n-dates", type=int, default=36,
                        help="acquisitions per tile (default 36)")
    parser.add_argument("--start", default="2021-01-01",
                        help="first acquisition date YYYY-MM-DD (default 2021-01-01)")
    parser.add_argument("--cadence-days", type=int, default=None,
                        help="days between acquisitions (default: spread over ~2 years)")
    parser.add_argument("--n-events", type=int, default=4,
                        help="planted forest clearings (default 4)")
    parser.add_argument("--n-tiles", type=int, default=1, choices=(1, 2),
                        help="1, or 2 overlapping tiles (default 1)")
    parser.add_argument("--chip-size", type=int, default=64,
                        help="land-cover cell side in pixels (default 64)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace synthetic data already in OUT")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``geofm synth`` from parsed arguments; print the summary; return 0."""
    from geofm.synth.core import describe, synthesize

    out = synthesize(args.out, seed=args.seed, size=args.size, n_dates=args.n_dates,
                     start=args.start, cadence_days=args.cadence_days, n_events=args.n_events,
                     n_tiles=args.n_tiles, chip_size=args.chip_size, overwrite=args.overwrite)
    print(describe(out))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m geofm.steps.synth`` style entry point: ``geofm synth`` with ``argv``."""
    from geofm.cli import stage_main

    return stage_main("synth", argv)
