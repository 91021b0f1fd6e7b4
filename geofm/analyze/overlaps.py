"""Several tiles as one region: chips of different tiles that cover the same ground.

Neighbouring MGRS tiles overlap (about 10 km), so the same ground is chipped twice, with
different ids (and, across UTM zones, in different CRSs). :func:`find_overlaps` pairs
every chip with the chips of *other* tiles whose WGS84 footprints cover at least
``min_share`` of the smaller of the two; the pairs are written to
``analysis/overlaps.parquet`` by ``geofm analyze`` (columns ``chip_id``,
``other_chip_id``, ``tile``, ``other_tile``, ``share``; each pair once per direction).

:func:`duplicate_changes` uses them so a clearing seen by two tiles is reported once:
of two overlapping changed chips of different tiles whose change dates are at most
``max_days`` apart, the one with the larger ``(tile, chip_id)`` is a duplicate of the
other (``duplicate_of`` in ``changes.parquet``, the alerts and the change rasters).
Search uses the same pairs to return one hit per place (``geofm search --distinct``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

#: Smallest shared fraction of the smaller footprint for two chips to overlap.
MIN_SHARE = 0.1
#: Largest gap between the change dates of two overlapping chips that report one change.
MAX_DAYS = 31


def find_overlaps(meta: pd.DataFrame, *, min_share: float = MIN_SHARE) -> pd.DataFrame:
    """Pairs of chips of different tiles whose footprints overlap.

    Args:
        meta: a row per chip with ``chip_id``, ``tile`` and ``geometry`` (WGS84 shapely
            polygons; None where unknown).
        min_share: least intersection area over the smaller footprint's area (areas in
            degrees², fine for a ratio at chip scale).

    Returns:
        DataFrame ``chip_id``, ``other_chip_id``, ``tile``, ``other_tile``, ``share``
        (float32), both directions of each pair, sorted by ``chip_id``.
    """
    import shapely

    empty = pd.DataFrame({"chip_id": pd.Series([], dtype=str),
                          "other_chip_id": pd.Series([], dtype=str),
                          "tile": pd.Series([], dtype=str),
                          "other_tile": pd.Series([], dtype=str),
                          "share": pd.Series([], dtype=np.float32)})
    tiles = meta["tile"].to_numpy(dtype=object)
    geoms = np.asarray(list(meta["geometry"]), dtype=object)
    known = np.array([g is not None and t is not None and not pd.isna(t)
                      for g, t in zip(geoms, tiles, strict=True)], dtype=bool)
    if len({t for t, k in zip(tiles, known, strict=True) if k}) < 2:
        return empty
    idx = np.flatnonzero(known)
    tree = shapely.STRtree(geoms[idx])
    left, right = tree.query(geoms[idx], predicate="intersects")
    a, b = idx[left], idx[right]
    other = tiles[a] != tiles[b]
    a, b = a[other], b[other]
    if not a.size:
        return empty
    inter = shapely.area(shapely.intersection(geoms[a], geoms[b]))
    smaller = np.minimum(shapely.area(geoms[a]), shapely.area(geoms[b]))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(smaller > 0, inter / smaller, 0.0)
    keep = share >= min_share
    ids = meta["chip_id"].to_numpy(dtype=object)
    out = pd.DataFrame({"chip_id": ids[a[keep]].astype(str),
                        "other_chip_id": ids[b[keep]].astype(str),
                        "tile": tiles[a[keep]].astype(str),
                        "other_tile": tiles[b[keep]].astype(str),
                        "share": share[keep].astype(np.float32)})
    return out.sort_values(["chip_id", "other_chip_id"], kind="stable").reset_index(drop=True)


def duplicate_changes(chip_ids: np.ndarray, change: np.ndarray, change_ns: np.ndarray,
                      meta: pd.DataFrame, *, overlaps: pd.DataFrame | None = None,
                      max_days: float = MAX_DAYS) -> np.ndarray:
    """Per chip, the chip of another tile that already reports the same change.

    Args:
        chip_ids: str ``[C]``.
        change: bool ``[C]`` chips with a confirmed change.
        change_ns: int64 ``[C]`` change dates, ns since the epoch (UTC).
        meta: per chip ``chip_id``, ``tile``, ``geometry`` (rows in ``chip_ids`` order).
        overlaps: pairs from :func:`find_overlaps` (computed from ``meta`` if None).
        max_days: largest change-date gap of one change seen by two chips.

    Returns:
        object ``[C]``: the chip id it duplicates (the overlapping changed chip with the
        smallest ``(tile, chip_id)``, itself not a duplicate when possible), or None.
    """
    out: np.ndarray = np.full(chip_ids.size, None, dtype=object)
    if not change.any():
        return out
    pairs = find_overlaps(meta) if overlaps is None else overlaps
    if not len(pairs):
        return out
    pos = pd.Index(np.asarray(chip_ids, dtype=str))
    a = pos.get_indexer(pairs["chip_id"])
    b = pos.get_indexer(pairs["other_chip_id"])
    ok = (a >= 0) & (b >= 0)
    a, b = a[ok], b[ok]
    both = change[a] & change[b]
    a, b = a[both], b[both]
    close = np.abs(change_ns[a] - change_ns[b]) <= max_days * 86_400 * 10**9
    a, b = a[close], b[close]
    tiles = meta["tile"].to_numpy(dtype=object).astype(str)
    key = [(tiles[i], str(chip_ids[i])) for i in range(chip_ids.size)]
    # a duplicates b when b comes first; a chip duplicates its first-ordered partner.
    best: dict[int, int] = {}
    for i, j in zip(a.tolist(), b.tolist(), strict=True):
        if key[j] < key[i] and (i not in best or key[j] < key[best[i]]):
            best[i] = j
    for i, j in best.items():
        root = j
        seen = {i}
        while root in best and root not in seen:  # follow to a chip that is not a duplicate
            seen.add(root)
            root = best[root]
        out[i] = str(chip_ids[root])
    return out


def overlap_groups(overlaps: pd.DataFrame) -> dict[str, str]:
    """Chip id -> a representative chip id of its place (for one search hit per place).

    Chips linked by overlaps (across tiles) share the representative with the smallest
    ``(tile, chip_id)`` among their direct partners and themselves; chips without
    overlaps are absent (they represent themselves).
    """
    rep: dict[str, tuple[str, str]] = {}
    for row in overlaps.itertuples(index=False):
        mine = (str(row.tile), str(row.chip_id))
        theirs = (str(row.other_tile), str(row.other_chip_id))
        best = min(rep.get(row.chip_id, mine), theirs, mine)
        rep[row.chip_id] = best
    return {k: v[1] for k, v in rep.items()}


def place_of(root: Any) -> dict[str, str]:
    """Chip id -> representative chip of its place, from ``analysis/overlaps.parquet``.

    Empty when the run has no overlaps (one tile, or not analysed yet): every chip is
    then its own place. Used by ``search(..., distinct=True)``.
    """
    from geofm.layout import RunRoot

    pairs = read_overlaps(RunRoot.of(root).overlaps_path)
    return {} if pairs is None or not len(pairs) else overlap_groups(pairs)


def read_overlaps(path: Any) -> pd.DataFrame | None:
    """``analysis/overlaps.parquet`` as a DataFrame (None if absent)."""
    from pathlib import Path

    from geofm.tables import read_table

    if not Path(path).is_file():
        return None
    return read_table(Path(path), made_by="analyze").to_pandas()
