"""Benchmark the chip stage: chips/s and peak memory, geofm vs the read floor and a baseline.

Variants (each runs in its own subprocess; peak memory = that process's peak RSS, which
includes GDAL's native allocations that tracemalloc cannot see):

- ``floor``: the raw read + decode of exactly what the stage reads: the child runs
  ``geofm.chip.chip`` once (``workers=1``, untimed) with ``rasterio``'s
  ``DatasetReader.read`` wrapped to record every call (asset, band, window), then times
  opening every asset and replaying those reads, nothing else (best of 3). geofm's time
  as a share of the floor ("% of floor" = floor s / geofm s) is the issue-18 measure.
- ``geofm``: ``geofm.chip.chip`` on the native grid (strip-wise windowed reads, SCL
  screening, NetCDF + PNG per valid chip, GeoParquet meta), ``workers=1``.
- ``geofm-auto``: the same with the stage's default ``workers`` (scenes in parallel).
- ``baseline``: what the reference solution does: open the whole scene with rioxarray,
  reproject it to EPSG:4326 in memory, cut chips of ``chip_size`` pixels from the
  reprojected array, write each chip's NetCDF (xarray ``to_netcdf``) and PNG from a
  thread pool.

The synthetic tile is one Sentinel-2-like item: 4 x 10 m uint16 COGs (``--size`` px
square, smooth fields + noise, DEFLATE) and a 20 m SCL COG, plus its STAC item JSON.
``--scenes N`` writes N items (N dates of the tile, each with its own copy of the COGs),
the "many small scenes" case; the baseline only handles one scene and is skipped there.

Usage::

    python benchmarks/bench_chip.py --size 2048            # quick
    python benchmarks/bench_chip.py --size 10980 --work /big/tmp
    python benchmarks/bench_chip.py --size 768 --scenes 40 --chip-size 128 \
        --variants floor,geofm,geofm-auto
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BANDS = ("blue", "green", "red", "nir")
EPSG = 32633
X0, Y0 = 300000.0, 5500020.0


def _footprint(size: int) -> dict:
    """WGS84 GeoJSON polygon of the tile (items need a located geometry)."""
    from pyproj import Transformer

    to_wgs = Transformer.from_crs(EPSG, 4326, always_xy=True)
    edge = size * 10.0
    corners = [(X0, Y0), (X0 + edge, Y0), (X0 + edge, Y0 - edge), (X0, Y0 - edge), (X0, Y0)]
    return {"type": "Polygon",
            "coordinates": [[list(to_wgs.transform(x, y)) for x, y in corners]]}


def make_tile(folder: Path, size: int, seed: int = 0, scenes: int = 1) -> Path:
    """Write the synthetic item(s) + COGs; return the items folder.

    Scene ``k`` (of ``scenes``) is the same tile ``k`` days later, with its own copy of
    the COGs (so no scene reads another's files).
    """
    import rasterio
    from affine import Affine
    from rasterio.shutil import copy as rio_copy

    rng = np.random.default_rng(seed)
    item_id = f"S2A_33UUP_20210601_0_L2A_{size}"
    assets = folder / "assets" / item_id
    assets.mkdir(parents=True, exist_ok=True)
    block = 512
    keys = [(b, 10, "uint16") for b in BANDS] + [("scl", 20, "uint8")]
    for key, res, dtype in keys:
        n = size * 10 // res
        path = assets / f"{key}.tif"
        if path.exists():
            continue
        tmp = path.with_suffix(".gtiff")
        profile = dict(driver="GTiff", height=n, width=n, count=1, dtype=dtype,
                       crs=f"EPSG:{EPSG}", transform=Affine(res, 0, X0, 0, -res, Y0), nodata=0,
                       tiled=True, blockxsize=block, blockysize=block, compress="DEFLATE")
        with rasterio.open(tmp, "w", **profile) as dst:
            for r in range(0, n, block):
                h = min(block, n - r)
                yy = (np.arange(r, r + h)[:, None] / n)
                xx = np.arange(n)[None, :] / n
                if key == "scl":
                    data = np.where((xx - 0.7) ** 2 + (yy - 0.3) ** 2 < 0.02, 9, 4)
                    data = data.astype(np.uint8)
                else:
                    field = 1200 + 800 * np.sin(6 * xx + BANDS.index(key)) * np.cos(5 * yy)
                    data = (field + rng.normal(0, 60, (h, n))).clip(1, 10000).astype(np.uint16)
                dst.write(data, 1, window=rasterio.windows.Window(0, r, n, h))
        with rasterio.open(tmp) as src:
            rio_copy(src, path, driver="COG", compress="DEFLATE", blocksize=block)
        tmp.unlink()
    items = folder / f"items_{scenes}"
    items.mkdir(exist_ok=True)
    for k in range(scenes):
        day = np.datetime64("2021-06-01") + np.timedelta64(k, "D")
        sid = item_id if k == 0 else f"{item_id}_{k:03d}"
        if k:
            copy = folder / "assets" / sid
            copy.mkdir(exist_ok=True)
            for key, _, _ in keys:
                if not (copy / f"{key}.tif").exists():
                    shutil.copyfile(assets / f"{key}.tif", copy / f"{key}.tif")
        item = {"type": "Feature", "stac_version": "1.0.0", "id": sid,
                "collection": "sentinel-2-l2a", "geometry": _footprint(size), "bbox": None,
                "links": [],
                "properties": {"datetime": f"{day}T10:00:00Z", "proj:epsg": EPSG,
                               "grid:code": "MGRS-33UUP", "s2:processing_baseline": "02.14"},
                "assets": {key: {"href": f"../assets/{sid}/{key}.tif"} for key, _, _ in keys}}
        (items / f"{sid}.json").write_text(json.dumps(item))
    return items


def run_geofm(items: Path, out: Path, chip_size: int, workers: int | None = 1) -> int:
    """The geofm chip stage; returns the number of chips written.

    ``workers=None`` leaves the stage's default (scenes in parallel where cores allow).
    """
    from geofm.chip import chip

    kwargs = {} if workers is None else {"workers": workers}
    record = chip(items, out, chip_size=chip_size, bands=",".join(BANDS), max_cloud=0.05,
                  progress=False, overwrite=True, **kwargs)
    if record.failures:
        raise SystemExit(f"geofm variant failed: {record.failures}")
    return record.counts["valid_chips"]


def run_floor(items: Path, out: Path, chip_size: int,
              repeat: int = 3) -> tuple[int, float, float]:
    """Raw read + decode of exactly the reads the stage makes.

    Returns:
        ``(reads, best wall seconds, best CPU seconds)``.


    Records every ``DatasetReader.read`` call of one (untimed) ``workers=1`` stage run,
    then times, per scene as the stage does, opening each asset and replaying its reads
    under the stage's GDAL settings. No resampling, screening or writing.
    """
    import rasterio
    from rasterio.io import DatasetReader

    from geofm.chip.scene import GDAL_CACHE_MB

    calls: list[tuple[str, tuple, dict]] = []
    original = DatasetReader.read

    def recording(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((self.name, args, kwargs))
        return original(self, *args, **kwargs)

    DatasetReader.read = recording  # type: ignore[method-assign]
    try:
        run_geofm(items, out, chip_size, workers=1)
    finally:
        DatasetReader.read = original  # type: ignore[method-assign]
    by_file: dict[str, list[tuple[tuple, dict]]] = {}
    for name, args, kwargs in calls:
        by_file.setdefault(name, []).append((args, kwargs))
    best = best_cpu = float("inf")
    for _ in range(repeat):
        start, cpu0 = time.perf_counter(), time.process_time()
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            for name, reads in by_file.items():
                with rasterio.open(name) as src:
                    for args, kwargs in reads:
                        src.read(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu0)
    return len(calls), best, best_cpu


def run_baseline(items: Path, out: Path, chip_size: int, threads: int = 4) -> int:
    """The reference approach: reproject whole scene to EPSG:4326, then chip from a pool."""
    from concurrent.futures import ThreadPoolExecutor

    import rioxarray
    import xarray as xr
    from PIL import Image

    item = json.loads(next(items.glob("*.json")).read_text())
    arrays = []
    for band in BANDS:
        href = (items / item["assets"][band]["href"]).resolve()
        arrays.append(rioxarray.open_rasterio(href).squeeze("band", drop=True).rename(band))
    scene = xr.merge(arrays)
    scene = scene.rio.write_crs(f"EPSG:{EPSG}")
    geo = scene.rio.reproject("EPSG:4326")  # the whole scene, in memory
    ny, nx = geo.sizes["y"], geo.sizes["x"]

    def write(ij: tuple[int, int]) -> int:
        i, j = ij
        sub = geo.isel(y=slice(i * chip_size, (i + 1) * chip_size),
                       x=slice(j * chip_size, (j + 1) * chip_size))
        red = sub["red"].values
        if (red == 0).all():
            return 0  # outside the rotated footprint
        name = f"chip_{i:04d}_{j:04d}"
        sub.expand_dims(time=[np.datetime64("2021-06-01T10:00:00")]).to_netcdf(
            out / f"{name}.nc", engine="h5netcdf")
        rgb = np.stack([sub[b].values for b in ("red", "green", "blue")], axis=-1)
        Image.fromarray(np.clip(rgb / 3000 * 255, 0, 255).astype(np.uint8)).save(
            out / f"{name}.png")
        return 1

    out.mkdir(parents=True, exist_ok=True)
    cells = [(i, j) for i in range(ny // chip_size) for j in range(nx // chip_size)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(pool.map(write, cells))


def _warm_imports() -> None:
    """Import what the stage imports lazily, so library import time is not timed."""
    import geopandas  # noqa: F401
    import h5py  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import pyproj  # noqa: F401
    import rasterio  # noqa: F401
    import shapely  # noqa: F401
    from PIL import Image  # noqa: F401

    import geofm.chip  # noqa: F401
    import geofm.chip.scene  # noqa: F401


def _child(args: argparse.Namespace) -> None:
    _warm_imports()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    items, out = Path(args.items), Path(args.out)
    extra: dict[str, float] = {}
    if args.run_variant == "floor":
        chips, seconds, cpu = run_floor(items, out, args.chip_size)
    else:
        if args.run_variant == "baseline":
            chips = run_baseline(items, out, args.chip_size)
        else:
            workers = 1 if args.run_variant == "geofm" else None
            chips = run_geofm(items, out, args.chip_size, workers=workers)
            extra["workers"] = _workers_used(out)
        seconds = time.perf_counter() - start
        usage = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (usage.ru_utime + usage.ru_stime - cpu0 + children.ru_utime
               + children.ru_stime)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"variant": args.run_variant, "chips": chips, "seconds": seconds,
                      "cpu_seconds": cpu, "peak_rss_mb": usage.ru_maxrss / 1024, **extra}))


def _workers_used(out: Path) -> float:
    stage = json.loads((out / "run.json").read_text())["stages"]["chip"]
    return float(stage.get("workers_used") or stage["config"].get("workers") or 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="tile edge, 10 m px (10980 = full)")
    parser.add_argument("--quick", action="store_true", help="size 1024")
    parser.add_argument("--scenes", type=int, default=1, help="items (dates) of the tile")
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--work", default=None, help="folder for data and outputs (temp)")
    parser.add_argument("--variants", default=None,
                        help="comma list of floor, geofm, geofm-auto, baseline (default: "
                             "floor,geofm,baseline for one scene, floor,geofm,geofm-auto "
                             "for several)")
    parser.add_argument("--run-variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--items", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_variant:
        _child(args)
        return
    size = 1024 if args.quick else args.size
    variants = (args.variants or ("floor,geofm,baseline" if args.scenes == 1
                                  else "floor,geofm,geofm-auto")).split(",")
    if args.scenes > 1 and "baseline" in variants:
        variants.remove("baseline")
        print("baseline skipped: it chips one scene", file=sys.stderr)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_chip_"))
    t0 = time.perf_counter()
    items = make_tile(work / "data", size, scenes=args.scenes)
    print(f"{args.scenes} x tile {size} x {size} px x {len(BANDS)} bands + SCL written in "
          f"{time.perf_counter() - t0:.1f}s ({work})", file=sys.stderr)
    results = {}
    for variant in variants:
        out = work / f"out_{variant}"
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--run-variant", variant, "--items", str(items),
             "--out", str(out), "--chip-size", str(args.chip_size)],
            capture_output=True, text=True, check=False)
        if proc.returncode:
            raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["chips_per_s"] = res["chips"] / res["seconds"]
        res["chips_per_cpu_s"] = res["chips"] / res["cpu_seconds"]
        results[variant] = res
        print(json.dumps(res), file=sys.stderr)
    floor = results.get("floor")
    print(f"size {size}, {args.scenes} scene(s), chip {args.chip_size}, cpus "
          f"{len(os.sched_getaffinity(0))}, load {os.getloadavg()[0]:.2f}"
          + (f"; floor = {floor['chips']} reads in {floor['seconds']:.3f} s wall, "
             f"{floor['cpu_seconds']:.3f} s CPU" if floor else ""))
    print("| variant | workers | chips | wall s | chips/s | CPU s | chips/CPU-s | peak RSS (MB) "
          "| % of floor (wall) | % of floor (CPU) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for v, r in results.items():
        if v == "floor":
            continue
        share = (f"{100 * floor['seconds'] / r['seconds']:.1f} % | "
                 f"{100 * floor['cpu_seconds'] / r['cpu_seconds']:.1f} %" if floor else "- | -")
        print(f"| {v} | {r.get('workers', '-')} | {r['chips']} | {r['seconds']:.2f} | "
              f"{r['chips_per_s']:.2f} | {r['cpu_seconds']:.2f} | {r['chips_per_cpu_s']:.2f} | "
              f"{r['peak_rss_mb']:.0f} | {share} |")
    if {"geofm", "baseline"} <= results.keys():
        g, b = results["geofm"], results["baseline"]
        print(f"\nchips/s ratio {g['chips_per_s'] / b['chips_per_s']:.2f}x, "
              f"chips/CPU-s ratio {g['chips_per_cpu_s'] / b['chips_per_cpu_s']:.2f}x, "
              f"peak memory ratio {g['peak_rss_mb'] / b['peak_rss_mb']:.2f}x")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
