"""Throughput of ``geofm embed`` (chips/s) against the reference solution's loop.

Writes a run root of real NetCDF chips (``--locations`` chip locations x ``--dates``
acquisitions, 4 bands, ``--chip-size`` px, one scene per date), then per preset:

- baseline (what the reference solution does): for each chip location, read its time
  stack synchronously in the main process, one fp32 forward per location (batch = number
  of dates), ``torch.no_grad``;
- geofm: :func:`geofm.embed.embed` end to end (global DataLoader with ``--workers``
  reader processes, batches across chips and scenes, ``inference_mode``, Parquet
  writing) for each ``--batch-sizes``; time from run.json (model loading excluded, as
  for the baseline).

``--device cuda`` additionally compares precisions (``--precisions fp32,bf16``) and
reports the fraction of the GPU's dense bf16 peak (``--peak-tflops``, default H100 SXM
989) reached, from the analytic FLOPs of the encoder's transformer (about 0.72 TFLOP per
256 px chip for ``large``).

``--loader-only`` times only the reading of those chips as ``embed`` reads them (its
:class:`~geofm.model.chips.ChipDataset`, ``read_chip_array`` per chip, in this
process, then through a torch DataLoader with ``--workers`` processes and its
collate), no model: the measure of issue 18 that embed reads chips written by the
chip stage at least as fast as before.

Examples::

    python benchmarks/bench_embed.py --quick
    python benchmarks/bench_embed.py --loader-only --locations 64 --dates 8 --repeat 3
    python benchmarks/bench_embed.py --device cuda --presets base,large --locations 64 \
        --dates 8 --batch-sizes 32,128 --precisions fp32,bf16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

BANDS = ("blue", "green", "red", "nir")
SENSOR = "sentinel-2-l2a"


def write_run_root(root: Path, *, locations: int, dates: int, size: int, seed: int = 0) -> None:
    """``dates`` scenes of ``locations`` valid chips each, chip stage layout."""
    import geopandas as gpd
    import pandas as pd
    from shapely.geometry import box

    from geofm.chipfile import write_chip
    from geofm.layout import RunRoot

    rng = np.random.default_rng(seed)
    rr = RunRoot(root)
    rr.meta_dir.mkdir(parents=True, exist_ok=True)
    for t in range(dates):
        scene_id = f"S2B_33UUP_{20210101 + t}_0_L2A"
        date = datetime(2021, 1, 1, 10, 30, tzinfo=UTC) + timedelta(days=5 * t)
        rows = []
        for c in range(locations):
            chip_id = f"33UUP_{size}_0000_{c:04d}"
            x0 = 500000 + 10 * size * c
            x = x0 + 10 * np.arange(size) + 5.0
            y = 5600000 - 10 * np.arange(size) - 5.0
            path = rr.chip_path(scene_id, chip_id)
            pixels = rng.integers(200, 4000, size=(len(BANDS), size, size)).astype(np.uint16)
            write_chip(path, pixels, bands=BANDS, x=x, y=y, epsg=32633, date=date,
                       attrs={"chip_id": chip_id, "scene_id": scene_id, "sensor": SENSOR})
            lon0 = 12.0 + 0.036 * c * size / 256
            rows.append(dict(
                chip_id=chip_id, scene_id=scene_id, tile="33UUP", sensor=SENSOR,
                date=pd.Timestamp(date), row=np.int32(0), col=np.int32(c),
                epsg=np.int32(32633), minx=float(x0), miny=5600000.0 - 10 * size,
                maxx=float(x0 + 10 * size), maxy=5600000.0, cloud_fraction=np.float32(0),
                nodata_fraction=np.float32(0), valid=True,
                chip_path=str(path.relative_to(root)), thumbnail_path=None,
                bands=",".join(BANDS), geometry=box(lon0, 50.5, lon0 + 0.036, 50.523)))
        gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326").to_parquet(
            rr.meta_path(scene_id))


def encoder_tflop_per_chip(preset: str, size: int) -> float:
    """Analytic forward FLOPs (TFLOP) of the transformer for one ``size`` px chip."""
    from geofm.model.presets import get_preset

    c = get_preset(preset)
    n = (size // c.patch_size) ** 2 + 1
    inner = c.heads * c.dim_head
    per_layer = (2 * n * c.dim * 3 * inner + 2 * n * inner * c.dim
                 + 2 * 2 * n * c.dim * c.mlp_dim + 2 * 2 * n * n * inner)
    return per_layer * c.depth / 1e12


def measure(fn, *args, **kwargs) -> tuple[int, float, float]:  # type: ignore[no-untyped-def]
    """Run ``fn`` (returns a chip count); return (chips, wall s, CPU s incl. worker processes)."""
    t0, c0 = time.perf_counter(), os.times()
    n = fn(*args, **kwargs)
    t1, c1 = time.perf_counter(), os.times()
    cpu = sum(c1[:4]) - sum(c0[:4])  # user + system, this process and its finished children
    return n, t1 - t0, cpu


def baseline(root: Path, preset: str, device: str) -> int:
    """The reference solution's loop (model loading included); returns the chip count."""
    import torch

    from geofm.chipfile import open_chip
    from geofm.layout import RunRoot
    from geofm.model import load_encoder, make_datacube
    from geofm.model.chips import read_scene_plan

    rr = RunRoot(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: expected in a benchmark
        enc = load_encoder(preset=preset, device=device)
    stacks: dict[str, list] = {}
    for scene_id in rr.scene_ids(rr.meta_dir):
        for task in read_scene_plan(rr, scene_id).tasks:
            stacks.setdefault(task.chip_id, []).append(task)
    n = 0
    for tasks in stacks.values():
        # the reference reads each NetCDF with xarray, synchronously, in the main process
        pixels = np.stack([open_chip(t.path)[list(BANDS)].to_array().values[:, 0]
                           .astype(np.float32) for t in tasks])
        cube = make_datacube(pixels, sensor=SENSOR, bands=BANDS, dates=[t.date for t in tasks],
                             lats=[t.lat for t in tasks], lons=[t.lon for t in tasks],
                             device=device)
        with torch.no_grad():
            out = enc(cube)
            cls, mean = out[:, 0].cpu().numpy(), out[:, 1:].mean(1).cpu().numpy()
        assert np.isfinite(cls).all() and np.isfinite(mean).all()
        n += len(tasks)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n


def geofm_embed(root: Path, preset: str, *, device: str, batch_size: int, workers: int,
                precision: str | None, compile: bool) -> int:
    """``geofm.embed.embed`` end to end (model loading included); returns the chip count."""
    from geofm.embed import embed

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = embed(root, model=preset, batch_size=batch_size, device=device,
                       workers=workers, precision=precision, compile=compile,
                       overwrite=True, progress=False)
    assert not record.failures, record.failures
    return record.counts["chips"]


def loader_only(root: Path, *, workers: int, batch_size: int) -> tuple[float, float, int]:
    """Read every chip of ``root`` as embed does; ``(in-process s, DataLoader s, chips)``."""
    import torch

    from geofm.layout import RunRoot
    from geofm.model.chips import (
        ChipDataset,
        batch_indices,
        collate,
        iter_tasks,
        read_scene_plan,
    )

    run = RunRoot(root)
    tasks = list(iter_tasks([read_scene_plan(run, s) for s in run.scene_ids(run.meta_dir)]))
    dataset = ChipDataset(tasks)
    t0 = time.perf_counter()
    for i in range(len(dataset)):
        assert dataset[i]["error"] is None, dataset[i]["error"]
    inline = time.perf_counter() - t0
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batch_indices(tasks, batch_size),
                                         collate_fn=collate, num_workers=workers)
    t0 = time.perf_counter()
    n = sum(len(batch["indices"]) for batch in loader)
    return inline, time.perf_counter() - t0, n


