"""Time and peak memory of ``geofm analyze`` on synthetic embeddings (dimension 768).

Writes a run root with ``--chips`` chips x ``--dates`` dates of synthetic embeddings
(one ``embeddings/<scene>.parquet`` + ``meta/<scene>.parquet`` per date, written chunk by
chunk), then, each in a fresh subprocess, measured in the same run:

- ``floor``: reading, once, every input column the stage reads (``chip_id``, ``date``,
  ``embedding`` of the embeddings files, the metadata columns of the meta files) with
  plain ``pyarrow.parquet.read_table``: the I/O floor (issue 18's goal: analyze within
  2x of it, under 2 GB peak RSS at 100,000 chips x 60 dates);
- ``analyze``: a full analysis (a refit), wall and CPU time, peak RSS, and its multiple
  of the floor;
- with ``--update``: then one more date is written and ``analyze`` runs again as an
  update (only the new file is read and scored), ``--repeat`` times from the same state
  (median reported, every run listed); both analyses without plots or rasters (issue
  20: the update's share of the full analysis, goal <= 5 %);
- ``import``: peak RSS of a subprocess that only imports geofm.analyze;
- change detection alone on ``--detect-chips`` chips x ``--dates`` (in-process arrays,
  no I/O), against sklearn ``Lasso`` fitted chip by chip on ``--sklearn-chips`` chips
  (extrapolated linearly); ``--no-detect`` skips it.

The machine's load (``uptime``) is printed beside every size.

Usage::

    python benchmarks/bench_analyze.py --chips 20000 --dates 60
    python benchmarks/bench_analyze.py --update --chips 100000 --dates 60 --work /tmp/b
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


#: Columns the stage reads from its inputs (the floor reads each once).
EMBEDDING_READ = ("chip_id", "date", "embedding")
META_READ = ("chip_id", "geometry", "date", "thumbnail_path", "tile", "epsg", "minx", "miny",
             "maxx", "maxy")


def prepare_root(root: Path, n_chips: int, n_dates: int) -> float:
    """Write (once) a root of ``n_dates`` dates whose generator has ``n_dates + 1``.

    The extra date is the one ``--update`` adds; a root kept in ``--work`` is pruned back
    to ``n_dates`` dates. Returns the seconds spent writing.
    """
    t0 = time.perf_counter()
    if not (root / "embeddings").exists():
        write_run_root(root, n_chips, n_dates + 1, only=range(n_dates))
    for folder in ("embeddings", "meta"):
        for extra in sorted((root / folder).glob("*.parquet"))[n_dates:]:
            extra.unlink()
    return time.perf_counter() - t0


def read_floor(root: Path) -> tuple[float, ...]:
    """Wall s, peak RSS MiB and CPU s of reading, once, every input column the stage reads.

    Plain ``pyarrow.parquet.read_table`` of ``chip_id``, ``date``, ``embedding`` of every
    embeddings file and of the metadata columns of every meta file, into Arrow tables
    that are then dropped (no conversion): the I/O floor of an analysis.
    """
    return run_child(
        "import pyarrow.parquet as pq, pathlib\n"
        f"root = pathlib.Path({str(root)!r})\n"
        "for p in sorted(root.glob('embeddings/*.parquet')):\n"
        f"    pq.read_table(p, columns={list(EMBEDDING_READ)!r})\n"
        "for p in sorted(root.glob('meta/*.parquet')):\n"
        "    names = pq.read_schema(p).names\n"
        f"    pq.read_table(p, columns=[c for c in {list(META_READ)!r} if c in names])",
        cpu=True)


def machine_load() -> str:
    """The load averages (``uptime``), recorded beside each measurement."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def measure(root: Path, n_chips: int, n_dates: int, *, signal: str, update: bool,
            max_plots: int, rasters: bool, repeat: int = 1) -> dict:
    """Floor, full analysis (a refit) and, with ``update``, an update of one more date.

    The update runs ``repeat`` times from the same state; its median is reported.
    """
    t_gen = prepare_root(root, n_chips, n_dates)
    size = sum(p.stat().st_size for p in (root / "embeddings").iterdir()) / 2**20
    load_before = machine_load()
    t_floor, rss_floor, cpu_floor = read_floor(root)
    call = (f"from geofm.analyze import analyze\nr = analyze({str(root)!r}, signal={signal!r}, "
            f"max_plots={max_plots}, rasters={rasters}, progress=False{{extra}})\n"
            "print('COUNTS', r.counts)")
    t_full, rss_full, cpu_full = run_child(call.format(extra=", refit=True"), cpu=True)
    stage = json.loads((root / "run.json").read_text())["stages"]["analyze"]
    out = dict(chips=n_chips, dates=n_dates, rows=stage["counts"]["embeddings"],
               data_mib=size, gen_s=t_gen, floor_s=t_floor, floor_cpu_s=cpu_floor,
               floor_rss_mib=rss_floor, full_s=t_full, full_cpu_s=cpu_full,
               full_rss_mib=rss_full, ratio=t_full / t_floor, changed=stage["counts"]["changed"],
               insufficient=stage["counts"]["insufficient"], load_before=load_before)
    if update:
        write_run_root(root, n_chips, n_dates + 1, only=range(n_dates, n_dates + 1))
        runs = [_update_once(root, call.format(extra=""), again=i > 0) for i in range(repeat)]
        t_up, rss_up, cpu_up = (float(np.median([r[k] for r in runs])) for k in range(3))
        stage = json.loads((root / "run.json").read_text())["stages"]["analyze"]
        assert stage["updates"][-1]["kind"] == "update", stage["updates"][-1]
        out.update(update_s=t_up, update_cpu_s=cpu_up, update_rss_mib=rss_up,
                   share=t_up / t_full, cpu_share=cpu_up / cpu_full,
                   update_runs=[tuple(round(v, 2) for v in r) for r in runs],
                   new_observations=stage["counts"]["new_observations"],
                   alerts=stage["counts"]["alerts"])
    out["load_after"] = machine_load()
    return out


