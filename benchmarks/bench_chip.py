"""Benchmark the chip stage: chips/s and peak memory, geofm vs the reference approach.

Variants (each runs in its own subprocess; peak memory = that process's peak RSS, which
includes GDAL's native allocations that tracemalloc cannot see):

- ``geofm``: ``geofm.chip.chip`` on the native grid (strip-wise windowed reads, SCL
  screening, NetCDF + PNG per valid chip, GeoParquet meta), ``workers=1``.
- ``baseline``: what the reference solution does: open the whole scene with rioxarray,
  reproject it to EPSG:4326 in memory, cut chips of ``chip_size`` pixels from the
  reprojected array, write each chip's NetCDF (xarray ``to_netcdf``) and PNG from a
  thread pool.

The synthetic tile is one Sentinel-2-like item: 4 x 10 m uint16 COGs (``--size`` px
square, smooth fields + noise, DEFLATE) and a 20 m SCL COG, plus its STAC item JSON.

Usage::

    python benchmarks/bench_chip.py --size 2048            # quick
    python benchmarks/bench_chip.py --size 10980 --work /big/tmp
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


def make_tile(folder: Path, size: int, seed: int = 0) -> Path:
    """Write the synthetic item + COGs; return the items folder."""
    import rasterio
    from affine import Affine
    from rasterio.shutil import copy as rio_copy

    rng = np.random.default_rng(seed)
    item_id = f"S2A_33UUP_20210601_0_L2A_{size}"
    assets = folder / "assets" / item_id
    assets.mkdir(parents=True, exist_ok=True)
    hrefs = {}
    block = 512
    for key, res, dtype in [(b, 10, "uint16") for b in BANDS] + [("scl", 20, "uint8")]:
        n = size * 10 // res
        path = assets / f"{key}.tif"
        hrefs[key] = f"../assets/{item_id}/{key}.tif"
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
    items = folder / "items"
    items.mkdir(exist_ok=True)
    item = {"type": "Feature", "stac_version": "1.0.0", "id": item_id,
            "collection": "sentinel-2-l2a", "geometry": _footprint(size), "bbox": None,
            "links": [],
            "properties": {"datetime": "2021-06-01T10:00:00Z", "proj:epsg": EPSG,
                           "grid:code": "MGRS-33UUP", "s2:processing_baseline": "02.14"},
            "assets": {k: {"href": h} for k, h in hrefs.items()}}
    (items / f"{item_id}.json").write_text(json.dumps(item))
    return items


def run_geofm(items: Path, out: Path, chip_size: int) -> int:
    """The geofm chip stage; returns the number of chips written."""
    from geofm.chip import chip

    record = chip(items, out, chip_size=chip_size, bands=",".join(BANDS), max_cloud=0.05,
                  progress=False, overwrite=True)
    if record.failures:
        raise SystemExit(f"geofm variant failed: {record.failures}")
    return record.counts["valid_chips"]


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


def _child(args: argparse.Namespace) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    args.cpu0 = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    fn = run_geofm if args.run_variant == "geofm" else run_baseline
    chips = fn(Path(args.items), Path(args.out), args.chip_size)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"variant": args.run_variant, "chips": chips, "seconds": seconds,
                      "cpu_seconds": usage.ru_utime + usage.ru_stime - args.cpu0,
                      "peak_rss_mb": usage.ru_maxrss / 1024}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="tile edge, 10 m px (10980 = full)")
    parser.add_argument("--quick", action="store_true", help="size 1024")
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--work", default=None, help="folder for data and outputs (temp)")
    parser.add_argument("--variants", default="geofm,baseline")
    parser.add_argument("--run-variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--items", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_variant:
        _child(args)
        return
    size = 1024 if args.quick else args.size
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_chip_"))
    t0 = time.perf_counter()
    items = make_tile(work / "data", size)
    print(f"tile {size} x {size} px x {len(BANDS)} bands + SCL written in "
          f"{time.perf_counter() - t0:.1f}s ({work})", file=sys.stderr)
    results = {}
    for variant in args.variants.split(","):
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
    print("| variant | chips | wall s | chips/s | CPU s | chips/CPU-s | peak RSS (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for v, r in results.items():
        print(f"| {v} | {r['chips']} | {r['seconds']:.1f} | {r['chips_per_s']:.2f} | "
              f"{r['cpu_seconds']:.1f} | {r['chips_per_cpu_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    if {"geofm", "baseline"} <= results.keys():
        g, b = results["geofm"], results["baseline"]
        print(f"\nsize {size}, chip {args.chip_size}, cpus {os.cpu_count()}: "
              f"chips/s ratio {g['chips_per_s'] / b['chips_per_s']:.2f}x, "
              f"chips/CPU-s ratio {g['chips_per_cpu_s'] / b['chips_per_cpu_s']:.2f}x, "
              f"peak memory ratio {g['peak_rss_mb'] / b['peak_rss_mb']:.2f}x")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
