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
from typing import Any

from geofm.serve.app import DEFAULT_HOST, ServeError, make_server, serve

__all__ = ["serve", "make_server", "add_arguments", "run_cli", "main"]

log = logging.getLogger(__name__)


def cli_options() -> dict[str, Any]:
    """``geofm serve``'s options: :func:`serve`'s signature plus what it cannot say.

    Returns:
        ``{name: geofm.options.Option}``.
    """
    from geofm.options import Cli, declare

    return declare(serve, {
        "root": Cli(required=True, help="run root to show (only read)"),
        "host": Cli(help=f"address to listen on (default {DEFAULT_HOST}: this machine "
                         "only; 0.0.0.0 opens it to the network)"),
    })


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``geofm serve`` options to ``parser`` (from :func:`cli_options`)."""
    from geofm.options import add_arguments as add_options

    add_options(parser, cli_options().values())


def run_cli(args: argparse.Namespace) -> int:
    """Run ``geofm serve`` until Ctrl-C / SIGTERM; exit 2 when the port is unusable."""
    from geofm.options import library_kwargs

    if not 0 <= args.port <= 65535:
        log.error("--port %d must be between 0 and 65535", args.port)
        return 2
    try:
        serve(**library_kwargs(args, cli_options().values()))
    except ServeError as exc:
        log.error("%s", exc)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m geofm.serve`` style entry point."""
    from geofm.cli import stage_main

    return stage_main("serve", argv)
