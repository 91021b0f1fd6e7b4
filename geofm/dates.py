"""UTC dates and times: the one place geofm turns user and table values into UTC.

Every stage stores acquisition and change dates in UTC. A value without a zone (a bare
``YYYY-MM-DD``, a naive timestamp, naive ``datetime64``) is taken to be UTC; one with a
zone is converted to UTC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geofm.exceptions import GeofmValueError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["as_utc", "parse_utc", "utc_index"]


def as_utc(ts: pd.Timestamp) -> pd.Timestamp:
    """``ts`` in UTC: a naive timestamp is taken to be UTC, an aware one converted."""
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def parse_utc(value: Any, *, end: bool = False, name: str | None = None,
              hint: str = "use YYYY-MM-DD") -> pd.Timestamp:
    """A date or timestamp (string, ``datetime``, ``Timestamp``) as a UTC ``pandas.Timestamp``.

    Args:
        value: ``YYYY-MM-DD``, an ISO 8601 time (UTC if it has no zone), a ``datetime``
            or a ``pandas.Timestamp``.
        end: a bare day (``YYYY-MM-DD``) means its last microsecond, so an end date
            counts its whole day.
        name: the option or argument the value came from; the error then reads
            ``name='value' is not a date``, else ``cannot parse date 'value'``.
        hint: the fix the error message ends with.

    Returns:
        A tz-aware (UTC) ``pandas.Timestamp``.

    Raises:
        GeofmValueError: ``value`` is not a date (or is empty / NaT); its ``name`` and
            ``value`` fields say which.
    """
    import pandas as pd

    what = f"{name}={value!r} is not a date" if name else f"cannot parse date {value!r}"
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise GeofmValueError(f"{what}; {hint}", name=name, value=value) from exc
    if pd.isna(ts):
        raise GeofmValueError(f"{what}; {hint}", name=name, value=value)
    ts = as_utc(ts)
    if end and ts == ts.normalize() and len(str(value)) <= 10:  # a day: include all of it
        ts = ts + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)
    return ts


def utc_index(dates: Any) -> pd.DatetimeIndex:
    """Many dates (a sequence, Series, ``datetime64`` array, or one value) as UTC.

    Args:
        dates: datetime objects, ``datetime64`` values or ISO 8601 strings; naive ones
            are taken to be UTC. A single value counts as one date.

    Returns:
        A tz-aware (UTC) ``pandas.DatetimeIndex``, one entry per date.

    Raises:
        GeofmValueError: a value cannot be read as a datetime, or one is missing.
    """
    import numpy as np
    import pandas as pd

    if isinstance(dates, (str, bytes)) or not hasattr(dates, "__len__"):
        dates = [dates]
    try:
        index = pd.DatetimeIndex(pd.to_datetime(list(dates) if not isinstance(
            dates, (pd.Series, pd.DatetimeIndex, np.ndarray)) else dates, utc=True))
    except (ValueError, TypeError) as err:
        raise GeofmValueError(f"cannot read dates {dates!r} as datetimes ({err}); give "
                              "datetime objects, numpy datetime64 or ISO 8601 strings",
                              value=dates) from err
    if index.isna().any():
        raise GeofmValueError(f"missing date(s) in {dates!r}; every chip needs its "
                              "acquisition datetime", value=dates)
    return index
