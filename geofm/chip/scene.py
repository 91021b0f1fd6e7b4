"""Chip one scene: read strips of chips, screen, harmonise, write chips/thumbnails/meta."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geofm.chip.grid import chip_id, footprints_wgs84, load_aoi
from geofm.chip.harmonise import Harmonisation
from geofm.chip.items import Scene
from geofm.chip.read import read_to_grid
from geofm.chip.screen import cloud_mask, fractions, is_valid, nodata_mask
from geofm.chip.thumbs import rgb_indices, to_rgb8, write_png
from geofm.chipfile import write_chip
from geofm.exceptions import GeofmError, ItemError, RasterError
from geofm.grid import Cell, ChipGrid, PixelGrid
from geofm.layout import RunRoot
from geofm.sensors import S2_BOA_ADD_OFFSET, Band, get_sensor

log = logging.getLogger(__name__)

#: GDAL block cache per worker process, MB: enough for a strip of 512-px COG blocks.
GDAL_CACHE_MB = 256

#: Chip writes that may wait for the writer thread (each holds a view of its strip).
WRITE_QUEUE = 64


@dataclass(frozen=True)
class ChipOptions:
    """The run's chip options (picklable, for worker processes)."""

    root: str
    chip_size: int
    bands: tuple[str, ...]
    aoi: str | None
    max_cloud: float
    max_nodata: float
    grid_origin: tuple[float, float] | None
    cloud_mask: bool
    stretch: tuple[float, float]
    snow_is_cloud: bool = False


@dataclass
class SceneResult:
    """What one scene produced (or why it failed)."""

    scene_id: str
    chips: int = 0
    valid: int = 0
    error: str | None = None
    asset: str | None = None
    path: str | None = None
    harmonisation: str = ""
    harmonisation_detail: dict[str, Any] = field(default_factory=dict)
    assets: dict[str, str] = field(default_factory=dict)


#: Longest edge, pixels, of the decimated read the offset data check uses (COG overviews).
DATA_CHECK_PIXELS = 256


def _open(scene: Scene, key: str):  # type: ignore[no-untyped-def]
    import rasterio
    from rasterio.errors import RasterioIOError

    from geofm.io import open_failure, readable_href

    href = readable_href(scene.href(key))
    try:
        return rasterio.open(href)
    except RasterioIOError as exc:
        reason, why = open_failure(exc, href)
        raise RasterError(f"item {scene.scene_id!r}, asset {key!r}: {href}: {why}",
                          path=href, reason=reason, item=scene.scene_id, asset=key) from None


def _check_crs(scene: Scene, key: str, src) -> int:  # type: ignore[no-untyped-def]
    epsg = src.crs.to_epsg() if src.crs is not None else None
    if epsg is None and scene.epsg is None:
        raise ItemError(f"item {scene.scene_id!r}, asset {key!r}: {src.name} has no CRS and "
                        "the item has no proj:epsg / proj:code; add proj:code to the item or "
                        "write the CRS into the COG", item=scene.scene_id, path=src.name,
                        field="properties.proj:code", asset=key)
    if epsg is not None and scene.epsg is not None and epsg != scene.epsg:
        raise ItemError(f"item {scene.scene_id!r}, asset {key!r}: raster CRS EPSG:{epsg} "
                        f"differs from the item's proj:epsg {scene.epsg}; fix the item",
                        item=scene.scene_id, path=src.name, field="properties.proj:epsg",
                        asset=key)
    return int(epsg if epsg is not None else scene.epsg)  # type: ignore[arg-type]


def chip_scene(scene: Scene, opts: ChipOptions) -> SceneResult:
    """Chip one scene; failures are returned in the result, not raised.

    Writes ``chips/<scene>/<chip>.nc`` and ``thumbnails/<scene>/<chip>.png`` for valid
    chips, then ``meta/<scene>.parquet`` (last, atomically) with every chip.
    """
    import rasterio
    from rasterio.errors import RasterioError

    result = SceneResult(scene.scene_id, harmonisation=scene.harmonisation.note,
                         harmonisation_detail=scene.harmonisation.record())
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            _chip_scene(scene, opts, result)
    except GeofmError as exc:  # missing asset/file, no CRS, corrupt COG, grid mismatch
        text = str(exc)
        result.error = text if repr(scene.scene_id) in text else f"item {scene.scene_id!r}: {text}"
        if isinstance(exc, ItemError | RasterError):
            result.asset, result.path = exc.asset, exc.path
    except (RasterioError, OSError) as exc:
        result.error = (f"item {scene.scene_id!r}: {type(exc).__name__}: {exc}; check the "
                        "item's assets (truncated or corrupt COG?) and re-run")
    return result


