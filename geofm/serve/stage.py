"""``geofm serve``: the library entry point (:func:`geofm.serve.app.serve`) and its CLI."""


from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from geofm.serve.app import DEFAULT_HOST, ServeError, serve

__all__ = ["add_arguments", "cli_options", "main", "run_cli"]

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
