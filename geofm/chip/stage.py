"""The ``chip`` stage: STAC scenes -> stable chip grid, screening, NetCDF, thumbnails, meta."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from geofm.chip.grid import load_aoi
from geofm.chip.items import Scene, load_items
from geofm.chip.scene import ChipOptions, SceneResult, chip_scene
from geofm.chip.thumbs import DEFAULT_STRETCH
from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError
from geofm.layout import RunRoot
from geofm.log import progress as progress_bar
from geofm.manifest import StageRecord, call_config, read_manifest, stage_entry
from geofm.sensors import get_sensor

log = logging.getLogger(__name__)

#: Most scene processes the default ``workers`` starts.
MAX_WORKERS = 8

#: With the default ``workers``, scenes run inline until the rest of the run is predicted
#: to take longer than this many seconds (starting worker processes costs seconds).
PARALLEL_AFTER_S = 10.0


def default_workers() -> int:
    """Scene processes of the default ``workers``: the CPUs this process may use, <= 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus))


def _check_aoi_overlap(aoi: str, scenes: list[Scene]) -> None:
    """Fail before any work if the AOI misses every item (usually a CRS mix-up).

    Raises:
        GeofmValueError: unreadable AOI, or no item's WGS84 bbox intersects it.
    """
    import shapely

    area = load_aoi(aoi, 4326)
    boxes = [shapely.box(*s.bbox) for s in scenes if s.bbox is not None]
    if boxes and not any(box.intersects(area) for box in boxes):
        extent = shapely.union_all(boxes).bounds
        raise GeofmValueError(
            f"AOI {aoi} (bounds {tuple(round(v, 4) for v in area.bounds)}) intersects none "
            f"of the {len(scenes)} items (their extent, lon/lat: "
            f"{tuple(round(v, 4) for v in extent)}); check the AOI's CRS (a GeoJSON "
            "without one is read as WGS84 lon/lat) and that the items cover it")