def _update_once(root: Path, code: str, *, again: bool) -> tuple[float, ...]:
    """One update of the added date: (wall s, peak RSS MiB, CPU s) in a fresh process.

    The state before the first update is kept beside the root (``<root>.before``) and,
    ``again``, put back first, so that every run does the same work.
    """
    import shutil

    kept = root.with_name(root.name + ".before")
    if not again:
        shutil.rmtree(kept, ignore_errors=True)
        kept.mkdir()
        shutil.copytree(root / "analysis", kept / "analysis")
        shutil.copy2(root / "run.json", kept / "run.json")
    else:
        shutil.rmtree(root / "analysis")
        shutil.copytree(kept / "analysis", root / "analysis")
        shutil.copy2(kept / "run.json", root / "run.json")
    subprocess.run(["sync"], check=False)
    return run_child(code, cpu=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, nargs="+", default=[10_000, 20_000])
    parser.add_argument("--dates", type=int, default=60)
    parser.add_argument("--detect-chips", type=int, default=100_000)
    parser.add_argument("--sklearn-chips", type=int, default=300)
    parser.add_argument("--no-detect", action="store_true",
                        help="skip the change-detection-only comparison with sklearn")
    parser.add_argument("--signal", default="pc1")
    parser.add_argument("--quick", action="store_true", help="2,000 chips x 24 dates")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--update", action="store_true",
                        help="also time an update of one new date against the full analysis "
                        "(both without plots and rasters, as issue 20 measures it)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="runs of the update from the same state (the median is reported; "
                        "its first-touch memory costs vary from run to run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.chips, args.dates, args.detect_chips, args.sklearn_chips = [2000], 24, 20_000, 100
    # issue 20 measures the update against a full analysis without plots and rasters
    plots, rasters = (0, False) if args.update else (20, True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        _, import_rss = run_child("import geofm.analyze, numpy, pyarrow")
        for n in args.chips:
            rows.append(measure(work / f"bench_{n}_{args.dates}", n, args.dates,
                                signal=args.signal, update=args.update, max_plots=plots,
                                rasters=rasters, repeat=max(args.repeat, 1)))
            print(rows[-1], flush=True)
        det = None if args.no_detect else detect_only(args.detect_chips, args.dates,
                                                      args.sklearn_chips)
    print(f"\nimport-only peak RSS: {import_rss:.0f} MiB; analyze with max_plots={plots}, "
          f"rasters={rasters}")
    print("| chips | dates | rows | embeddings MiB | floor s (CPU s) | analyze s (CPU s) "
          "| analyze / floor | analyze peak RSS MiB | changed | insufficient |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['chips']} | {r['dates']} | {r['rows']} | {r['data_mib']:.0f} | "
              f"{r['floor_s']:.1f} ({r['floor_cpu_s']:.1f}) | {r['full_s']:.1f} "
              f"({r['full_cpu_s']:.1f}) | {r['ratio']:.2f} | {r['full_rss_mib']:.0f} | "
              f"{r['changed']} | {r['insufficient']} |")
    if args.update:
        print("\n| chips | dates | full analysis s | update (+1 date) s | update / full "
              "| CPU s full / update | CPU update / full | update peak RSS MiB "
              "| new observations | alerts |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['chips']} | {r['dates']} | {r['full_s']:.1f} | {r['update_s']:.1f} | "
                  f"{100 * r['share']:.1f} % | {r['full_cpu_s']:.1f} / {r['update_cpu_s']:.1f} "
                  f"| {100 * r['cpu_share']:.1f} % | {r['update_rss_mib']:.0f} | "
                  f"{r['new_observations']} | {r['alerts']} |")
        for r in rows:
            print(f"update runs {r['chips']} (wall s, peak RSS MiB, CPU s; median above): "
                  f"{r['update_runs']}")
    for r in rows:
        print(f"load {r['chips']}: before {r['load_before']!r}; after {r['load_after']!r}")
    if det is not None:
        print(f"\nchange detection only, {args.detect_chips} chips x {args.dates} dates: "
              f"batched {det['batched_s']:.1f} s vs sklearn Lasso per chip ~"
              f"{det['sklearn_loop_s_extrapolated']:.0f} s (extrapolated from "
              f"{args.sklearn_chips} chips): "
              f"x{det['sklearn_loop_s_extrapolated'] / det['batched_s']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
