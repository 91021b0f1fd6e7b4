"""argparse ``type=`` helpers shared by the subcommands: bad values fail at parse time.

A value refused here makes ``geofm`` exit 2 with argparse's usage line and a message
that names the flag's value and the valid range, before any stage starts. The library
functions keep their own checks (:class:`~geofm.exceptions.GeofmValueError`) for Python
callers; where a library parser exists (bbox, dates) these helpers call it, so the rule
is written once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")


def library_value(parse: Callable[[str], _T], text: str) -> _T:
    """``parse(text)`` with a library parser; its ``GeofmValueError`` fails the parse.

    The error's message (which names the value and the valid range) becomes argparse's
    error, so the command exits 2 with the usage line, and the rule is written once.
    """
    from geofm.exceptions import GeofmValueError

    try:
        return parse(text)
    except GeofmValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    """An integer >= 1 (``--k``, ``--chip-size``, ``--batch-size``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (>= 1), got {value}")
    return value


def similarity(text: str) -> float:
    """A cosine similarity, in [-1, 1] (``--min-similarity``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine similarity is in [-1, 1], got {value:g}")
    return value


def bbox(text: str) -> tuple[float, float, float, float]:
    """``W,S,E,N`` in WGS84 degrees with W < E and S < N (``--bbox``)."""
    from geofm.search.stage import parse_bbox

    return library_value(parse_bbox, text)


def utc_date(text: str) -> str:
    """A date (``YYYY-MM-DD`` or any ISO timestamp, UTC if no zone); returned as given."""
    from geofm.dates import parse_utc

    library_value(parse_utc, text)
    return text


class DateRangeBound(argparse.Action):
    """Store ``--start``/``--end`` (dests ``start`` and ``end``) and refuse start > end.

    Use with ``type=utc_date``. Whichever of the two flags comes second sees the other
    one and fails the parse (exit 2) when the range is empty; ``--end`` counts its
    whole day.
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        """Store the value, then check the range if both ends are known."""
        from geofm.dates import parse_utc

        setattr(namespace, self.dest, values)
        start, end = getattr(namespace, "start", None), getattr(namespace, "end", None)
        if start is not None and end is not None and parse_utc(start) > parse_utc(end,
                                                                                  end=True):
            parser.error(f"--start {start} is after --end {end}; give an earlier --start "
                         "or a later --end")
