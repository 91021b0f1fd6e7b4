"""Where the CCDC rule stands for each chip, so that an update goes on from there.

The rule (:func:`geofm.analyze.change.assess`) walks a chip's scaled residuals in date
order. After the last one, all it needs to go on with later observations is small: the
run of anomalies in progress (length, side, first column and date, and its
``|residual|`` values), the change found so far (its columns, dates and confirming
scene), the counts, and the ``|residual|`` values the magnitude is the median of (the
monitoring observations from the change on, or all of them without a change), kept
sorted. :func:`walk` is the rule written that way: from the state after a chip's first
observations and its later ones, it gives what :func:`~geofm.analyze.change.assess`
gives on the whole series, and the state after them. ``analysis/assessment.npz`` keeps
the state of every chip after each analysis, so an update reads neither the published
observations nor re-walks them, for every chip whose new observations all come after
its last one and whose ``ok`` (fitted, enough monitoring observations) does not change.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

#: ``int64`` per-chip fields and their value for a chip with no observation yet.
_INT_FIELDS = {"n_seen": 0, "last_ns": np.iinfo(np.int64).min, "n_valid": 0, "n_monitor": 0,
               "run": 0, "start": -1, "start_ns": 0, "change_col": -1, "confirm_col": -1,
               "change_ns": 0, "confirm_ns": 0}


@dataclass
class ChipState:
    """The rule's state after each chip's observations so far (``[C]`` arrays).

    Attributes:
        n_seen: observations walked (the next one is column ``n_seen``).
        last_ns: date of the last one (ns since the epoch, UTC; int64 min: none).
        n_valid, n_monitor: valid and valid monitoring observations.
        ok: fitted with at least ``consecutive`` monitoring observations (assessed).
        run, side, start, start_ns: the run in progress (length; sign; first column and
            its date; ``start`` -1: none).
        change_col, confirm_col, change_ns, confirm_ns: the change (first column of its
            run and the column that confirmed it, -1: none; their dates, 0: none).
        confirm_scene: the confirming observation's scene (None: none).
        after, after_bounds: float64 ``|residual|`` values the magnitude is the median
            of, chip ``c``'s sorted in ``after[after_bounds[c]:after_bounds[c + 1]]``.
        run_vals, run_bounds: the ``|residual|`` values of the run in progress (no
            change yet), in date order, laid out the same way.
    """

    n_seen: np.ndarray
    last_ns: np.ndarray
    n_valid: np.ndarray
    n_monitor: np.ndarray
    ok: np.ndarray
    run: np.ndarray
    side: np.ndarray
    start: np.ndarray
    start_ns: np.ndarray
    change_col: np.ndarray
    confirm_col: np.ndarray
    change_ns: np.ndarray
    confirm_ns: np.ndarray
    confirm_scene: np.ndarray
    after: np.ndarray
    after_bounds: np.ndarray
    run_vals: np.ndarray
    run_bounds: np.ndarray

    @classmethod
    def empty(cls, n_chips: int) -> ChipState:
        """The state of ``n_chips`` chips before any observation."""
        ints = {k: np.full(n_chips, v, dtype=np.int64) for k, v in _INT_FIELDS.items()}
        zero = np.zeros(n_chips + 1, dtype=np.int64)
        return cls(**ints, ok=np.zeros(n_chips, bool), side=np.zeros(n_chips),
                   confirm_scene=np.full(n_chips, None, dtype=object),
                   after=np.zeros(0), after_bounds=zero,
                   run_vals=np.zeros(0), run_bounds=zero.copy())

    def __len__(self) -> int:
        return self.n_seen.size

    def take(self, chips: np.ndarray) -> ChipState:
        """The state of ``chips`` (int ``[n]``)."""
        after, after_bounds = _ragged_take(self.after, self.after_bounds, chips)
        run_vals, run_bounds = _ragged_take(self.run_vals, self.run_bounds, chips)
        return ChipState(after=after, after_bounds=after_bounds, run_vals=run_vals,
                         run_bounds=run_bounds, **{f.name: getattr(self, f.name)[chips]
                                                   for f in fields(self) if f.name not in
                                                   ("after", "after_bounds", "run_vals",
                                                    "run_bounds")})

    @classmethod
    def concat(cls, parts: list[ChipState]) -> ChipState:
        """The states of several sets of chips, one after the other."""
        out: dict[str, Any] = {}
        for f in fields(cls):
            if f.name.endswith("_bounds"):
                continue
            out[f.name] = np.concatenate([getattr(p, f.name) for p in parts])
        for key in ("after_bounds", "run_bounds"):
            sizes = np.concatenate([np.diff(getattr(p, key)) for p in parts])
            out[key] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return cls(**out)

    def save(self, path: str | Path, chip_ids: np.ndarray, update: int) -> None:
        """Write the state of ``chip_ids`` (``[C]``) after analysis ``update`` (``.npz``).

        The ids are stored as one UTF-8 text (NUL-separated), the confirming scenes as
        codes into their list.
        """
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        scenes = arrays.pop("confirm_scene")
        named = np.flatnonzero(scenes != None)  # noqa: E711 (element-wise)
        names, codes = np.unique(scenes[named].astype(str), return_inverse=True)
        scene_code = np.full(scenes.size, -1, dtype=np.int32)
        scene_code[named] = codes
        with open(path, "wb") as fh:
            np.savez(fh, chip_ids=_id_text(chip_ids), update=np.int64(update),
                     scene_names=np.char.encode(names, "utf-8"), scene_code=scene_code,
                     **arrays)


def _id_text(chip_ids: np.ndarray) -> np.ndarray:
    """uint8 ``[n]``: the ids as one UTF-8 text, NUL-separated."""
    return np.frombuffer("\0".join(np.asarray(chip_ids).astype(str).tolist()).encode(),
                         dtype=np.uint8)


def load_state(path: Path, *, update: int, chip_ids: np.ndarray
               ) -> tuple[ChipState, np.ndarray] | None:
    """The state saved after analysis ``update``, for ``chip_ids`` (object ``[C]``, sorted).

    Returns ``(state, known)``: ``[C]`` states (the empty one for a chip the file does
    not have) and bool ``[C]`` the chips it has; None if the file is missing,
    unreadable, of another analysis, or has a chip that ``chip_ids`` lacks.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["update"]) != update:
                return None
            arrays = {f.name: data[f.name] for f in fields(ChipState)
                      if f.name != "confirm_scene"}
            text = data["chip_ids"]
            names = np.char.decode(data["scene_names"], "utf-8").astype(object)
            code = data["scene_code"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # unreadable: every chip is walked again
    arrays["confirm_scene"] = np.asarray([*names, None], dtype=object)[code]  # -1: none
    saved = ChipState(**arrays)
    if np.array_equal(text, _id_text(chip_ids)):  # the same chips: no mapping
        return saved, np.ones(chip_ids.size, dtype=bool)
    ids = np.asarray(text.tobytes().decode().split("\0") if text.size else [], dtype=object)
    if ids.size != len(saved):
        return None
    at = np.searchsorted(chip_ids.astype(str), ids.astype(str))
    if ids.size and (at.max() >= chip_ids.size or (chip_ids[at].astype(str) != ids).any()):
        return None
    idx = np.full(chip_ids.size, ids.size, dtype=np.int64)  # the empty state's row
    idx[at] = np.arange(ids.size)
    known = np.zeros(chip_ids.size, dtype=bool)
    known[at] = True
    return ChipState.concat([saved, ChipState.empty(1)]).take(idx), known


def _ragged_take(values: np.ndarray, bounds: np.ndarray, chips: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The segments of ``chips`` of a ragged array, and their bounds."""
    starts, stops = bounds[chips], bounds[chips + 1]
    counts = stops - starts
    idx = ranges(starts, counts)
    return values[idx], np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(s, s + n)`` for each start ``s`` and count ``n``."""
    total = int(counts.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(total)


def _merge(a: np.ndarray, a_bounds: np.ndarray, b: np.ndarray, b_bounds: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Merge two ragged arrays sorted within each chip's segment.

    Both have the same chips (``[C + 1]`` bounds each); returns each chip's values of
    both, sorted, and their bounds.
    """
    n_b = np.diff(b_bounds)
    chip = np.repeat(np.arange(n_b.size), n_b)
    lo, hi = a_bounds[chip], a_bounds[chip + 1]
    while True:  # vectorised bisection: where each b value goes in its chip's a segment
        open_ = lo < hi
        if not open_.any():
            break
        mid = (lo + hi) // 2
        less = np.zeros(b.size, dtype=bool)
        less[open_] = a[mid[open_]] < b[open_]
        lo = np.where(open_ & less, mid + 1, lo)
        hi = np.where(open_ & ~less, mid, hi)
    merged = np.insert(a, lo, b) if b.size else a.copy()
    return merged, (a_bounds + b_bounds).astype(np.int64)


def _row_values(grid: np.ndarray, take: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``take`` entries of each row of ``grid`` (``[C, T]``) sorted, as a ragged array."""
    rows = np.where(take, grid, np.nan)
    rows.sort(axis=1)  # NaN last
    counts = take.sum(axis=1)
    values = rows[np.arange(grid.shape[1])[None, :] < counts[:, None]]
    return values, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def walk(prev: ChipState, resid: np.ndarray, present: np.ndarray, valid: np.ndarray,
         monitor: np.ndarray, ns: np.ndarray, scene: np.ndarray, fitted: np.ndarray, *,
         threshold: float, consecutive: int) -> tuple[ChipState, dict[str, np.ndarray]]:
    """Go on with later observations of some chips from their state ``prev``.

    Args:
        prev: the chips' state (``[C]``; :meth:`ChipState.empty` for whole series).
        resid: float ``[C, T]`` scaled residuals of the new observations, dates in
            order and after ``prev.last_ns`` (NaN where none).
        present: bool ``[C, T]`` observations (each chip's first ones; the rest of its
            row is padding).
        valid: bool ``[C, T]`` real observations (a finite signal).
        monitor: bool ``[C, T]`` monitoring observations.
        ns: int64 ``[C, T]`` their dates (ns since the epoch).
        scene: object ``[C, T]`` their scene ids (None where none).
        fitted: bool ``[C]`` the chips' seasonal fits exist.
        threshold: anomaly threshold on ``|residual|``.
        consecutive: anomalies in a row (same side) that make a change.

    Returns:
        ``(state, out)``: the state after the new observations and
        :func:`~geofm.analyze.change.assess`'s results over the whole series (``status``,
        ``change``, ``change_index``, ``confirm_index`` as columns of the whole series,
        ``magnitude``, ``n_observations``, ``n_monitor``) with ``anomaly`` (bool
        ``[C, T]``) for the new observations only.
    """
    from geofm.analyze.change import CHANGE, INSUFFICIENT, NO_CHANGE

    n_chips, n_t = resid.shape
    valid = np.asarray(valid, dtype=bool)
    monitor = valid & np.asarray(monitor, dtype=bool)
    n_monitor = prev.n_monitor + monitor.sum(axis=1)
    ok = fitted & (n_monitor >= consecutive)
    absres = np.abs(resid)
    anomaly = (absres > threshold) & valid & ok[:, None]
    signed = np.sign(resid.T, out=np.empty((n_t, n_chips), dtype=resid.dtype))
    signed[~(anomaly & monitor).T] = 0.0
    monitor_t = monitor.T.copy()
    run, side = prev.run.copy(), prev.side.copy()
    start, start_ns = prev.start.copy(), prev.start_ns.copy()
    change_col, confirm_col = prev.change_col.copy(), prev.confirm_col.copy()
    change_ns, confirm_ns = prev.change_ns.copy(), prev.confirm_ns.copy()
    confirm_scene = prev.confirm_scene.copy()
    first = prev.n_seen
    had_change = change_col >= 0
    for t in range(n_t):
        s_t, m_t = signed[t], monitor_t[t]
        extend = (s_t != 0) & (s_t == side) & (run > 0)
        begin = (s_t != 0) & ~extend
        run = np.where(extend, run + 1, np.where(begin, 1, np.where(m_t, 0, run)))
        start = np.where(begin, first + t, start)
        start_ns = np.where(begin, ns[:, t], start_ns)
        side = np.where(s_t != 0, s_t, np.where(m_t, 0.0, side))
        found = (run >= consecutive) & (change_col < 0)
        if found.any():
            change_col[found], confirm_col[found] = start[found], first[found] + t
            change_ns[found], confirm_ns[found] = start_ns[found], ns[found, t]
            confirm_scene[found] = scene[found, t]
    del signed, monitor_t
    change = (change_col >= 0) & ok
    found_now = (change_col >= 0) & ~had_change

    # the |residual| values of the magnitude and of the run in progress
    cols = first[:, None] + np.arange(n_t)[None, :]
    usable = monitor & np.isfinite(absres)
    # a change found now: the monitoring values from its first column on (those before
    # these observations are the values of the run it began with), else all of them
    take_new = np.where(found_now[:, None], usable & (cols >= change_col[:, None]), usable)
    new_vals, new_bounds = _row_values(absres, take_new)
    # before these: the chip's magnitude values, or (a change found now whose run began
    # earlier) its run's values, sorted
    run_len = np.diff(prev.run_bounds)
    prev_run_chip = np.repeat(np.arange(n_chips), run_len)
    order = np.lexsort((prev.run_vals, prev_run_chip))
    sources = np.concatenate([prev.after, prev.run_vals[order]])
    with_run = found_now & (change_col < first)
    starts = np.where(with_run, prev.after.size + prev.run_bounds[:-1], prev.after_bounds[:-1])
    counts = np.where(found_now, np.where(with_run, run_len, 0), np.diff(prev.after_bounds))
    old_vals = sources[ranges(starts, counts)]
    after, after_bounds = _merge(old_vals, np.concatenate([[0], np.cumsum(counts)]),
                                 new_vals, new_bounds)
    going = (change_col < 0) & (run > 0)  # a run in progress (and no change)
    keep_run = (going & (start < first))[prev_run_chip]  # it began before these
    new_run = going[:, None] & usable & (cols >= start[:, None])
    chip_grid = np.broadcast_to(np.arange(n_chips)[:, None], (n_chips, n_t))
    run_chip = np.concatenate([prev_run_chip[keep_run], chip_grid[new_run]])
    run_vals = np.concatenate([prev.run_vals[keep_run], absres[new_run]])
    order = np.argsort(run_chip, kind="stable")  # by chip, earlier values first
    run_vals = run_vals[order]
    run_bounds = np.concatenate([[0], np.cumsum(np.bincount(run_chip, minlength=n_chips))])

    n_after = np.diff(after_bounds)
    has = ok & (n_after > 0)
    magnitude = np.full(n_chips, np.nan)
    lo = after_bounds[:-1] + (n_after - 1) // 2
    hi = after_bounds[:-1] + n_after // 2
    magnitude[has] = (after[lo[has]] + after[hi[has]]) / 2
    n_valid = prev.n_valid + valid.sum(axis=1)
    present = np.asarray(present, dtype=bool)
    last = np.maximum(prev.last_ns, np.where(present, ns, np.iinfo(np.int64).min).max(
        axis=1, initial=np.iinfo(np.int64).min))
    state = ChipState(n_seen=first + present.sum(axis=1), last_ns=last,
                      n_valid=n_valid, n_monitor=n_monitor, ok=ok, run=run, side=side,
                      start=start, start_ns=start_ns, change_col=change_col,
                      confirm_col=confirm_col, change_ns=change_ns, confirm_ns=confirm_ns,
                      confirm_scene=confirm_scene, after=after, after_bounds=after_bounds,
                      run_vals=run_vals, run_bounds=run_bounds.astype(np.int64))
    status = np.where(~ok, INSUFFICIENT, np.where(change, CHANGE, NO_CHANGE)).astype(object)
    out = {"status": status, "change": change,
           "change_index": np.where(change, change_col, -1),
           "confirm_index": np.where(change, confirm_col, -1), "magnitude": magnitude,
           "n_observations": n_valid, "n_monitor": n_monitor, "anomaly": anomaly}
    return state, out