def _chip_scene(scene: Scene, opts: ChipOptions, result: SceneResult) -> None:
    sensor = get_sensor(scene.sensor)
    bands = sensor.select(opts.bands)
    root = RunRoot.of(opts.root)
    mask = sensor.mask_band if opts.cloud_mask else None
    sources: dict[str, Any] = {}
    try:
        for b in bands:
            sources[b.name] = _open(scene, b.name)
        if mask is not None:
            sources[mask] = _open(scene, mask)
        result.assets = {name: f"{scene.bands[name].key} ({scene.bands[name].how})"
                         for name in sources}
        ref_key = min(opts.bands, key=lambda k: abs(sources[k].transform.a))
        ref = sources[ref_key]
        epsg = _check_crs(scene, ref_key, ref)
        for key, src in sources.items():
            if key != ref_key and src.crs is not None and src.crs.to_epsg() != epsg:
                raise ItemError(f"item {scene.scene_id!r}, asset {key!r}: CRS {src.crs} "
                                f"differs from asset {ref_key!r} (EPSG:{epsg}); fix the item",
                                item=scene.scene_id, path=src.name, asset=key)
        raster = PixelGrid.of_raster(ref, epsg=epsg)
        grid = ChipGrid.anchored(raster, chip_size=opts.chip_size, origin=opts.grid_origin)
        cells = grid.cells(raster)
        if opts.aoi is not None and cells:
            from shapely import box, intersects

            aoi = load_aoi(opts.aoi, epsg)
            boxes = box(*np.array([c.bounds for c in cells]).T)
            cells = [c for c, keep in zip(cells, intersects(boxes, aoi), strict=True) if keep]
        harmonisation = scene.harmonisation
        if harmonisation.offset_dn:
            harmonisation = _check_offset_in_data(scene, harmonisation, sources, bands)
            result.harmonisation = harmonisation.note
            result.harmonisation_detail = harmonisation.record()
        rows = _process_cells(scene, opts, sources, bands, grid, cells, epsg, root, result,
                              harmonisation, mask)
        _write_meta(root, scene, opts, rows, epsg)
    finally:
        for src in sources.values():
            src.close()


