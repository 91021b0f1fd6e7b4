"""``analysis/footprints.parquet``: each analysed chip's footprint, as WKB and as GeoJSON.

A chip's footprint and native grid never change, but ``changes.parquet`` and
``change_map.geojson`` carry them for every chip on every update. The analysis that
first sees a set of chips (the reference, or an update that adds chips) gathers them
from ``meta/`` and writes this GeoParquet file (WGS84) with one row per chip, in
``chip_id`` order: ``chip_id``, ``geometry`` (WKB; null where the metadata has none),
``geojson`` (the geometry's GeoJSON text), and the native grid ``tile``, ``epsg``,
``minx miny maxx maxy`` (metres in ``epsg``; null where unknown). An update of the same
chips reads it instead of ``meta/``, decodes no geometry and encodes none: the WKB, the
GeoJSON text and the GeoParquet metadata are written out as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from geofm.tables import read_schema, read_table

if TYPE_CHECKING:
    from pathlib import Path

    from geofm.layout import RunRoot
    from geofm.manifest import StageRecord

log = logging.getLogger(__name__)

#: Per-chip columns of the native grid (first ``meta/`` row of the chip).
GRID_COLUMNS = ("tile", "epsg", "minx", "miny", "maxx", "maxy")

@dataclass
class Footprints:
    """Per chip (rows in ``chip_ids`` order): footprint and native grid.

    Attributes:
        table: Arrow columns ``chip_id`` (string), ``geometry`` (binary WKB, WGS84),
            ``geojson`` (string), ``tile`` (string), ``epsg`` (int32), ``minx miny maxx
            maxy`` (float64, native CRS); nulls where unknown.
        geo: the GeoParquet ``geo`` metadata of ``geometry`` (JSON bytes), None until
            the table has been written.
        stored: the table is ``analysis/footprints.parquet`` as published (no rewrite).
    """

    table: pa.Table
    geo: bytes | None = None
    stored: bool = False
    _shapes: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def build(cls, chip_ids: np.ndarray, geometry: np.ndarray,
              grid: dict[str, Any]) -> Footprints:
        """Footprints of ``chip_ids`` (``[C]``) from their shapes and native grid.

        ``geometry``: shapely, object ``[C]`` (None where unknown); ``grid``:
        :data:`GRID_COLUMNS` -> ``[C]`` values.
        """
        import shapely

        geometry = np.asarray(geometry, dtype=object)
        numbers = {c: pd.to_numeric(pd.Series(np.asarray(grid[c], dtype=object)),
                                    errors="coerce").to_numpy(np.float64)
                   for c in ("epsg", "minx", "miny", "maxx", "maxy")}
        epsg = numbers.pop("epsg")
        table = pa.table({
            "chip_id": pa.array(np.asarray(chip_ids).astype(str).tolist(), pa.string()),
            "geometry": pa.array(shapely.to_wkb(geometry).tolist(), pa.binary()),
            "geojson": pa.array(shapely.to_geojson(geometry).tolist(), pa.string()),
            "tile": pa.array([None if pd.isna(t) else str(t)
                              for t in np.asarray(grid["tile"], dtype=object).tolist()],
                             pa.string()),
            "epsg": pa.array(np.nan_to_num(epsg).astype(np.int32), pa.int32(),
                             mask=np.isnan(epsg)),
            **{c: pa.array(v, pa.float64()) for c, v in numbers.items()}})
        return cls(table=table, _shapes=geometry)

    def __len__(self) -> int:
        return self.table.num_rows

    def geometry(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Shapely polygons (object ``[n]``, None where unknown) of ``rows`` (None: all)."""
        import shapely

        if self._shapes is not None:
            return self._shapes if rows is None else self._shapes[rows]
        wkb = self.table.column("geometry")
        if rows is not None:
            wkb = wkb.take(pa.array(np.asarray(rows, dtype=np.int64)))
        shapes = np.asarray(shapely.from_wkb(wkb.to_numpy(zero_copy_only=False)), dtype=object)
        if rows is None:
            self._shapes = shapes
        return shapes

    def frame(self, *, geometry: bool = False) -> pd.DataFrame:
        """``chip_id`` and the native grid (``epsg`` nullable Int32), ``geometry`` if asked."""
        out = pd.DataFrame({"chip_id": self.table.column("chip_id").to_numpy(
            zero_copy_only=False).astype(object)})
        out["tile"] = pd.Series(self.table.column("tile").to_numpy(zero_copy_only=False),
                                dtype=object)
        out["epsg"] = pd.array(self.table.column("epsg").to_pandas(), dtype="Int32")
        for c in ("minx", "miny", "maxx", "maxy"):
            out[c] = self.table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
        if geometry:
            out["geometry"] = pd.Series(self.geometry(), dtype=object)
        return out

    def write(self, path: Path) -> None:
        """Write the table as GeoParquet (WGS84) to ``path`` and keep its ``geo`` metadata."""
        import geopandas as gpd
        import pyarrow.parquet as pq

        frame = self.frame()
        frame["geojson"] = self.table.column("geojson").to_numpy(zero_copy_only=False)
        gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(list(self.geometry()), crs="EPSG:4326")
                         ).to_parquet(path, index=False)
        self.geo = pq.read_schema(path).metadata[b"geo"]


