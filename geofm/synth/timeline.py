"""Acquisition dates, processing baselines and planted-event timing."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from geofm.sensors import S2_BOA_ADD_OFFSET, S2_OFFSET_BASELINE
from geofm.synth.noise import rng_for

#: First acquisition day processed with baseline 04.00 (+1000 DN offset).
BASELINE_SWITCH = dt.date(2022, 1, 25)
#: Default time span covered by the acquisitions when no cadence is given, days.
DEFAULT_SPAN_DAYS = 730
#: Days from the clearing to the pasture that replaces the bare soil.
REGROWTH_DAYS = (60, 120)
#: Acquisitions on or after a planted event's date that remain in the series (at least).
MIN_ACQUISITIONS_AFTER = 6
#: Days from a planted event's date to the last acquisition (at least).
MIN_DAYS_AFTER = 120

_KEY_EVENTS = 31


def acquisition_dates(start: dt.date, n_dates: int, cadence_days: int | None) -> list[dt.date]:
    """Regular acquisition dates; default cadence spreads them over about two years.

    The default cadence is a multiple of Sentinel-2's 5-day revisit.
    """
    if cadence_days is None:
        cadence_days = 5 * max(1, round(DEFAULT_SPAN_DAYS / max(n_dates - 1, 1) / 5))
    return [start + dt.timedelta(days=i * cadence_days) for i in range(n_dates)]


def processing_baseline(date: dt.date) -> str:
    """Sentinel-2 L2A processing baseline of an acquisition on ``date``."""
    if date >= BASELINE_SWITCH:
        return S2_OFFSET_BASELINE
    return "03.01" if date >= dt.date(2021, 6, 30) else "02.09"


def boa_offset(date: dt.date) -> int:
    """DN offset added to every valid reflectance DN (1000 from baseline 04.00, else 0)."""
    return S2_BOA_ADD_OFFSET if date >= BASELINE_SWITCH else 0


def add_months(date: dt.date, months: int) -> dt.date:
    """``date`` plus whole calendar months (day clipped to 28)."""
    m = date.month - 1 + months
    return dt.date(date.year + m // 12, m % 12 + 1, min(date.day, 28))


def monitor_index(dates: list[dt.date]) -> int:
    """Index of the last acquisition before the monitoring period (``monitor_start``).

    Planted events happen after it. It is the first acquisition one year or more after
    the start if at least four remain after it (one to land in, three to show the
    change); otherwise about the middle of the series.
    """
    n = len(dates)
    one_year = dates[0] + dt.timedelta(days=365)
    for i, d in enumerate(dates):
        if d >= one_year and i <= n - 4:
            return i
    return min(max(1, min(n // 2, n - 4)), n - 1)


def label_date(dates: list[dt.date]) -> dt.date:
    """Reference date of the label raster: six months after the start, before any event."""
    return min(add_months(dates[0], 6), dates[monitor_index(dates)])


@dataclass(frozen=True)
class EventTiming:
    """When a planted clearing happens.

    Attributes:
        date: the clearing (forest -> bare soil).
        regrowth: pasture replaces the bare soil.
        first_index: index of the first acquisition on or after ``date``.
    """

    date: dt.date
    regrowth: dt.date
    first_index: int


def event_timings(dates: list[dt.date], n_events: int, *, seed: int) -> list[EventTiming]:
    """Draw ``n_events`` clearing dates inside the monitoring period.

    Each date falls between two acquisitions ``(d[k-1], d[k]]`` with ``k`` after
    :func:`monitor_index` and is never the baseline-switch day. Every event stays
    observable: at least :data:`MIN_ACQUISITIONS_AFTER` (6) acquisitions ``d[k:]`` on or
    after it remain, and the last acquisition is at least :data:`MIN_DAYS_AFTER` (120)
    days after it, so both the bare-soil phase and the pasture that follows show even
    when clouds hide a few dates. A series too short for that (e.g. 5 dates 10 days
    apart) falls back to the loosest room that still shows a change: three
    acquisitions ``d[k:]``, no day limit.
    """
    rng = rng_for(seed, _KEY_EVENTS)
    m, n = monitor_index(dates), len(dates)
    latest = dates[-1] - dt.timedelta(days=MIN_DAYS_AFTER)

    def days_in(k: int, strict: bool) -> list[int]:
        gap = (dates[k] - dates[k - 1]).days
        return [j for j in range(1, gap + 1)
                if dates[k - 1] + dt.timedelta(days=j) != BASELINE_SWITCH
                and (not strict or dates[k - 1] + dt.timedelta(days=j) <= latest)]

    strict = True
    candidates = [k for k in range(m + 1, n - MIN_ACQUISITIONS_AFTER + 1) if days_in(k, True)]
    if not candidates:
        strict = False
        candidates = [k for k in range(m + 1, n - 2) if days_in(k, False)]
    out = []
    for _ in range(n_events):
        k = int(candidates[rng.integers(len(candidates))])
        days = days_in(k, strict)
        date = dates[k - 1] + dt.timedelta(days=int(days[rng.integers(len(days))]))
        regrowth = date + dt.timedelta(days=int(rng.integers(REGROWTH_DAYS[0],
                                                             REGROWTH_DAYS[1] + 1)))
        out.append(EventTiming(date=date, regrowth=regrowth, first_index=k))
    return out


def min_dates_for_events() -> int:
    """Fewest acquisitions that leave room for events (one before, three after).

    Longer series give each event more room; see :func:`event_timings`.
    """
    return 5


def platform(index: int) -> str:
    """Alternate Sentinel-2A / 2B like the 5-day combined revisit."""
    return ("sentinel-2a", "sentinel-2b")[index % 2]


def acquisition_time(index: int) -> str:
    """Deterministic late-morning UTC time of day (HH:MM:SS.ffffffZ) for Zone 33."""
    sec = 10 + (index * 7) % 40
    return f"10:06:{sec:02d}.{(index * 137) % 1000:03d}000Z"
