"""Training data for the heads: chips of a run root plus label codes on each chip's grid.

A *sample* is one chip in one acquisition (a row of ``meta/<scene_id>.parquet``); a
*location* is a ``chip_id`` (the same footprint in every acquisition). Labels belong to
locations: the label GeoTIFF is resampled (nearest) from its own CRS onto each
location's native pixel grid once, and shared by all its dates. Train and validation
sets are split by location, so a place never sits on both sides.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geofm.chipfile import chip_grid
from geofm.dates import parse_utc
from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError, RasterError
from geofm.grid import PixelGrid
from geofm.layout import RunRoot

log = logging.getLogger(__name__)

#: label code meaning "no label"; never trained on, never predicted.
IGNORE = 0


@dataclass
class LabelledChips:
    """Samples (chip x date) with the labels of their locations.

    Attributes:
        root: the run root the chips live in.
        samples: a row per sample: ``chip_id``, ``scene_id``, ``date``, ``sensor``,
            ``chip_path`` (relative to ``root``), ``epsg``, ``lat``, ``lon`` (WGS84
            footprint centroid, degrees) and ``loc`` (index into ``locations``).
        locations: chip ids, sorted.
        grids: the native :class:`~geofm.grid.PixelGrid` of each location.
        labels: uint8/uint16 [n_locations, H, W] label codes on each location's grid
            (0 = no label).
        bands: band names the chips are read with.
        n_classes: label codes run ``1..n_classes``.
        class_names: a name per code.
    """

    root: Path
    samples: pd.DataFrame
    locations: list[str]
    grids: list[PixelGrid]
    labels: np.ndarray
    bands: tuple[str, ...]
    n_classes: int
    class_names: list[str] = field(default_factory=list)

    @property
    def sensor(self) -> str:
        """Sensor of the samples (one per run root)."""
        return str(self.samples["sensor"].iloc[0])

    def labelled_locations(self) -> list[str]:
        """Chip ids of the locations with at least one labelled pixel, sorted.

        The train/validation split is drawn among these: a chip whose footprint has no
        label cannot teach or score the head (it is still encoded, and predicted).
        """
        has = (self.labels != IGNORE).reshape(len(self.locations), -1).any(axis=1)
        return [c for c, ok in zip(self.locations, has, strict=True) if ok]

    def chip_labels(self) -> np.ndarray:
        """Chip-level labels [n_locations]: the majority non-zero code (0 if none)."""
        out = np.zeros(len(self.locations), dtype=np.int64)
        for i, lab in enumerate(self.labels):
            counts = np.bincount(lab.ravel().astype(np.int64), minlength=self.n_classes + 1)
            counts[IGNORE] = 0
            out[i] = int(counts.argmax()) if counts.any() else IGNORE
        return out


def read_chip_table(root: str | os.PathLike[str] | RunRoot, *,
                    date_window_days: float | None = None,
                    label_date: str | pd.Timestamp | None = None) -> pd.DataFrame:
    """Valid chips of a run root, a row per chip and acquisition, sorted by chip and date.

    Args:
        root: run root written by ``geofm chip``.
        date_window_days: keep only acquisitions within this many days of ``label_date``.
        label_date: the date the labels describe (needed with ``date_window_days``).

    Returns:
        DataFrame with ``chip_id``, ``scene_id``, ``date`` (UTC), ``sensor``, ``bands``,
        ``chip_path``, ``epsg``, ``minx..maxy`` (native CRS), ``lat``, ``lon``.

    Raises:
        GeofmFileNotFoundError: the run root has no chip metadata.
        GeofmValueError: no chip is left after the date window, or a bad window.
    """
    from geofm.model.inputs import footprint_centres
    from geofm.tables import read_geoframe

    run = RunRoot.of(root)
    scene_ids = run.scene_ids(run.meta_dir)
    if not scene_ids:
        raise GeofmFileNotFoundError(f"run root {run.path} has no chip metadata in "
                                     f"{run.meta_dir}; run `geofm chip --out {run.path}` first")
    frames = []
    for scene_id in scene_ids:
        gdf = read_geoframe(run.meta_path(scene_id), made_by="chip")
        gdf = gdf[gdf["valid"].astype(bool)]
        if len(gdf):
            frame = pd.DataFrame(gdf.drop(columns="geometry"))
            frame["lat"], frame["lon"] = footprint_centres(gdf.geometry.to_numpy())
            frames.append(frame)
    if not frames:
        raise GeofmValueError(f"run root {run.path} has no valid chips; re-chip with looser "
                              "--max-cloud/--max-nodata")
    table = pd.concat(frames, ignore_index=True)
    table["date"] = pd.to_datetime(table["date"], utc=True)
    if date_window_days is not None:
        if label_date is None:
            raise GeofmValueError("a date window needs the label date; pass --label-date "
                                  "YYYY-MM-DD with --date-window-days")
        centre = parse_utc(label_date, name="label_date", hint="pass --label-date YYYY-MM-DD")
        keep = (table["date"] - centre).abs() <= pd.Timedelta(days=float(date_window_days))
        if not keep.any():
            raise GeofmValueError(
                f"no chip in {run.path} was acquired within {date_window_days} days of the "
                f"label date {centre.date()} (acquisitions run {table['date'].min().date()} .. "
                f"{table['date'].max().date()}); widen --date-window-days")
        table = table[keep]
    return table.sort_values(["chip_id", "date", "scene_id"]).reset_index(drop=True)


def _check_label_files(labels: Sequence[str | os.PathLike[str]]) -> list[Path]:
    paths = [Path(p) for p in labels]
    if not paths:
        raise GeofmValueError("no label raster given; pass --labels LABELS.tif")
    for path in paths:
        if not path.is_file():
            raise GeofmFileNotFoundError(f"label raster {path} does not exist; pass the "
                                         "GeoTIFF of class codes with --labels")
    return paths


def open_label_raster(path: str | os.PathLike[str]) -> Any:
    """Open a label GeoTIFF with rasterio (use as a context manager), checking its CRS.

    Returns:
        The open ``rasterio`` dataset.

    Raises:
        RasterError: the file is not a raster GDAL can read (not a TIFF, truncated), or
            it has no CRS (so it cannot be placed on the chips).
    """
    import rasterio
    from rasterio.errors import RasterioError

    try:
        src = rasterio.open(path)
    except RasterioError as exc:
        raise RasterError(f"label raster {path} cannot be read as a raster ({exc}); pass a "
                          "GeoTIFF of class codes with --labels") from None
    if src.crs is None:
        src.close()
        raise RasterError(f"label raster {path} has no CRS, so it cannot be placed on the "
                          "chips; write one into it (e.g. `gdal_edit.py -a_srs EPSG:32633 "
                          f"{path}`) or pass a georeferenced GeoTIFF with --labels")
    return src


def _check_overlap(path: Path, src: Any, table: pd.DataFrame) -> None:
    """Raise if the raster's footprint misses every chip (compared in WGS84)."""
    from rasterio.warp import transform_bounds

    west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    lon0 = table["lon"].to_numpy()
    lat0 = table["lat"].to_numpy()
    chips = (float(lon0.min()), float(lat0.min()), float(lon0.max()), float(lat0.max()))
    # chip extents from the native bounds would need one transform per CRS; the
    # footprint centres plus the raster's WGS84 box is enough to tell "misses all".
    inside = (lon0 >= west) & (lon0 <= east) & (lat0 >= south) & (lat0 <= north)
    if not inside.any():
        b = src.bounds
        raise GeofmValueError(
            f"label raster {path} does not overlap the chips: its bounds are "
            f"({b.left:.1f}, {b.bottom:.1f}, {b.right:.1f}, {b.top:.1f}) in {src.crs} "
            f"(lon/lat {west:.4f}, {south:.4f}, {east:.4f}, {north:.4f}), the chips' "
            f"centres span lon/lat ({chips[0]:.4f}, {chips[1]:.4f}, {chips[2]:.4f}, "
            f"{chips[3]:.4f}); pass the label raster of this area")