def load(rr: RunRoot) -> Footprints | None:
    """The published footprints (None when the file is missing or unreadable).

    A root analysed before this file existed gets them from ``changes.parquet`` (WKB and
    grid, no GeoJSON text): enough to :func:`gather` the footprints of its chips again.
    """
    from geofm.exceptions import GeofmError

    path = rr.footprints_path
    try:
        if path.is_file():
            schema = read_schema(path, made_by="analyze")
            table = read_table(path, made_by="analyze",
                               columns=["chip_id", "geometry", "geojson", *GRID_COLUMNS])
            geo = (schema.metadata or {}).get(b"geo")
            return Footprints(table=table.combine_chunks(), geo=geo, stored=geo is not None)
        if rr.changes_path.is_file():
            names = read_schema(rr.changes_path, made_by="analyze").names
            table = read_table(rr.changes_path, made_by="analyze", columns=[
                "chip_id", "geometry", *(c for c in GRID_COLUMNS if c in names)])
            for c, kind in (("tile", pa.string()), ("epsg", pa.int32()),
                            *((c, pa.float64()) for c in ("minx", "miny", "maxx", "maxy"))):
                if c not in names:
                    table = table.append_column(c, pa.nulls(table.num_rows, kind))
            return Footprints(table=table.combine_chunks())
    except GeofmError as exc:
        log.warning("%s; the footprints are gathered again from meta/", exc)
    return None


def covers(footprints: Footprints | None, chip_ids: np.ndarray) -> bool:
    """True if ``footprints`` are exactly those of ``chip_ids`` (object ``[C]``, sorted)."""
    if footprints is None or not footprints.stored or len(footprints) != chip_ids.size:
        return False
    ids = footprints.table.column("chip_id").to_numpy(zero_copy_only=False)
    return bool((ids == chip_ids.astype(str)).all())


def gather(rr: RunRoot, chip_ids: np.ndarray, record: StageRecord, *,
           known: Footprints | None = None) -> Footprints:
    """The footprints of ``chip_ids`` (object ``[C]``, sorted), gathered.

    From ``known`` where it has the chip, else from the first ``meta/`` row of the chip.
    Chips without a footprint get none (a warning, and ``record.counts
    ["chips_without_footprint"]``).
    """
    import shapely

    n = chip_ids.size
    wanted = pd.Index(chip_ids.astype(str))
    # object columns filled by position (no per-chip Python loop)
    cols: dict[str, np.ndarray] = {c: np.full(n, None, dtype=object)
                                   for c in ("geometry", *GRID_COLUMNS)}
    missing = np.ones(n, dtype=bool)
    if known is not None and len(known):
        old = known.frame(geometry=True)
        pos = wanted.get_indexer(old["chip_id"].astype(str))
        hit = np.flatnonzero(pos >= 0)
        for col in cols:
            cols[col][pos[hit]] = old[col].to_numpy(dtype=object)[hit]
        missing[pos[hit]] = False
    for scene in rr.scene_ids(rr.meta_dir):
        if not missing.any():
            break
        path = rr.meta_path(scene)
        names = read_schema(path, made_by="chip").names
        read = ["chip_id", "geometry", *(c for c in GRID_COLUMNS if c in names)]
        table = read_table(path, made_by="chip", columns=read)
        ids = table.column("chip_id").to_numpy(zero_copy_only=False)
        pos = wanted.get_indexer(ids)
        new = np.flatnonzero(pos >= 0)
        new = new[missing[pos[new]]]
        if new.size:
            taken = table.take(pa.array(new))
            for col in read[1:]:
                cols[col][pos[new]] = np.asarray(taken.column(col).to_pylist(), dtype=object)
            missing[pos[new]] = False
    geometry = cols["geometry"]
    no_geom = np.asarray(pd.isna(geometry), dtype=bool)
    if no_geom.any():
        log.warning("%d chip(s) have no footprint in %s (e.g. %s); they get no geometry",
                    int(no_geom.sum()), rr.meta_dir, chip_ids[no_geom][:3].tolist())
        record.counts["chips_without_footprint"] = int(no_geom.sum())
    geometry[no_geom] = None
    raw = np.flatnonzero(~shapely.is_geometry(geometry) & ~no_geom)  # WKB bytes
    if raw.size:  # WKB from meta/: decoded in one call
        geometry[raw] = shapely.from_wkb(geometry[raw].tolist())
    return Footprints.build(chip_ids, geometry, {c: cols[c] for c in GRID_COLUMNS})