def warm_up(preset: str, device: str) -> None:
    """One small forward so that one-time torch start-up costs hit neither side."""
    import torch

    from geofm.model import load_encoder, make_datacube

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = load_encoder(preset=preset, device=device)
    px = np.full((2, len(BANDS), 32, 32), 1000, np.float32)
    cube = make_datacube(px, sensor=SENSOR, bands=BANDS, dates=["2021-01-01"] * 2,
                         lats=[50, 50], lons=[10, 10], device=device)
    with torch.inference_mode():
        enc(cube)


def best(repeat: int, fn, *args, **kwargs) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Best of ``repeat`` runs: (chips/s by wall time, CPU seconds per chip)."""
    runs = [measure(fn, *args, **kwargs) for _ in range(repeat)]
    return max(n / wall for n, wall, _ in runs), min(cpu / n for n, _, cpu in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small,base,large")
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--locations", type=int, default=8, help="chip locations")
    parser.add_argument("--dates", type=int, default=4, help="acquisitions (scenes)")
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--workers", type=int, default=max(1, min(4, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--precisions", default=None,
                        help="comma list for geofm runs (default: fp32 on cpu, "
                             "fp32,bf16 on cuda)")
    parser.add_argument("--compile", action="store_true", help="torch.compile in geofm runs")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="dense bf16 peak of the GPU (H100 SXM: 989)")
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true",
                        help="tiny+small, 4 locations x 4 dates, batch sizes 4,16")
    parser.add_argument("--root", type=Path, default=None, help="keep the chips here")
    parser.add_argument("--loader-only", action="store_true",
                        help="time only reading the chips as embed does (no model)")
    args = parser.parse_args(argv)
    if args.quick:
        args.presets, args.locations, args.dates, args.batch_sizes = "tiny,small", 4, 4, "4,16"
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = (args.precisions or ("fp32,bf16" if args.device.startswith("cuda")
                                      else "fp32")).split(",")
    root = args.root or Path(tempfile.mkdtemp(prefix="bench_embed_")) / "root"
    t0 = time.perf_counter()
    write_run_root(root, locations=args.locations, dates=args.dates, size=args.chip_size)
    n_chips = args.locations * args.dates
    print(f"# bench_embed: {n_chips} chips ({args.locations} locations x {args.dates} dates), "
          f"{args.chip_size} px, {len(BANDS)} bands, device {args.device}, "
          f"workers {args.workers}, torch threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}; chips written in {time.perf_counter() - t0:.1f} s\n")
    if args.loader_only:
        bs = int(args.batch_sizes.split(",")[-1])
        runs = [loader_only(root, workers=args.workers, batch_size=bs)
                for _ in range(args.repeat)]
        inline, pooled = min(r[0] for r in runs), min(r[1] for r in runs)
        print(f"loader only, best of {args.repeat} (load {os.getloadavg()[0]:.1f}): in-process "
              f"{n_chips / inline:.1f} chips/s ({1000 * inline / n_chips:.2f} ms/chip); "
              f"DataLoader ({args.workers} workers, batch {bs}) {n_chips / pooled:.1f} chips/s")
        return 0
    gpu = args.device.startswith("cuda")
    header = ("| preset | run | batch | precision | chips/s | vs baseline | CPU s/chip "
              "| CPU vs baseline |")
    if gpu:
        header += " TFLOP/s | % of bf16 peak |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for preset in args.presets.split(","):
        warm_up(preset, args.device)
        tflop = encoder_tflop_per_chip(preset, args.chip_size)
        base = best(args.repeat, baseline, root, preset, args.device)

        def row(run: str, batch: str, prec: str, res: tuple[float, float], *,
                preset: str = preset, base: tuple[float, float] = base,
                tflop: float = tflop) -> None:
            rate, cpu = res
            line = (f"| {preset} | {run} | {batch} | {prec} | {rate:.2f} | "
                    f"{rate / base[0]:.2f}x | {cpu:.2f} | {base[1] / cpu:.2f}x |")
            if gpu:
                line += f" {rate * tflop:.1f} | {100 * rate * tflop / args.peak_tflops:.1f}% |"
            print(line, flush=True)

        row("baseline (per-location fp32, sync reads)", str(args.dates), "fp32", base)
        for prec in precisions:
            for bs in (int(b) for b in args.batch_sizes.split(",")):
                res = best(args.repeat, geofm_embed, root, preset, device=args.device,
                           batch_size=bs, workers=args.workers, precision=prec,
                           compile=args.compile)
                row("geofm embed", str(bs), prec, res)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
