"""``geofm report``: generative answers over the changed chips of a run.

The result set is ``analysis/changes.parquet`` (``geofm analyze``) restricted to chips
whose ``status`` is ``change`` (``--all``: every chip), largest ``magnitude`` first.
Each chip carries the acquisition that shows the change: the first one on or after its
``change_date`` (the latest one when it has none), with that acquisition's
``scene_id``, ``date``, ``cloud_fraction`` and ``thumbnail_path`` (from
``consolidated.parquet``, or the chip metadata when the run is not indexed).

Columns (and template placeholders): ``chip_id scene_id date cloud_fraction
thumbnail_path change_status change change_date magnitude n_observations`` plus
``rank``, ``lon``, ``lat``. Output formats and answer options are those of
``geofm search`` (:mod:`geofm.generative.cli`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError
from geofm.layout import RunRoot

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = ["REPORT_COLUMNS", "changed_chips", "add_arguments", "run_cli", "main"]

REPORT_COLUMNS = ["chip_id", "scene_id", "date", "cloud_fraction", "thumbnail_path",
                  "change_status", "change", "change_date", "magnitude", "n_observations"]
_ACQ_COLUMNS = ["chip_id", "scene_id", "date", "cloud_fraction", "thumbnail_path"]


def _acquisitions(root: RunRoot) -> object:
    """Every usable acquisition: ``chip_id scene_id date cloud_fraction thumbnail_path``."""
    import pandas as pd

    if root.consolidated_path.exists():
        frame = pd.read_parquet(root.consolidated_path, columns=_ACQ_COLUMNS)
    else:
        parts = [pd.read_parquet(root.meta_path(s), columns=[*_ACQ_COLUMNS, "valid"])
                 for s in root.scene_ids(root.meta_dir)]
        frame = pd.concat(parts, ignore_index=True) if parts else \
            pd.DataFrame(columns=[*_ACQ_COLUMNS, "valid"])
        frame = frame[frame["valid"].astype(bool)].drop(columns="valid")
    frame["date"] = pd.to_datetime(frame["date"], utc=True)
    return frame


def changed_chips(root: str | os.PathLike[str] | RunRoot, *, include_all: bool = False,
                  limit: int | None = None) -> gpd.GeoDataFrame:
    """The changed chips of a run as result rows (see the module docstring).

    Args:
        root: run root after ``geofm analyze``.
        include_all: every chip, not only ``status == "change"``.
        limit: keep the ``limit`` largest-magnitude chips.

    Returns:
        GeoDataFrame (EPSG:4326) with :data:`REPORT_COLUMNS` and ``geometry``.

    Raises:
        GeofmFileNotFoundError: no ``analysis/changes.parquet``.
    """
    import geopandas as gpd
    import pandas as pd

    root = RunRoot.of(root)
    path = root.analysis_dir / "changes.parquet"
    if not path.exists():
        raise GeofmFileNotFoundError(f"no change table {path}; run `geofm analyze --root "
                                     f"{root.path}` first")
    if limit is not None and limit < 1:
        raise GeofmValueError(f"--limit must be >= 1, got {limit}")
    changes = gpd.read_parquet(path).to_crs(4326)
    if not include_all:
        changes = changes[changes["status"] == "change"]
    changes = changes.rename(columns={"status": "change_status"})
    changes["change_date"] = pd.to_datetime(changes["change_date"], utc=True)
    changes = changes.sort_values("magnitude", ascending=False, kind="stable", na_position="last")
    if limit is not None:
        changes = changes.head(limit)
    acq = _acquisitions(root)
    acq = acq[acq["chip_id"].isin(set(changes["chip_id"]))].sort_values("date")  # type: ignore[attr-defined,index]
    picked = []
    for chip_id, when in zip(changes["chip_id"], changes["change_date"], strict=True):
        mine = acq[acq["chip_id"] == chip_id]
        after = mine[mine["date"] >= when] if not pd.isna(when) else mine.iloc[0:0]
        row = after.iloc[0] if len(after) else mine.iloc[-1] if len(mine) else None
        picked.append({c: (row[c] if row is not None else None) for c in _ACQ_COLUMNS[1:]})
    extra = pd.DataFrame(picked, index=changes.index, columns=_ACQ_COLUMNS[1:])
    frame = pd.concat([changes.drop(columns=[c for c in _ACQ_COLUMNS[1:] if c in changes]),
                       extra], axis=1)
    frame["date"] = pd.to_datetime(frame["date"], utc=True)
    for col in REPORT_COLUMNS:
        if col not in frame.columns:
            frame[col] = None
    return gpd.GeoDataFrame(frame[[*REPORT_COLUMNS, "geometry"]].reset_index(drop=True),
                            geometry="geometry", crs=4326)


def cli_options() -> dict[str, Any]:
    """``geofm report``'s options: :func:`changed_chips`'s signature plus what it cannot say.

    Returns:
        ``{name: geofm.options.Option}``.
    """
    from geofm.options import Cli, declare

    return declare(changed_chips, {
        "root": Cli(required=True, help="run root after `geofm analyze`"),
        "include_all": Cli(flags=("--all",),
                           help="every analysed chip, not only the changed ones"),
        "limit": Cli(metavar="N", help="the N chips with the largest change magnitude"),
    })


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``geofm report`` options to ``parser`` (from :func:`cli_options`)."""
    from geofm.generative.cli import add_hit_arguments
    from geofm.options import add_arguments as add_options

    add_options(parser, cli_options().values())
    add_hit_arguments(parser)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``geofm report`` from parsed arguments; return the exit code."""
    from geofm.generative.cli import deliver, prepare, usage_error
    from geofm.options import library_kwargs

    try:
        generation = prepare(args, REPORT_COLUMNS)
    except GeofmValueError as exc:
        return usage_error(exc)
    return deliver(changed_chips(**library_kwargs(args, cli_options().values())), generation,
                   args)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m geofm.generative.report`` style entry point."""
    from geofm.cli import stage_main

    return stage_main("report", argv)
