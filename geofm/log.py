"""Logging set-up for the command line (the library itself never configures logging)."""

from __future__ import annotations

import logging
import sys
from typing import Any

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at each record, not the one at set-up.

    ``geofm.cli.main`` may run many times in one process (tests, notebooks) with
    ``sys.stderr`` replaced in between; a handler holding the first stream would write
    to a closed file.
    """

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(verbosity: int = 0) -> None:
    """Configure the ``geofm`` logger for CLI use.

    Args:
        verbosity: 0 = INFO, 1+ = DEBUG, negative = WARNING.
    """
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    logger = logging.getLogger("geofm")
    logger.setLevel(level)
    if not any(getattr(h, "_geofm", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler._geofm = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False


def progress(iterable=None, **kwargs):  # type: ignore[no-untyped-def]
    """Return a tqdm progress bar (on stderr; silent when ``disable=True``)."""
    if kwargs.get("disable"):  # no bar: skip tqdm.auto's imports (asyncio, ~0.1 s)
        from tqdm import tqdm
    else:
        from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, **kwargs)