def _check_args(chip_size: int, max_cloud: float, max_nodata: float, workers: int | None,
                aoi: str | os.PathLike[str] | None) -> None:
    if chip_size < 1:
        raise GeofmValueError(f"chip_size must be a positive number of pixels, got {chip_size}")
    for name, value in (("max_cloud", max_cloud), ("max_nodata", max_nodata)):
        if not 0.0 <= value <= 1.0:
            raise GeofmValueError(f"{name} is a fraction of the chip's pixels (0..1), got "
                                  f"{value}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise GeofmValueError(f"workers must be a whole number >= 1 (or unset for the "
                              f"default), got {workers!r}")
    if aoi is not None and not Path(aoi).is_file():
        raise GeofmFileNotFoundError(f"AOI file {aoi} does not exist; pass a GeoJSON polygon "
                                     "file with --aoi")


def _stretch(root: RunRoot, sensor: str) -> tuple[float, float]:
    """The run's thumbnail stretch: the one stored in run.json, else the sensor default."""
    stored = read_manifest(root)["stages"].get("chip", {}).get("thumbnail_stretch")
    if stored:
        return (float(stored[0]), float(stored[1]))
    return DEFAULT_STRETCH.get(sensor, (0.0, 3000.0))


def coverage_summary(root: str | os.PathLike[str] | RunRoot) -> dict[str, Any]:
    """Valid acquisitions per chip per year, from every ``meta/*.parquet`` of the run.

    Returns:
        ``{"per_chip": {chip_id: {year: n_valid}}, "per_year": {year: {"chips": n,
        "min": .., "median": .., "max": ..}}}``; chips with no valid acquisition in a
        year count as 0 for that year.
    """
    import pandas as pd

    from geofm.tables import read_table

    run = RunRoot.of(root)
    frames = [read_table(run.meta_path(s), made_by="chip",
                         columns=["chip_id", "date", "valid"]).to_pandas()
              for s in run.scene_ids(run.meta_dir)]
    if not frames:
        return {"per_chip": {}, "per_year": {}}
    meta = pd.concat(frames, ignore_index=True)
    meta["year"] = pd.to_datetime(meta["date"], utc=True).dt.year.astype(str)
    table = (meta.groupby(["chip_id", "year"])["valid"].sum().unstack(fill_value=0)
             .astype(int).sort_index())
    per_chip = {cid: {str(y): int(n) for y, n in row.items()} for cid, row in table.iterrows()}
    per_year = {str(y): {"chips": int(len(col)), "min": int(col.min()),
                         "median": float(col.median()), "max": int(col.max())}
                for y, col in table.items()}
    return {"per_chip": per_chip, "per_year": per_year}


@stage_entry("chip")
def chip(
    items: str | os.PathLike[str] | Iterable[Any],
    root: str | os.PathLike[str],
    *,
    chip_size: int = 256,
    bands: str | Sequence[str] | None = None,
    aoi: str | os.PathLike[str] | None = None,
    max_cloud: float = 0.05,
    max_nodata: float = 0.0,
    grid_origin: tuple[float, float] | None = None,
    cloud_mask: bool = True,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> StageRecord:
    """Cut STAC scenes into a stable native-CRS chip grid.

    For every scene: chips of ``chip_size`` x ``chip_size`` pixels on the grid anchored
    at the item raster's upper-left corner (or ``grid_origin``), 20/60 m bands resampled
    bilinear onto the finest selected band's grid (SCL nearest), the +1000 DN offset of
    Sentinel-2 baseline >= 04.00 removed where the evidence says it is in the DNs
    (:mod:`geofm.chip.harmonise`), screened by the mask band's cloud and nodata
    fractions (SCL, or Landsat QA_PIXEL).
    Writes ``chips/<scene>/<chip>.nc`` and ``thumbnails/<scene>/<chip>.png`` for valid
    chips and ``meta/<scene>.parquet`` (every chip) last; a scene whose meta exists is
    skipped unless ``overwrite``. A failing scene is recorded in ``run.json`` and the
    others go on.

    Args:
        items: folder of STAC item JSONs, an ItemCollection file, one item file, or
            ``pystac.Item`` objects.
        root: run root folder.
        chip_size: chip edge in pixels of the finest selected band (10 m for S2).
        bands: band names or the provider's names (list or comma string: ``blue,nir``
            or ``B02,B08``; :meth:`geofm.sensors.Sensor.resolve`); ``None`` = the
            sensor's defaults (Sentinel-2 ``blue,green,red,nir``, Landsat
            ``blue,green,red,nir08``), ``"all"`` = the bands Clay was trained on.
            Each band's asset is found by the item's metadata
            (:func:`geofm.chip.assets.resolve_bands`), not by its key.
        aoi: GeoJSON with polygon(s), any CRS (WGS84 if unstated); keep chips whose
            footprint intersects it.
        max_cloud: largest cloud fraction (Sentinel-2 SCL 3, 8, 9, 10; Landsat QA_PIXEL
            bits 1-4) of a valid chip, 0..1.
        max_nodata: largest nodata fraction (SCL 0 or QA_PIXEL fill, or any band nodata)
            of a valid chip.
        grid_origin: ``(x, y)`` upper-left corner of chip (0, 0) in the native CRS, metres.
        cloud_mask: screen clouds with the sensor's mask asset (SCL, QA_PIXEL; an item
            without it then fails); ``False`` skips cloud screening.
        workers: scenes processed in parallel (processes); 1 runs inline. ``None``:
            scenes run inline until the rest of the run is predicted to take more than
            :data:`PARALLEL_AFTER_S` seconds (from the scenes done so far), then the
            remaining ones run on :func:`default_workers` processes. The number used
            is recorded as ``workers_used`` in ``run.json``.
        overwrite: redo scenes that are already complete.
        progress: show a progress bar.

    Returns:
        The stage record (counts ``scenes``, ``chips``, ``valid_chips``,
        ``skipped_scenes``, ``failed_scenes``; ``extra["coverage"]``).

    Raises:
        GeofmError: bad arguments, no usable item, or two items with one id (before any
            work). A single malformed item (bad id, datetime, CRS, ...: see
            :func:`geofm.chip.items.scene_from_dict`) fails only its scene.
    """
    _check_args(chip_size, max_cloud, max_nodata, workers, aoi)
    run = RunRoot.of(root)
    loaded = load_items(items)
    loaded.require_scenes()
    scenes = loaded.scenes
    sensors = sorted({s.sensor for s in scenes})
    if len(sensors) > 1:
        raise GeofmValueError(f"the items mix sensors ({', '.join(sensors)}); chip one sensor "
                              "per run root (search or pass the items of each separately)")
    sensor = get_sensor(scenes[0].sensor)
    band_names = sensor.resolve(bands)
    if aoi is not None:
        _check_aoi_overlap(str(aoi), scenes)
    origin = None if grid_origin is None else (float(grid_origin[0]), float(grid_origin[1]))
    stretch = _stretch(run, sensor.name)
    opts = ChipOptions(root=str(run.path), chip_size=int(chip_size), bands=band_names,
                       aoi=None if aoi is None else str(aoi), max_cloud=float(max_cloud),
                       max_nodata=float(max_nodata), grid_origin=origin,
                       cloud_mask=bool(cloud_mask), stretch=stretch)
    config = call_config(
        items=str(items) if isinstance(items, str | os.PathLike) else "<items>",
        bands=list(band_names), aoi=opts.aoi,
        grid_origin=None if origin is None else list(origin))
    with StageRecord(run, "chip", config=config) as record:
        record.extra["thumbnail_stretch"] = list(stretch)
        todo: list[Scene] = []
        skipped = 0
        for scene in scenes:
            if run.meta_path(scene.scene_id).exists() and not overwrite:
                skipped += 1
            else:
                todo.append(scene)
        if skipped:
            log.info("%d of %d scenes already chipped; skipping them (overwrite=True redoes "
                     "them)", skipped, len(scenes))
        for err in loaded.errors:  # bad items fail like scenes; the others go on
            unit = err.item if err.item is not None else str(err.path)
            record.fail(unit, str(err), path=err.path)
            log.error("item %s failed: %s", unit, err)
        results, used = _run_scenes(todo, opts, workers=workers, progress=progress)
        record.extra["workers_used"] = used
        harmonisation: dict[str, str] = {}
        detail: dict[str, dict[str, Any]] = {}
        for res in results:
            if res.error is not None:
                record.fail(res.scene_id, res.error, asset=res.asset, path=res.path)
                log.error("scene %s failed: %s", res.scene_id, res.error)
            else:
                harmonisation[res.scene_id] = res.harmonisation
                detail[res.scene_id] = {**res.harmonisation_detail, "assets": res.assets}
        record.counts.update(
            scenes=len(scenes) + len(loaded.errors), skipped_scenes=skipped,
            failed_scenes=sum(r.error is not None for r in results) + len(loaded.errors),
            chips=sum(r.chips for r in results), valid_chips=sum(r.valid for r in results))
        record.extra["harmonisation"] = harmonisation
        record.extra["harmonisation_detail"] = detail
        record.extra["coverage"] = coverage_summary(run)
    return record


def _run_scenes(scenes: list[Scene], opts: ChipOptions, *, workers: int | None,
                progress: bool) -> tuple[list[SceneResult], int]:
    """Chip ``scenes``; returns the results and the number of processes used (1: inline)."""
    import time

    results: list[SceneResult] = []
    bar = progress_bar(total=len(scenes), desc="chip", unit="scene", disable=not progress)
    pool_size = workers if workers is not None else default_workers()
    used = 1
    with bar:
        start = time.perf_counter()
        todo = list(scenes)
        while todo and (pool_size == 1 or len(todo) == 1 or (
                workers is None and _predicted_s(start, len(results), len(todo))
                <= PARALLEL_AFTER_S)):
            results.append(chip_scene(todo.pop(0), opts))
            bar.update(1)
        if todo:
            import multiprocessing

            used = min(pool_size, len(todo))
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=used, mp_context=ctx) as pool:
                futures = [pool.submit(chip_scene, scene, opts) for scene in todo]
                for future in as_completed(futures):
                    results.append(future.result())
                    bar.update(1)
    return results, used


def _predicted_s(start: float, done: int, left: int) -> float:
    """Seconds the ``left`` scenes would take inline, at the pace of the ``done`` ones."""
    import time

    if done == 0:
        return 0.0
    return (time.perf_counter() - start) / done * left


def _origin(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--grid-origin must be X,Y in the native CRS "
                                         f"(metres), got {text!r}") from None
    return x, y


def cli_options() -> dict[str, Any]:
    """``geofm chip``'s options: :func:`chip`'s signature plus what it cannot say.

    Returns:
        ``{name: geofm.options.Option}``.
    """
    from geofm.cliargs import positive_int
    from geofm.options import Cli, declare

    return declare(chip, {
        "items": Cli(help="folder of STAC item JSONs, an ItemCollection, or one item "
                          "(or search a STAC API with --stac)"),
        "root": Cli(flags=("--out", "--root"), required=True, help="run root folder"),
        "chip_size": Cli(type=positive_int),
        "bands": Cli(help="comma list of bands by name (blue,nir) or provider name "
                          "(B02,B08) (default blue,green,red,nir; Landsat blue,green,red,"
                          "nir08); 'all' = the bands Clay was trained on (ten for "
                          "Sentinel-2)"),
        "grid_origin": Cli(type=_origin, metavar="X,Y"),
        "workers": Cli(type=positive_int),
    })


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``geofm chip`` options to ``parser`` (from :func:`cli_options`)."""
    from geofm.chip.search import query_options
    from geofm.options import add_arguments as add_options

    add_options(parser, cli_options().values())
    add_options(parser, query_options().values())


def _items_from_cli(args: argparse.Namespace) -> str | int:
    """The items to chip: ``--items``, or the file a ``--stac`` search saved; 2 if misused."""
    import sys

    from geofm.chip.search import StacQuery, aoi_geometry, search_items

    def usage(message: str) -> int:
        print(f"geofm chip: error: {message}", file=sys.stderr)
        return 2

    if (args.items is None) == (args.url is None):
        return usage("give either --items PATH or --stac URL --collection NAME")
    if args.items is not None:
        if args.collections or args.bbox or args.datetime or args.max_cloud_cover is not None \
                or args.max_items is not None:
            return usage("--collection, --bbox, --datetime, --max-cloud-cover and "
                         "--max-items go with --stac, not --items")
        return str(args.items)
    if not args.collections:
        return usage("--stac needs --collection NAME (e.g. sentinel-2-l2a)")
    if args.bbox is not None and args.aoi is not None:
        return usage("give the search area as --bbox or as --aoi, not both")
    if args.aoi is not None and not Path(args.aoi).is_file():
        raise GeofmFileNotFoundError(f"AOI file {args.aoi} does not exist; pass a GeoJSON "
                                     "polygon file with --aoi")
    from geofm.chip.search import query_options
    from geofm.options import library_kwargs

    fields = library_kwargs(args, query_options().values())
    query = StacQuery(**fields, intersects=aoi_geometry(args.aoi) if args.aoi else None)
    return str(search_items(args.root, query, overwrite=args.overwrite))


def format_coverage(coverage: dict[str, Any]) -> str:
    """One line per year: chips and min/median/max valid acquisitions per chip."""
    lines = ["valid acquisitions per chip:"]
    for year, s in sorted(coverage.get("per_year", {}).items()):
        lines.append(f"  {year}: {s['chips']} chips, min {s['min']}, median {s['median']:g}, "
                     f"max {s['max']}")
    if len(lines) == 1:
        lines.append("  (no chips)")
    return "\n".join(lines)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``geofm chip`` from parsed arguments; 1 if any scene failed, 2 if misused."""
    from geofm.options import library_kwargs

    items = _items_from_cli(args)
    if isinstance(items, int):
        return items
    kwargs = library_kwargs(args, cli_options().values())
    kwargs.update(items=items)
    record = chip(**kwargs)
    c = record.counts
    print(f"chip: {c['scenes']} scenes ({c['skipped_scenes']} already done, "
          f"{c['failed_scenes']} failed), {c['chips']} chips, {c['valid_chips']} valid")
    print(format_coverage(record.extra.get("coverage", {})))
    if record.failures:
        for failure in record.failures:
            print(f"FAILED {failure}")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m geofm.chip`` / processing-job entry point."""
    from geofm.cli import stage_main

    return stage_main("chip", argv)