def align_labels(labels: Sequence[str | os.PathLike[str]], grid: PixelGrid) -> np.ndarray:
    """Resample label rasters (nearest) onto one chip grid.

    Args:
        labels: GeoTIFFs of class codes, any CRS (0 or the raster's nodata = no label).
            Where several cover a pixel the first one with a label wins.
        grid: the chip's native grid (:func:`geofm.chipfile.chip_grid`).

    Returns:
        int64 [H, W] label codes (0 = no label).

    Raises:
        RasterError: a label file is not a readable raster or has no CRS.
    """
    import rasterio
    from rasterio.warp import Resampling, reproject

    out = np.zeros((grid.height, grid.width), dtype=np.int64)
    for path in labels:
        with open_label_raster(path) as src:
            dst = np.zeros((grid.height, grid.width), dtype=np.float64)
            nodata = src.nodata if src.nodata is not None else IGNORE
            reproject(rasterio.band(src, 1), dst, src_nodata=nodata, dst_nodata=IGNORE,
                      dst_transform=grid.transform, dst_crs=f"EPSG:{grid.epsg}",
                      resampling=Resampling.nearest)
        codes = np.rint(dst).astype(np.int64)
        codes[(codes < 0) | (dst == nodata)] = IGNORE
        fill = out == IGNORE
        out[fill] = codes[fill]
    return out


