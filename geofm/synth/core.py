"""``synthesize``: write a synthetic Sentinel-2 L2A time series with planted truth.

Output layout (see ``docs/contracts.md``, "synth")::

    OUT/items/<item_id>.json        STAC Item per acquisition and tile
    OUT/assets/<item_id>/<key>.tif  COG per band at native resolution, nodata 0
    OUT/labels/landcover_<tile>.tif land-cover codes at 10 m (0 = nodata)
    OUT/truth.json                  grid, per-cell class, planted events, items

``truth.json`` follows the contract and adds: ``monitor_start`` (the last acquisition
before the monitoring period; every event is after it), ``dates`` (all acquisition
dates), per event ``regrowth_date`` (bare soil -> pasture), per cell ``event`` (the
clearing date, or null for cells that never change) and per item ``date`` and
``nodata_percentage``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geofm.exceptions import GeofmFileExistsError, GeofmValueError
from geofm.io import write_json_atomic
from geofm.sensors import (
    SCL_CIRRUS,
    SCL_CLOUD_HIGH,
    SCL_CLOUD_MEDIUM,
    SCL_NOT_VEGETATED,
    get_sensor,
)
from geofm.synth import clouds, spectra, timeline
from geofm.synth.grid import EPSG, FACTORS, PIXEL_SIZE, Canvas, Tile, make_canvas
from geofm.synth.landcover import (
    BARE,
    CLASSES,
    CROPLAND,
    FOREST,
    PASTURE,
    LandCover,
    make_landcover,
)
from geofm.synth.noise import block_mean, fractal_noise, rng_for
from geofm.synth.rasters import write_cog
from geofm.synth.stac import item_id, make_item

log = logging.getLogger(__name__)

_KEY_EVENT_CELLS, _KEY_TEXTURE, _KEY_PHASE, _KEY_ATMOS, _KEY_SENSOR = 41, 42, 43, 51, 52
#: Sensor noise: standard deviation = NOISE_DN + NOISE_REL * signal (DN).
NOISE_DN, NOISE_REL = 8.0, 0.01
#: Largest valid DN before the baseline offset (so DN + 1000 fits in uint16).
MAX_DN = 60000


@dataclass(frozen=True)
class _Event:
    row: int  # canvas cell row
    col: int  # canvas cell column
    timing: timeline.EventTiming
    pixels: tuple[np.ndarray, np.ndarray]  # canvas pixel indices that clear


def synthesize(out: str | os.PathLike[str], *, seed: int = 0, size: int = 512,
               n_dates: int = 36, start: str = "2021-01-01", cadence_days: int | None = None,
               n_events: int = 4, n_tiles: int = 1, chip_size: int = 64,
               overwrite: bool = False) -> Path:
    """Write a synthetic Sentinel-2 L2A time series with planted truth to ``out``.

    Tiles are ``size`` x ``size`` pixels at 10 m in UTM zone 33N (EPSG:32633), upper-left
    corner on a 60 m multiple; bands are written at their native 10/20/60 m resolution
    (the coarser grids cover the 10 m extent, rounding up). Land cover is one dominant
    class per ``chip_size`` cell (>= 85 % of its pixels); ``n_events`` forest cells of the
    first tile are cleared (forest -> bare soil -> pasture) inside the monitoring period.

    Args:
        out: output folder (created; must be empty unless ``overwrite``).
        seed: random seed; the same seed gives byte-identical files.
        size: tile side in 10 m pixels; a multiple of ``chip_size``.
        n_dates: number of acquisitions per tile.
        start: first acquisition date, ``YYYY-MM-DD``.
        cadence_days: days between acquisitions; default spreads ``n_dates`` over
            about two years (a multiple of 5 days).
        n_events: planted clearings (at most half the cells of a tile).
        n_tiles: 1, or 2 for a second overlapping tile (``33UVP``) on the same dates.
        chip_size: side of a land-cover cell in pixels (the chip grid of the truth).
        overwrite: replace the synthetic data already in ``out``.

    Returns:
        ``out`` as a :class:`pathlib.Path`.

    Raises:
        GeofmValueError: an impossible size, date or count (the message says what to pass).
        GeofmFileExistsError: ``out`` is not empty and ``overwrite`` is False.
    """
    t0 = time.perf_counter()
    start_date = _validate(seed=seed, size=size, n_dates=n_dates, start=start,
                           cadence_days=cadence_days, n_events=n_events, n_tiles=n_tiles,
                           chip_size=chip_size)
    out = Path(out)
    _prepare(out, overwrite=overwrite)

    canvas = make_canvas(size, chip_size, n_tiles)
    landcover = make_landcover(canvas, seed=seed, n_events=n_events)
    dates = timeline.acquisition_dates(start_date, n_dates, cadence_days)
    events = _plant_events(canvas, landcover, dates, n_events=n_events, seed=seed)
    skies = clouds.schedule(seed, n_dates)
    renderer = _Renderer(canvas, landcover, events, seed=seed)

    import rasterio

    items: list[dict[str, Any]] = []
    label_date = timeline.label_date(dates)
    with rasterio.Env():  # one GDAL environment for all writes
        for index, date in enumerate(dates):
            bands, scl = renderer.render(index, date, skies[index])
            for tile in canvas.tiles:
                items.append(_write_item(out, tile, index, date, bands, scl))
                log.debug("wrote %s (cloud %.1f %%, nodata %.1f %%)", items[-1]["id"],
                          items[-1]["cloud_cover"], items[-1]["nodata_percentage"])
        for tile in canvas.tiles:
            rows, cols = tile.window(10)
            write_cog(out / "labels" / f"landcover_{tile.code}.tif",
                      np.ascontiguousarray(landcover.class_map[rows, cols]),
                      tile.transform(10))
    truth = _truth(canvas, landcover, events, dates, items, seed=seed, label_date=label_date)
    write_json_atomic(out / "truth.json", truth)
    log.info("%s in %.1f s", describe(out), time.perf_counter() - t0)
    return out


def _validate(*, seed: int, size: int, n_dates: int, start: str, cadence_days: int | None,
              n_events: int, n_tiles: int, chip_size: int) -> dt.date:
    if not isinstance(seed, int) or seed < 0:
        raise GeofmValueError(f"seed must be a non-negative integer, got {seed!r}; "
                              "pass --seed 0 (or any positive integer)")
    if chip_size < 8:
        raise GeofmValueError(f"chip_size={chip_size} is too small; pass --chip-size 8 or "
                              "more (64 is typical)")
    if size < chip_size:
        raise GeofmValueError(f"size={size} is smaller than chip_size={chip_size}; pass "
                              f"--size {chip_size} or a larger multiple of {chip_size}, or "
                              "a smaller --chip-size")
    if size % chip_size:
        lower = size // chip_size * chip_size
        raise GeofmValueError(f"size={size} is not a multiple of chip_size={chip_size}; "
                              f"pass --size {lower} or --size {lower + chip_size}")
    if n_dates < 1:
        raise GeofmValueError(f"n_dates must be at least 1, got {n_dates}; pass --n-dates 36 "
                              "(or any positive number)")
    if n_tiles not in (1, 2):
        raise GeofmValueError(f"n_tiles must be 1 or 2, got {n_tiles}; pass --n-tiles 1 or 2")
    if cadence_days is not None and cadence_days < 1:
        raise GeofmValueError(f"cadence_days must be at least 1 day, got {cadence_days}; "
                              "pass --cadence-days 5 (or omit it for the default)")
    try:
        start_date = dt.date.fromisoformat(str(start))
    except ValueError:
        raise GeofmValueError(f"start={start!r} is not a date; pass --start YYYY-MM-DD, "
                              "e.g. --start 2021-01-01") from None
    if n_events < 0:
        raise GeofmValueError(f"n_events must be >= 0, got {n_events}; pass --n-events 0 or "
                              "more")
    n_cells = (size // chip_size) ** 2
    if n_events > n_cells // 2:
        raise GeofmValueError(
            f"n_events={n_events} is more than the forest cells a tile of size={size} with "
            f"chip_size={chip_size} can hold ({n_cells} cells, at most {n_cells // 2} may be "
            f"cleared so that others stay unchanged); pass --n-events {n_cells // 2} or "
            "less, or a larger --size")
    if n_events and n_dates < timeline.min_dates_for_events():
        raise GeofmValueError(
            f"n_dates={n_dates} is too few to place events (each needs acquisitions before "
            f"and three after it); pass --n-dates {timeline.min_dates_for_events()} or more, "
            "or --n-events 0")
    return start_date


def _prepare(out: Path, *, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise GeofmFileExistsError(f"output {out} is a file, not a folder; pass another "
                                   "folder as OUT")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise GeofmFileExistsError(
                f"output folder {out} is not empty; use --overwrite (overwrite=True) to "
                "replace the synthetic data in it, or pass another folder")
        for name in ("items", "assets", "labels"):
            shutil.rmtree(out / name, ignore_errors=True)
        (out / "truth.json").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _plant_events(canvas: Canvas, landcover: LandCover, dates: list[dt.date], *,
                  n_events: int, seed: int) -> list[_Event]:
    """Choose the cleared forest cells (first tile only) and their dates."""
    if not n_events:
        return []
    rng = rng_for(seed, _KEY_EVENT_CELLS)
    n = canvas.tiles[0].size // canvas.chip_size
    forest = np.argwhere(landcover.cell_class[:n, :n] == FOREST)
    chosen = forest[np.sort(rng.choice(len(forest), size=n_events, replace=False))]
    timings = timeline.event_timings(dates, n_events, seed=seed)
    cs = canvas.chip_size
    events = []
    for (r, c), timing in zip(chosen, timings, strict=True):
        block = landcover.class_map[r * cs:(r + 1) * cs, c * cs:(c + 1) * cs]
        rr, cc = np.nonzero(block == FOREST)
        events.append(_Event(int(r), int(c), timing, (rr + r * cs, cc + c * cs)))
    return events


class _Renderer:
    """Renders every band and SCL of one acquisition on the whole canvas."""

    def __init__(self, canvas: Canvas, landcover: LandCover, events: list[_Event], *,
                 seed: int) -> None:
        self.canvas, self.landcover, self.events, self.seed = canvas, landcover, events, seed
        shape = (canvas.rows, canvas.cols)
        rng = rng_for(seed, _KEY_TEXTURE)
        texture = 0.75 * fractal_noise(rng, shape, 3.0, octaves=2)
        texture += 0.25 * rng.standard_normal(shape, dtype=np.float32)
        self.texture = texture
        self.texture_amp = np.zeros(7, np.float32)
        for code, amp in spectra.TEXTURE.items():
            self.texture_amp[code] = amp
        # Crop parcels peak at different times: a piecewise phase shift (days).
        phase = fractal_noise(rng_for(seed, _KEY_PHASE), shape, canvas.chip_size / 4, octaves=1)
        self.crop_phase = (np.round(phase * 1.5) * 10.0).clip(-30, 30).astype(np.float32)
        dormant, peak = spectra.spectra_tables()
        self.dormant, self.delta = dormant.T.copy(), (peak - dormant).T.copy()

    def classes_on(self, date: dt.date) -> np.ndarray:
        """Class map (uint8 [rows, cols]) on ``date``, events applied."""
        cls = self.landcover.class_map
        if any(date >= e.timing.date for e in self.events):
            cls = cls.copy()
            for e in self.events:
                if date >= e.timing.regrowth:
                    cls[e.pixels] = PASTURE
                elif date >= e.timing.date:
                    cls[e.pixels] = BARE
        return cls

    def young_pasture(self, date: dt.date) -> np.ndarray | None:
        """Mask (bool [rows, cols]) of cleared pixels regrown to pasture by ``date``."""
        regrown = [e for e in self.events if date >= e.timing.regrowth]
        if not regrown:
            return None
        mask = np.zeros(self.landcover.class_map.shape, bool)
        for e in regrown:
            mask[e.pixels] = True
        return mask

    def render(self, index: int, date: dt.date, sky: clouds.DateSky,
               ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Bands (uint16 per canvas grid at native resolution) and SCL (uint8, 20 m)."""
        canvas, seed = self.canvas, self.seed
        shape = (canvas.rows, canvas.cols)
        cls = self.classes_on(date)
        doy = spectra.day_of_year(date)
        per_class = np.array([0.0] + [float(spectra.seasonal_weight(c, doy))
                                      for c in range(1, 7)], np.float32)
        weight = per_class[cls]
        crop = cls == CROPLAND
        weight[crop] = spectra.seasonal_weight(CROPLAND, doy + self.crop_phase[crop])
        tex = 1.0 + self.texture_amp[cls] * self.texture
        rng = rng_for(seed, _KEY_ATMOS, index)
        gain, haze = 1.0 + 0.02 * rng.standard_normal(), rng.uniform(0.0, 120.0)
        sky_f = clouds.sky_fields(sky, shape, seed=seed, index=index, chip_size=canvas.chip_size)
        ground = (1.0 - sky_f.opacity) * (1.0 - clouds.SHADOW_DARKENING * sky_f.shadow)
        offset = timeline.boa_offset(date)
        swaths = {f: clouds.swath_mask(sky, shape, f, seed=seed, index=index)
                  for f in FACTORS.values()}
        young = self.young_pasture(date)
        soil = spectra.YOUNG_PASTURE_BARE
        bands: dict[str, np.ndarray] = {}
        for j, name in enumerate(spectra.BANDS):
            surface = (self.dormant[j][cls] + weight * self.delta[j][cls]) * tex
            if young is not None:  # young pasture: pasture mixed with bare soil
                surface[young] = ((1.0 - soil) * surface[young]
                                  + soil * self.dormant[j][BARE] * tex[young])
            haze_b = haze * (0.49 / spectra.wavelength(name)) ** 2
            value = (gain * surface + haze_b) * ground
            value += sky_f.opacity * (spectra.CLOUD[name] * sky_f.brightness)
            value += sky_f.cirrus * spectra.CIRRUS[name]
            factor = FACTORS[int(_resolution(name))]
            value = block_mean(value, factor)
            noise = rng_for(seed, _KEY_SENSOR, index, j).standard_normal(value.shape,
                                                                         dtype=np.float32)
            value += noise * (NOISE_DN + NOISE_REL * value)
            dn = np.clip(np.rint(value), 1, MAX_DN).astype(np.uint16) + np.uint16(offset)
            if swaths[factor] is not None:
                dn[swaths[factor]] = 0
            bands[name] = dn
        # SCL on the 20 m grid from the same fields.
        cls20, weight20 = cls[::2, ::2], weight[::2, ::2]
        clear = np.zeros(7, np.uint8)
        for code, scl_code in spectra.SCL_CLEAR.items():
            clear[code] = scl_code
        clear20 = clear[cls20]
        clear20[(cls20 == CROPLAND) & (weight20 < 0.3)] = SCL_NOT_VEGETATED
        scl = clouds.scl_clouds(block_mean(sky_f.opacity, 2), block_mean(sky_f.shadow, 2),
                                block_mean(sky_f.cirrus, 2), clear20)
        if swaths[2] is not None:
            scl[swaths[2]] = 0
        return bands, scl