def _check_offset_in_data(scene: Scene, harmonisation: Harmonisation,
                          sources: dict[str, Any], bands: tuple[Band, ...]) -> Harmonisation:
    """Rule 5 of :mod:`geofm.chip.harmonise`: is the +1000 really in the DNs?

    Reads every selected band decimated to at most ``DATA_CHECK_PIXELS`` a side (from the
    COG's overviews) and takes the band with the largest share of valid DNs below 1000.
    """
    from rasterio.enums import Resampling

    worst, worst_band = 0.0, bands[0].name
    for b in bands:
        src = sources[b.name]
        step = max(1, -(-max(src.height, src.width) // DATA_CHECK_PIXELS))
        shape = (max(1, src.height // step), max(1, src.width // step))
        sample = src.read(1, out_shape=shape, resampling=Resampling.nearest)
        nodata = scene.asset_band(b.name).nodata
        valid = sample != nodata if nodata is not None else np.ones(sample.shape, bool)
        if valid.sum() >= 16:
            share = float((sample[valid] < S2_BOA_ADD_OFFSET).mean())
            if share > worst:
                worst, worst_band = share, b.name
    return harmonisation.after_data_check(worst, worst_band)


def _process_cells(scene: Scene, opts: ChipOptions, sources: dict[str, Any], bands: tuple,
                   grid: ChipGrid, cells: list[Cell], epsg: int, root: RunRoot,
                   result: SceneResult, harmonisation: Harmonisation,
                   mask: str | None) -> list[dict[str, Any]]:
    size = opts.chip_size
    names = [b.name for b in bands]
    nodata = scene.asset_band(names[0]).nodata
    mask_nodata = scene.asset_band(mask).nodata if mask is not None else None
    rgb = rgb_indices(names)
    by_row: dict[int, list[Cell]] = {}
    for cell in cells:
        by_row.setdefault(cell.row, []).append(cell)
    records: list[dict[str, Any]] = []
    writer = _Writer()
    try:
        with writer:
            for row, row_cells in sorted(by_row.items()):
                cmin = min(c.col for c in row_cells)
                cmax = max(c.col for c in row_cells)
                strip = grid.cell_grid(row, cmin, epsg=epsg, n_cols=cmax - cmin + 1)
                pixels, missing, clouds = _read_strip(scene, opts, sources, names, mask, strip,
                                                      nodata, mask_nodata, harmonisation)
                x_all, y = strip.x_centres(), strip.y_centres()
                for cell in row_cells:
                    sl = slice((cell.col - cmin) * size, (cell.col - cmin + 1) * size)
                    cf, nf = fractions(None if clouds is None else clouds[:, sl], missing[:, sl])
                    valid = is_valid(cf, nf, max_cloud=opts.max_cloud, max_nodata=opts.max_nodata)
                    cid = chip_id(scene.tile, size, cell.row, cell.col)
                    chip_rel = thumb_rel = None
                    if valid:
                        chip_path = root.chip_path(scene.scene_id, cid)
                        thumb_path = root.thumbnail_path(scene.scene_id, cid)
                        writer.submit(_write_outputs, chip_path, thumb_path, pixels[:, :, sl],
                                      missing[:, sl], rgb, opts.stretch,
                                      dict(bands=names, x=x_all[sl], y=y, epsg=epsg,
                                           date=scene.date, nodata=nodata,
                                           scale=scene.asset_band(names[0]).scale,
                                           offset=bands[0].offset,
                                           attrs={"chip_id": cid, "scene_id": scene.scene_id,
                                                  "sensor": scene.sensor, "tile": scene.tile,
                                                  "harmonisation": result.harmonisation}))
                        chip_rel = chip_path.relative_to(root.path).as_posix()
                        thumb_rel = thumb_path.relative_to(root.path).as_posix()
                    result.chips += 1
                    records.append({"chip_id": cid, "row": cell.row, "col": cell.col,
                                    "bounds": cell.bounds, "cloud_fraction": cf,
                                    "nodata_fraction": nf, "valid": valid,
                                    "chip_path": chip_rel, "thumbnail_path": thumb_rel})
    finally:
        result.valid += writer.written
    return records


def _read_strip(scene: Scene, opts: ChipOptions, sources: dict[str, Any], names: list[str],
                mask: str | None, strip: PixelGrid, nodata: float | None,
                mask_nodata: float | None, harmonisation: Harmonisation,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One row of chips: DN [band, y, x] (harmonised), nodata [y, x], clouds [y, x] or None."""
    pixels = np.stack([_read_band(scene, k, sources[k], strip,
                                  abs(sources[k].transform.a) > strip.res[0] + 1e-9, nodata)
                       for k in names])
    layer = (_read_band(scene, mask, sources[mask], strip, False, mask_nodata)
             if mask is not None else None)
    missing = nodata_mask(pixels, layer, nodata=nodata, sensor=scene.sensor)
    clouds = (cloud_mask(layer, snow=opts.snow_is_cloud, sensor=scene.sensor)
              if layer is not None else None)
    if harmonisation.offset_dn:
        pixels = _remove_offset(pixels)
    return pixels, missing, clouds


def _write_outputs(chip_path: Any, thumb_path: Any, pixels: np.ndarray, missing: np.ndarray,
                   rgb: list[int], stretch: tuple[float, float],
                   chip_kwargs: dict[str, Any]) -> None:
    """Write one valid chip's NetCDF and its thumbnail (runs on the writer thread)."""
    write_chip(chip_path, pixels, **chip_kwargs)
    write_png(thumb_path, to_rgb8(pixels, rgb, stretch, nodata_mask=missing))


class _Writer:
    """One background thread that writes a scene's chips while the next strip is read.

    GDAL's reads, zlib and file I/O release the GIL, so reading and writing overlap.
    At most :data:`WRITE_QUEUE` writes wait (bounding the strips they hold); the first
    failed write is raised in the scene's thread (at the next submit or at exit), so a
    write error fails the scene as it did when writes ran inline.
    """

    def __init__(self) -> None:
        self.written = 0  # writes that completed (counted on the writer thread)

    def __enter__(self) -> _Writer:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geofm-chip-write")
        self._pending: Any = deque()
        return self

    def submit(self, fn: Any, *args: Any) -> None:
        """Queue ``fn(*args)``; raises the error of an earlier write that failed."""
        while len(self._pending) >= WRITE_QUEUE:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._run, fn, args))

    def _run(self, fn: Any, args: tuple[Any, ...]) -> None:
        fn(*args)
        self.written += 1

    def __exit__(self, *exc: object) -> None:
        try:
            while self._pending:
                future = self._pending.popleft()
                if exc[0] is None:
                    future.result()
                else:
                    future.cancel()
        finally:
            self._pool.shutdown(wait=True)


def _read_band(scene: Scene, key: str, src, strip: PixelGrid, coarse: bool,  # type: ignore[no-untyped-def]
               nodata: float | None) -> np.ndarray:
    from rasterio.errors import RasterioError

    try:
        return read_to_grid(src, strip, resampling="bilinear" if coarse else "nearest",
                            nodata=nodata)
    except RasterioError as exc:
        raise RasterError(f"item {scene.scene_id!r}, asset {key!r}: {src.name}: read failed "
                          f"({exc}); the COG is truncated or corrupt: re-download it",
                          path=src.name, reason="corrupt", item=scene.scene_id,
                          asset=key) from None


def _remove_offset(pixels: np.ndarray) -> np.ndarray:
    """Subtract the +1000 BOA offset from nonzero DN, clipping at 1 (0 stays nodata)."""
    shifted = np.maximum(pixels.astype(np.int32) - S2_BOA_ADD_OFFSET, 1)
    return np.where(pixels > 0, shifted, 0).astype(pixels.dtype)


def _write_meta(root: RunRoot, scene: Scene, opts: ChipOptions, records: list[dict[str, Any]],
                epsg: int) -> None:
    import geopandas as gpd
    import pandas as pd

    from geofm.io import atomic_path

    bounds = np.array([r["bounds"] for r in records], dtype=np.float64).reshape(-1, 4)
    frame = pd.DataFrame({
        "chip_id": pd.Series([r["chip_id"] for r in records], dtype=object),
        "scene_id": scene.scene_id, "tile": scene.tile, "sensor": scene.sensor,
        "date": pd.Series([pd.Timestamp(scene.date)] * len(records),
                          dtype="datetime64[ns, UTC]"),
        "row": np.array([r["row"] for r in records], dtype=np.int32),
        "col": np.array([r["col"] for r in records], dtype=np.int32),
        "epsg": np.full(len(records), epsg, dtype=np.int32),
        "minx": bounds[:, 0], "miny": bounds[:, 1], "maxx": bounds[:, 2], "maxy": bounds[:, 3],
        "cloud_fraction": np.array([r["cloud_fraction"] for r in records], dtype=np.float32),
        "nodata_fraction": np.array([r["nodata_fraction"] for r in records], dtype=np.float32),
        "valid": np.array([r["valid"] for r in records], dtype=bool),
        "chip_path": pd.Series([r["chip_path"] for r in records], dtype=object),
        "thumbnail_path": pd.Series([r["thumbnail_path"] for r in records], dtype=object),
        "bands": ",".join(opts.bands),
    })
    geometry = footprints_wgs84(bounds, epsg) if len(records) else []
    gdf = gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(geometry, crs=4326), crs=4326)
    with atomic_path(root.meta_path(scene.scene_id)) as tmp:
        gdf.to_parquet(tmp, index=False)

