"""``geofm serve``: the analyst's map over a run root, in the browser.

A local, read-only web app: every chip footprint of the run on a map coloured by change
status or change date, the list of changed chips, a chip page (``/?chip=CHIP_ID``) with
the monitored signal, its seasonal fit, threshold band and change date, before/after
thumbnails and the most similar chips, and a search panel with the options of
``geofm search`` (through the same :func:`geofm.search.search`).

It needs no internet: geofm serves the chip layer, thumbnails and a vendored Leaflet
build itself; an online basemap (OpenStreetMap) is an option in the page, off by
default. Nothing is written into the run root. See :mod:`geofm.serve.app` for the
routes and :mod:`geofm.serve.data` for what is read.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from geofm.serve.app import DEFAULT_HOST, DEFAULT_PORT, ServeError, make_server, serve

__all__ = ["serve", "make_server", "add_arguments", "run_cli", "main"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``geofm serve`` options to ``parser``."""
    parser.add_argument("--root", required=True, help="run root to show (only read)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine "
                        "only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"TCP port (default {DEFAULT_PORT}; 0 = any free port)")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``geofm serve`` until Ctrl-C / SIGTERM; exit 2 when the port is unusable."""
    if not 0 <= args.port <= 65535:
        log.error("--port %d must be between 0 and 65535", args.port)
        return 2
    try:
        serve(args.root, host=args.host, port=args.port)
    except ServeError as exc:
        log.error("%s", exc)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m geofm.serve`` style entry point."""
    from geofm.cli import stage_main

    return stage_main("serve", argv)