def _resolution(band: str) -> float:
    return get_sensor("sentinel-2-l2a").band(band).resolution


def _write_item(out: Path, tile: Tile, index: int, date: dt.date,
                bands: dict[str, np.ndarray], scl: np.ndarray) -> dict[str, Any]:
    platform = timeline.platform(index)
    ident = item_id(tile, date, platform)
    for name, canvas_dn in bands.items():
        res = int(_resolution(name))
        rows, cols = tile.window(res)
        write_cog(out / "assets" / ident / f"{name}.tif",
                  np.ascontiguousarray(canvas_dn[rows, cols]), tile.transform(res))
    rows, cols = tile.window(20)
    tile_scl = np.ascontiguousarray(scl[rows, cols])
    write_cog(out / "assets" / ident / "scl.tif", tile_scl, tile.transform(20))
    valid = tile_scl != 0
    n_valid = int(valid.sum())
    cloudy = int(np.isin(tile_scl, (SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS)).sum())
    cloud_cover = round(100.0 * cloudy / n_valid, 2) if n_valid else 0.0
    nodata = round(100.0 * (1.0 - n_valid / tile_scl.size), 2)
    baseline = timeline.processing_baseline(date)
    offset = timeline.boa_offset(date)
    item = make_item(tile=tile, date=date, time=timeline.acquisition_time(index),
                     platform=platform, baseline=baseline, baseline_offset=offset,
                     cloud_cover=cloud_cover, nodata_percentage=nodata)
    write_json_atomic(out / "items" / f"{ident}.json", item)
    return {"id": ident, "tile": tile.code, "datetime": item["properties"]["datetime"],
            "date": date.isoformat(), "cloud_cover": cloud_cover,
            "nodata_percentage": nodata, "processing_baseline": baseline,
            "boa_offset": offset}


