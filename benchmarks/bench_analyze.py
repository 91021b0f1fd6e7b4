"""Time and peak memory of ``geofm analyze`` on synthetic embeddings (dimension 768).

Writes a run root with ``--chips`` chips x ``--dates`` dates of synthetic embeddings
(one ``embeddings/<scene>.parquet`` + ``meta/<scene>.parquet`` per date, written chunk by
chunk), then runs ``analyze`` in a fresh subprocess and reports its wall time and peak
RSS. Baselines measured in the same run:

- ``read``: a subprocess that only reads every embedding column once (the I/O floor;
  analyze streams the files twice);
- ``import``: peak RSS of a subprocess that only imports geofm.analyze;
- change detection alone on ``--detect-chips`` chips x ``--dates`` (in-process arrays,
  no I/O), against sklearn ``Lasso`` fitted chip by chip on ``--sklearn-chips`` chips
  (extrapolated linearly).

``--update`` measures the cost of an incremental update instead: ``--chips`` chips x
``--dates`` dates are analysed from scratch (the reference), then one more date is
written and ``analyze`` run again (an update: only the new file is read and scored);
both runs without plots or rasters, each in a fresh subprocess. Reported: both wall
times and the update's share of the full run (goal <= 5 %).

Usage::

    python benchmarks/bench_analyze.py --chips 20000 --dates 60
    python benchmarks/bench_analyze.py --update --chips 20000 --dates 60
    python benchmarks/bench_analyze.py --quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

DIM = 768


def write_run_root(root: Path, n_chips: int, n_dates: int, *, seed: int = 0,
                   change_fraction: float = 0.05, only: range | None = None) -> None:
    """Write ``n_dates`` dates of synthetic embeddings (``only``: just those date indexes).

    Each date draws its clouds and noise from its own seeded generator, so writing the
    dates in two goes gives the same files as writing them at once.
    """
    import geopandas as gpd
    import shapely

    from geofm.layout import RunRoot

    rr = RunRoot.of(root)
    rng = np.random.default_rng(seed)
    dates = pd.Timestamp("2021-01-05", tz="UTC") + pd.to_timedelta(
        np.arange(n_dates) * (730 // max(n_dates - 1, 1)), unit="D")
    ids = np.array([f"33UUP_64_{i // 1000:04d}_{i % 1000:04d}" for i in range(n_chips)])
    base = rng.standard_normal((n_chips, DIM), dtype=np.float32)
    season = rng.standard_normal(DIM, dtype=np.float32)
    step = rng.standard_normal(DIM, dtype=np.float32) * 2.0
    changed = rng.random(n_chips) < change_fraction
    change_at = rng.integers(n_dates // 2 + 2, n_dates - 3, n_chips)
    x = (np.arange(n_chips) % 1000) * 0.001 + 15.0
    y = (np.arange(n_chips) // 1000) * 0.001 + 50.0
    geoms = shapely.box(x, y, x + 0.001, y + 0.001)
    rr.embeddings_dir.mkdir(parents=True, exist_ok=True)
    rr.meta_dir.mkdir(parents=True, exist_ok=True)
    for t, date in enumerate(dates):
        if only is not None and t not in only:
            continue
        rng = np.random.default_rng([seed, t])
        scene = f"S2A_33UUP_{date:%Y%m%d}_0_L2A"
        present = rng.random(n_chips) > 0.15  # clouds: 15% of chips missing per date
        idx = np.flatnonzero(present)
        writer = None
        for lo in range(0, idx.size, 20_000):
            sub = idx[lo:lo + 20_000]
            emb = base[sub] + np.float32(np.sin(2 * np.pi * date.day_of_year / 365.25)) * season
            emb += 0.1 * rng.standard_normal(emb.shape, dtype=np.float32)
            emb[changed[sub] & (t >= change_at[sub])] += step
            table = pa.table({
                "chip_id": ids[sub], "scene_id": [scene] * sub.size,
                "date": pa.array(np.full(sub.size, date.value),
                                 type=pa.timestamp("ns", tz="UTC")),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM),
                "embedding_mean": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM),
            })
            if writer is None:
                writer = pq.ParquetWriter(rr.embeddings_path(scene), table.schema)
            writer.write_table(table)
        assert writer is not None
        writer.close()
        gpd.GeoDataFrame({"chip_id": ids[idx], "scene_id": scene, "date": date,
                          "valid": True, "thumbnail_path": None},
                         geometry=geoms[idx], crs="EPSG:4326").to_parquet(rr.meta_path(scene))


def run_child(code: str, *, cpu: bool = False) -> tuple[float, ...]:
    """Run python code in a fresh process; return (wall seconds, peak RSS MiB[, CPU s]).

    CPU seconds (user + system of the child, imports included) are less sensitive than
    wall time to other jobs on a shared machine.
    """
    probe = ("import resource, time, sys\nt0 = time.perf_counter()\n" + code +
             "\nru = resource.getrusage(resource.RUSAGE_SELF)"
             "\nprint('RESULT', time.perf_counter() - t0, ru.ru_maxrss / 1024, "
             "ru.ru_utime + ru.ru_stime)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT")][-1].split()
    return (float(line[1]), float(line[2]), float(line[3])) if cpu else \
        (float(line[1]), float(line[2]))


def detect_only(n_chips: int, n_dates: int, sk_chips: int) -> dict:
    from sklearn.linear_model import Lasso

    from geofm.analyze.change import detect_changes
    from geofm.analyze.harmonic import harmonic_design

    rng = np.random.default_rng(1)
    days = 18628.0 + np.tile(np.arange(n_dates) * 12.0, (n_chips, 1))
    y = 0.5 * np.sin(2 * np.pi * days / 365.25) + 0.1 * rng.standard_normal(days.shape)
    valid = rng.random(days.shape) > 0.15
    base = days < 18628 + 365
    t0 = time.perf_counter()
    detect_changes(days, y, valid, baseline=base, monitor=~base)
    t_batched = time.perf_counter() - t0
    design = harmonic_design(days[:sk_chips])
    t0 = time.perf_counter()
    for i in range(sk_chips):
        m = valid[i] & base[i]
        Lasso(alpha=0.001).fit(design[i, m], y[i, m]).predict(design[i])
    t_sk = (time.perf_counter() - t0) / sk_chips * n_chips
    return {"batched_s": t_batched, "sklearn_loop_s_extrapolated": t_sk}


def update_cost(work: Path, n_chips: int, n_dates: int, *, signal: str) -> dict:
    """Full analysis of ``n_dates`` dates, then an update with one more date; times."""
    root = work / f"update_{n_chips}_{n_dates}"
    total = n_dates + 1
    t0 = time.perf_counter()
    if not (root / "embeddings").exists():
        write_run_root(root, n_chips, total, only=range(n_dates))
    for folder in ("embeddings", "meta"):  # a kept --work root: back to n_dates dates
        for extra in sorted((root / folder).glob("*.parquet"))[n_dates:]:
            extra.unlink()
    t_gen = time.perf_counter() - t0
    call = (f"from geofm.analyze import analyze\nr = analyze({str(root)!r}, signal={signal!r}, "
            "max_plots=0, rasters=False, progress=False{extra})\nprint('COUNTS', r.counts)")
    t_full, rss_full, cpu_full = run_child(call.format(extra=", refit=True"), cpu=True)
    write_run_root(root, n_chips, total, only=range(n_dates, total))
    t_up, rss_up, cpu_up = run_child(call.format(extra=""), cpu=True)
    stage = json.loads((root / "run.json").read_text())["stages"]["analyze"]
    assert stage["updates"][-1]["kind"] == "update", stage["updates"][-1]
    return dict(chips=n_chips, dates=n_dates, gen_s=t_gen, full_s=t_full, update_s=t_up,
                share=t_up / t_full, full_cpu_s=cpu_full, update_cpu_s=cpu_up,
                cpu_share=cpu_up / cpu_full, full_rss_mib=rss_full, update_rss_mib=rss_up,
                new_observations=stage["counts"]["new_observations"],
                alerts=stage["counts"]["alerts"], changed=stage["counts"]["changed"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, nargs="+", default=[10_000, 20_000])
    parser.add_argument("--dates", type=int, default=60)
    parser.add_argument("--detect-chips", type=int, default=100_000)
    parser.add_argument("--sklearn-chips", type=int, default=300)
    parser.add_argument("--signal", default="pc1")
    parser.add_argument("--quick", action="store_true", help="2,000 chips x 24 dates")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--update", action="store_true",
                        help="time an update of one new date against the full analysis")
    args = parser.parse_args(argv)
    if args.update:
        with tempfile.TemporaryDirectory() as tmp:
            work = args.work or Path(tmp)
            print("| chips | dates | full analysis s | update (+1 date) s | update / full "
                  "| CPU s full / update | CPU update / full "
                  "| full peak RSS MiB | update peak RSS MiB | new observations | alerts |")
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            for n in args.chips:
                r = update_cost(work, n, args.dates, signal=args.signal)
                print(f"| {r['chips']} | {r['dates']} | {r['full_s']:.1f} | "
                      f"{r['update_s']:.1f} | {100 * r['share']:.1f} % | "
                      f"{r['full_cpu_s']:.1f} / {r['update_cpu_s']:.1f} | "
                      f"{100 * r['cpu_share']:.1f} % | "
                      f"{r['full_rss_mib']:.0f} | {r['update_rss_mib']:.0f} | "
                      f"{r['new_observations']} | {r['alerts']} |", flush=True)
        return 0
    if args.quick:
        args.chips, args.dates, args.detect_chips, args.sklearn_chips = [2000], 24, 20_000, 100
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        _, import_rss = run_child("import geofm.analyze, numpy, pyarrow")
        for n in args.chips:
            root = work / f"bench_{n}_{args.dates}"
            t0 = time.perf_counter()
            if not (root / "embeddings").exists():
                write_run_root(root, n, args.dates)
            t_gen = time.perf_counter() - t0
            size = sum(p.stat().st_size for p in (root / "embeddings").iterdir()) / 2**20
            t_read, rss_read = run_child(
                "import pyarrow.parquet as pq, pathlib\n"
                f"for p in sorted(pathlib.Path({str(root)!r}).glob('embeddings/*.parquet')):\n"
                "    pq.read_table(p, columns=['embedding']).column('embedding')"
                ".combine_chunks().flatten().to_numpy()")
            t_an, rss_an = run_child(
                "from geofm.analyze import analyze\n"
                f"r = analyze({str(root)!r}, signal={args.signal!r}, max_plots=20, "
                "overwrite=True, progress=False)\n"
                "print('COUNTS', r.counts)")
            counts = json.loads((root / "run.json").read_text())["stages"]["analyze"]["counts"]
            rows.append(dict(chips=n, dates=args.dates, rows=counts["embeddings"],
                             data_mib=size, gen_s=t_gen, read_s=t_read, analyze_s=t_an,
                             ratio=t_an / t_read, peak_rss_mib=rss_an, read_rss_mib=rss_read,
                             changed=counts["changed"], insufficient=counts["insufficient"]))
            print(rows[-1], flush=True)
        det = detect_only(args.detect_chips, args.dates, args.sklearn_chips)
    print(f"\nimport-only peak RSS: {import_rss:.0f} MiB")
    print("| chips | dates | rows | embeddings MiB | analyze s | read-once s | analyze / read "
          "| analyze peak RSS MiB | changed | insufficient |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['chips']} | {r['dates']} | {r['rows']} | {r['data_mib']:.0f} | "
              f"{r['analyze_s']:.1f} | {r['read_s']:.1f} | {r['ratio']:.1f} | "
              f"{r['peak_rss_mib']:.0f} | {r['changed']} | {r['insufficient']} |")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        slope = (b["analyze_s"] - a["analyze_s"]) / (b["rows"] - a["rows"])
        est = a["analyze_s"] + slope * (100_000 * args.dates - a["rows"])
        mem_slope = (b["peak_rss_mib"] - a["peak_rss_mib"]) / (b["chips"] - a["chips"])
        est_mem = a["peak_rss_mib"] + mem_slope * (100_000 - a["chips"])
        print(f"\nlinear extrapolation to 100,000 chips x {args.dates} dates: "
              f"~{est:.0f} s, ~{est_mem:.0f} MiB peak RSS")
    print(f"\nchange detection only, {args.detect_chips} chips x {args.dates} dates: batched "
          f"{det['batched_s']:.1f} s vs sklearn Lasso per chip ~"
          f"{det['sklearn_loop_s_extrapolated']:.0f} s (extrapolated from "
          f"{args.sklearn_chips} chips): "
          f"x{det['sklearn_loop_s_extrapolated'] / det['batched_s']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