def load_labelled_chips(root: str | os.PathLike[str] | RunRoot,
                        labels: Sequence[str | os.PathLike[str]], *,
                        n_classes: int | None = None, class_names: Sequence[str] | None = None,
                        date_window_days: float | None = None,
                        label_date: str | None = None,
                        bands: Sequence[str] | None = None) -> LabelledChips:
    """Chips of a run root with the labels of their footprints.

    Args:
        root: run root written by ``geofm chip``.
        labels: label GeoTIFFs (class codes, 0 = no label), any CRS.
        n_classes: number of classes; default: the largest code found (or the number of
            ``class_names``).
        class_names: a name per code ``1..n_classes``; default: the rasters' ``class_<code>``
            tags, else ``class_<code>``.
        date_window_days: keep acquisitions within this many days of ``label_date``.
        label_date: date the labels describe.
        bands: bands to read; default: the chips' bands.

    Raises:
        GeofmFileNotFoundError: a label file or the chip metadata is missing.
        RasterError: a label file is not a readable raster or has no CRS.
        GeofmValueError: a raster misses the chips, no chip pixel is labelled, or a code
            exceeds ``n_classes``.
    """
    run = RunRoot.of(root)
    paths = _check_label_files(labels)
    table = read_chip_table(run, date_window_days=date_window_days, label_date=label_date)
    tag_names: dict[int, str] = {}
    for path in paths:
        with open_label_raster(path) as src:
            _check_overlap(path, src, table)
            for key, value in src.tags().items():  # class_<code> tags, as predict writes
                if key.startswith("class_") and key[6:].isdigit():
                    tag_names.setdefault(int(key[6:]), value)
    locations = sorted(table["chip_id"].unique())
    first = table.drop_duplicates("chip_id").set_index("chip_id")
    grids = [chip_grid(run.path / first.loc[c, "chip_path"]) for c in locations]
    per_raster = [np.stack([align_labels([p], g) for g in grids]) for p in paths]
    stacked = per_raster[0].copy()
    for extra in per_raster[1:]:
        fill = stacked == IGNORE
        stacked[fill] = extra[fill]
    if class_names and n_classes is None:
        n_classes = len(class_names)
    for path, arr in zip(paths, per_raster, strict=True):
        top = int(arr.max())
        if n_classes is not None and top > n_classes:
            raise GeofmValueError(
                f"label raster {path} has class code {top} but the head has {n_classes} "
                f"classes (codes 1..{n_classes}); pass matching --class-names/--n-classes "
                "or recode the raster")
    if not (stacked != IGNORE).any():
        raise GeofmValueError(
            f"label raster(s) {', '.join(map(str, paths))} overlap the chips' area but label "
            f"none of their pixels (all 0/nodata on {len(grids)} chip grids); check the "
            "raster's nodata value and CRS")
    n = int(n_classes if n_classes is not None else stacked.max())
    names = (list(class_names) if class_names else
             [tag_names.get(k, f"class_{k}") for k in range(1, n + 1)])
    if len(names) != n:
        raise GeofmValueError(f"{len(names)} class names given for {n} classes; give one "
                              "name per code 1..n")
    dtype = np.uint8 if n < 256 else np.uint16
    index = {c: i for i, c in enumerate(locations)}
    table["loc"] = table["chip_id"].map(index).astype(np.int64)
    band_list = tuple(bands) if bands else tuple(str(table["bands"].iloc[0]).split(","))
    return LabelledChips(root=run.path, samples=table, locations=locations, grids=grids,
                         labels=stacked.astype(dtype), bands=band_list, n_classes=n,
                         class_names=names)