def _truth(canvas: Canvas, landcover: LandCover, events: list[_Event], dates: list[dt.date],
           items: list[dict[str, Any]], *, seed: int, label_date: dt.date) -> dict[str, Any]:
    cs = canvas.chip_size
    by_cell = {(e.row, e.col): e for e in events}
    item_of = {(it["tile"], it["date"]): it["id"] for it in items}
    tiles, cells, planted = {}, [], []
    for tile in canvas.tiles:
        x0, y0 = tile.origin
        tiles[tile.code] = {"origin": [x0, y0], "shape": [tile.size, tile.size],
                            "label_raster": f"labels/landcover_{tile.code}.tif"}
        c_off = tile.col_offset // cs
        n = tile.size // cs
        for r in range(n):
            for c in range(n):
                code = int(landcover.cell_class[r, c + c_off])
                event = by_cell.get((r, c + c_off))
                side = cs * PIXEL_SIZE
                cells.append({"tile": tile.code, "row": r, "col": c,
                              "minx": x0 + c * side, "miny": y0 - (r + 1) * side,
                              "maxx": x0 + (c + 1) * side, "maxy": y0 - r * side,
                              "class": CLASSES[code],
                              "event": event.timing.date.isoformat() if event else None})
                if event:
                    first = dates[event.timing.first_index]
                    planted.append({
                        "tile": tile.code, "row": r, "col": c,
                        "date": event.timing.date.isoformat(),
                        "regrowth_date": event.timing.regrowth.isoformat(),
                        "first_changed_item": item_of[(tile.code, first.isoformat())],
                        "first_changed_date": first.isoformat(),
                        "sequence": ["forest", "bare", "pasture"]})
    m = timeline.monitor_index(dates)
    return {
        "seed": seed, "chip_size": cs, "pixel_size": PIXEL_SIZE, "epsg": EPSG,
        "classes": {str(k): v for k, v in CLASSES.items()},
        "label_date": label_date.isoformat(),
        "baseline_switch": timeline.BASELINE_SWITCH.isoformat(),
        "monitor_start": dates[m].isoformat(),
        "dates": [d.isoformat() for d in dates],
        "tiles": tiles, "cells": cells, "events": planted, "items": items,
    }


def describe(out: str | os.PathLike[str]) -> str:
    """One-paragraph summary of a synthetic dataset, read from its ``truth.json``."""
    import json

    truth = json.loads((Path(out) / "truth.json").read_text())
    items = truth["items"]
    covers = np.array([it["cloud_cover"] for it in items], np.float64)
    partial = sum(1 for it in items if it["nodata_percentage"] > 0)
    events = ", ".join(f"{e['tile']} r{e['row']}c{e['col']} {e['date']}"
                       for e in truth["events"]) or "none"
    dates = truth["dates"]
    return (f"synthetic Sentinel-2 L2A in {out}: {len(items)} items, "
            f"{len(truth['tiles'])} tile(s) {', '.join(truth['tiles'])}, {len(dates)} dates "
            f"{dates[0]}..{dates[-1]}; clouds: {int((covers < 5).sum())} clear(<5%), "
            f"{int((covers > 95).sum())} overcast(>95%), mean {covers.mean():.1f}%; "
            f"{partial} partial swath(s); events: {events}")
