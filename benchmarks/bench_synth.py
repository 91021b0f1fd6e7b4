"""Benchmark ``geofm synth``: wall/CPU time and output size, against a COG-write floor.

The baseline, measured in the same run, writes the same number of COGs of the same
shapes filled with a constant (no scene generation): the ratio shows what the scene
simulation costs on top of the unavoidable GeoTIFF I/O.

    python benchmarks/bench_synth.py --quick          # conftest size (128 px, 14 dates)
    python benchmarks/bench_synth.py                  # default (512 px, 36 dates)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _floor(out: Path, size: int, n_dates: int, n_tiles: int) -> float:
    import rasterio

    from geofm.sensors import get_sensor
    from geofm.synth.grid import make_canvas
    from geofm.synth.rasters import write_cog

    tile = make_canvas(size, 64 if size % 64 == 0 else size, 1).tiles[0]
    t0 = time.perf_counter()
    with rasterio.Env():
        for i in range(n_dates * n_tiles):
            for band in get_sensor("sentinel-2-l2a").bands:
                res = int(band.resolution)
                fill = np.full(tile.shape(res), 4 if band.is_mask else 1000,
                               np.uint8 if band.is_mask else np.uint16)
                write_cog(out / f"{i}" / f"{band.name}.tif", fill, tile.transform(res))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="conftest size: 128 px, 14 dates")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--n-dates", type=int, default=None)
    parser.add_argument("--n-tiles", type=int, default=1)
    args = parser.parse_args()
    from geofm.synth import synthesize

    if args.quick:
        kwargs = dict(seed=0, size=128, n_dates=14, start="2021-06-01", cadence_days=30,
                      n_events=1, chip_size=64)
    else:
        kwargs = dict(seed=0, size=512, n_dates=36, n_events=4)
    if args.size:
        kwargs["size"] = args.size
    if args.n_dates:
        kwargs["n_dates"] = args.n_dates
    kwargs["n_tiles"] = args.n_tiles
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        synthesize(tmp_path / "warm", **{**kwargs, "n_dates": 1, "n_events": 0})  # imports
        w0, c0 = time.perf_counter(), time.process_time()
        out = synthesize(tmp_path / "s2", **kwargs)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
        floor = _floor(tmp_path / "floor", kwargs["size"], kwargs["n_dates"], args.n_tiles)
    n_items = kwargs["n_dates"] * args.n_tiles
    print(f"| {kwargs['size']} px x {kwargs['n_dates']} dates x {args.n_tiles} tile(s) | "
          f"{wall:.2f} s | {cpu:.2f} s | {1000 * wall / n_items:.0f} ms | {mb:.1f} MB | "
          f"{floor:.2f} s | {wall / floor:.2f}x |")


if __name__ == "__main__":
    main()
