"""Change-detection accuracy on planted synthetic events: synth -> chip -> embed -> analyze.

For each seed: ``geofm.synth.synthesize`` writes a Sentinel-2 L2A time series with planted
clearings (``truth.json``), ``geofm.chip.chip`` cuts it on the truth's chip grid,
``geofm.embed.embed`` embeds it with a random-weight ``tiny`` encoder (or ``--checkpoint``), and
``geofm.analyze.analyze`` detects changes with each configuration asked for. Scores:

- recall: planted event cells detected / planted event cells (with enough data);
- precision: detections on event cells / all detections;
- false alarms per 20 unchanged chips: detections on non-event cells * 20 / non-event cells;
- date error: |index of detected date - index of truth ``first_changed_date``| counted in
  the chip's own valid acquisitions; share of detections within 2 acquisitions;
- switch hits: spurious detections dated at the chip's first acquisition on or after the
  2022-01-25 processing-baseline switch: on an unchanged chip, or on an event chip but
  before its ``first_changed_date`` (an event whose first clear acquisition is the first
  after the switch is not counted).

Usage::

    python benchmarks/bench_change_accuracy.py --seeds 0 1 2
    python benchmarks/bench_change_accuracy.py --quick
    python benchmarks/bench_change_accuracy.py --seeds 10 11 --grid   # tuning
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from geofm.chip import chip_id


def prepare(work: Path, seed: int, *, size: int, n_dates: int, n_events: int,
            chip_size: int, checkpoint: Path | None = None,
            time_location: str = "auto") -> tuple[Path, dict]:
    from geofm.chip import chip
    from geofm.embed import embed
    from geofm.synth import synthesize

    synth = synthesize(work / f"synth{seed}", seed=seed, size=size, n_dates=n_dates,
                       n_events=n_events, chip_size=chip_size)
    root = work / f"root{seed}"
    chip(synth / "items", root, chip_size=chip_size, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: expected here
        embed(root, model=None if checkpoint else "tiny", checkpoint=checkpoint,
              time_location=time_location, batch_size=32, progress=False, seed=seed)
    truth = json.loads((synth / "truth.json").read_text())
    return root, truth


def _ns(series: pd.Series) -> np.ndarray:
    utc = pd.to_datetime(series, utc=True).dt.tz_convert(None)
    return utc.to_numpy().astype("datetime64[ns]").astype(np.int64)


def score(root: Path, truth: dict, chip_size: int) -> dict:
    changes = pq.read_table(root / "analysis" / "changes.parquet",
                            columns=["chip_id", "status", "change", "change_date"]).to_pandas()
    ts = pq.read_table(root / "analysis" / "timeseries.parquet",
                       columns=["chip_id", "date"]).to_pandas()
    ts["chip_id"] = ts["chip_id"].astype(str)
    dates = {cid: np.sort(_ns(g["date"])) for cid, g in ts.groupby("chip_id")}
    events = {chip_id(e["tile"], chip_size, e["row"], e["col"]): e for e in truth["events"]}
    switch = pd.Timestamp(truth.get("baseline_switch", "2022-01-25"), tz="UTC")
    detected = changes[changes["change"]]
    tp = detected[detected["chip_id"].isin(events)]
    fp = detected[~detected["chip_id"].isin(events)]
    n_unchanged = int((~changes["chip_id"].isin(events)).sum())
    insufficient_events = int(changes[changes["chip_id"].isin(events)]["status"]
                              .eq("insufficient data").sum())
    errors = []
    for row in tp.itertuples(index=False):
        obs = dates[row.chip_id]
        truth_day = pd.Timestamp(events[row.chip_id]["first_changed_date"], tz="UTC")
        i_truth = int(np.searchsorted(obs, truth_day.value))
        i_det = int(np.searchsorted(obs, pd.Timestamp(row.change_date).value))
        errors.append(abs(i_det - i_truth))
    switch_hits = 0
    for row in detected.itertuples(index=False):
        obs = dates[row.chip_id]
        i_switch = int(np.searchsorted(obs, switch.value))
        at_switch = i_switch < obs.size and obs[i_switch] == pd.Timestamp(row.change_date).value
        truth_first = events.get(row.chip_id, {}).get("first_changed_date")
        # Spurious: an unchanged chip, or an event chip dated before its event.
        if at_switch and not (truth_first and pd.Timestamp(truth_first, tz="UTC") <=
                              pd.Timestamp(row.change_date)):
            switch_hits += 1
    n_events = len(events)
    return {"events": n_events, "tp": len(tp), "fp": len(fp), "n_unchanged": n_unchanged,
            "insufficient_events": insufficient_events,
            "insufficient": int(changes["status"].eq("insufficient data").sum()),
            "date_errors": errors, "switch_hits": switch_hits}


def summarise(parts: list[dict]) -> dict:
    tp = sum(p["tp"] for p in parts)
    fp = sum(p["fp"] for p in parts)
    ev = sum(p["events"] for p in parts)
    unch = sum(p["n_unchanged"] for p in parts)
    errs = [e for p in parts for e in p["date_errors"]]
    return {"recall": tp / ev if ev else float("nan"),
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "false_alarms_per_20": 20 * fp / unch if unch else float("nan"),
            "date_within_2": float(np.mean([e <= 2 for e in errs])) if errs else float("nan"),
            "median_date_error": float(np.median(errs)) if errs else float("nan"),
            "switch_hits": sum(p["switch_hits"] for p in parts), "tp": tp, "fp": fp,
            "events": ev, "unchanged": unch,
            "insufficient": sum(p["insufficient"] for p in parts)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=512, help="tile side in pixels")
    parser.add_argument("--n-dates", type=int, default=36)
    parser.add_argument("--n-events", type=int, default=6)
    parser.add_argument("--chip-size", type=int, default=64)
    parser.add_argument("--signal", nargs="+", default=["pc1"])
    parser.add_argument("--embedding", nargs="+", default=["cls"])
    parser.add_argument("--threshold", type=float, nargs="+", default=[3.0])
    parser.add_argument("--consecutive", type=int, nargs="+", default=[3])
    parser.add_argument("--grid", action="store_true",
                        help="tuning grid: signal pc1/pc2/cosine x embedding cls/mean")
    parser.add_argument("--quick", action="store_true", help="one seed, 256 px, 24 dates")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="embed with this checkpoint (e.g. a geofm pretrain encoder.ckpt) "
                             "instead of random tiny weights")
    parser.add_argument("--time-location", default="auto", choices=("auto", "encode", "zero"))
    parser.add_argument("--work", type=Path, default=None, help="keep data here")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse synth/chip/embed outputs already under --work")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.size, args.n_dates, args.n_events = args.seeds[:1], 256, 24, 3
    if args.grid:
        args.signal, args.embedding = ["pcs", "pc1", "pc3", "cosine"], ["cls", "mean"]
    from geofm.analyze import analyze

    configs = list(itertools.product(args.signal, args.embedding, args.threshold,
                                     args.consecutive))
    results: dict[tuple, list[dict]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for seed in args.seeds:
            t0 = time.perf_counter()
            if args.reuse and (work / f"root{seed}" / "embeddings").is_dir():
                root = work / f"root{seed}"
                truth = json.loads((work / f"synth{seed}" / "truth.json").read_text())
            else:
                root, truth = prepare(work, seed, size=args.size, n_dates=args.n_dates,
                                      n_events=args.n_events, chip_size=args.chip_size,
                                      checkpoint=args.checkpoint,
                                      time_location=args.time_location)
            t1 = time.perf_counter()
            for cfg in configs:
                signal, embedding, threshold, consecutive = cfg
                analyze(root, signal=signal, embedding=embedding, threshold=threshold,
                        consecutive=consecutive, max_plots=0, overwrite=True, progress=False)
                results[cfg].append(score(root, truth, args.chip_size))
            print(f"seed {seed}: synth+chip+embed {t1 - t0:.1f}s, analyze x{len(configs)} "
                  f"{time.perf_counter() - t1:.1f}s", flush=True)
    print(f"\nseeds {args.seeds}, size {args.size}, {args.n_dates} dates, "
          f"{args.n_events} events/seed, chip {args.chip_size}, weights "
          f"{args.checkpoint or 'random tiny'}, time/location {args.time_location}")
    print("| signal | embedding | threshold | k | recall | precision | false alarms / 20 "
          "unchanged | date within 2 acq. | median date err | switch hits | TP/events | FP/"
          "unchanged | insufficient |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cfg, parts in results.items():
        s = summarise(parts)
        print(f"| {cfg[0]} | {cfg[1]} | {cfg[2]:g} | {cfg[3]} | {s['recall']:.2f} | "
              f"{s['precision']:.2f} | {s['false_alarms_per_20']:.2f} | "
              f"{s['date_within_2']:.2f} | {s['median_date_error']:.1f} | {s['switch_hits']} | "
              f"{s['tp']}/{s['events']} | {s['fp']}/{s['unchanged']} | {s['insufficient']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
