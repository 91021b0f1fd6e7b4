"""Benchmark the search index: build time, query latency, recall@10 vs exact search.

Clustered unit vectors (seeded, generated in chunks so memory stays bounded) go into a
LanceDB table in the same layout as ``geofm.index`` (``vector`` column, cosine metric);
the ANN index is built with ``geofm.index.table.ann_parameters`` / ``create_ann_index``
and its query parameters are calibrated with ``geofm.index.recall.calibrate`` to
``--target-recall`` (the policy ``geofm index`` applies past ``ann_min_rows``). Recall@10
of that default is then measured against exact top-10 by numpy brute force over the
same vectors, for other queries (held-out points of the clusters, not in the table).
The exact LanceDB flat scan is timed as the baseline.

    python benchmarks/bench_search.py --n 1000000          # the full benchmark
    python benchmarks/bench_search.py --quick              # 20,000 vectors
    python benchmarks/bench_search.py --spread 2.0         # weakly clustered
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def chunks(n: int, dim: int, *, n_clusters: int, spread: float, seed: int, chunk: int,
           first: int = 0):
    """Yield (start, float32 [m, D] unit vectors) for n clustered vectors, deterministically.

    ``first`` (a multiple of ``chunk``) skips the rows before it: the same rows as the
    full sequence from there on (an append of rows ``first..n``).
    """
    centres = np.random.default_rng(seed).normal(size=(n_clusters, dim)).astype(np.float32)
    for start in range(first, n, chunk):
        m = min(chunk, n - start)
        rng = np.random.default_rng([seed, start])
        labels = rng.integers(0, n_clusters, m)
        v = centres[labels] + spread * rng.normal(size=(m, dim)).astype(np.float32)
        yield start, v / np.linalg.norm(v, axis=1, keepdims=True)


def queries(nq: int, dim: int, *, n_clusters: int, spread: float, seed: int) -> np.ndarray:
    """Held-out query vectors drawn from the same clusters (float32 [nq, D], unit)."""
    centres = np.random.default_rng(seed).normal(size=(n_clusters, dim)).astype(np.float32)
    rng = np.random.default_rng([seed, 10**12])
    v = centres[rng.integers(0, n_clusters, nq)] + spread * rng.normal(size=(nq, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def exact_topk(q: np.ndarray, gen, k: int) -> np.ndarray:
    """Ids of the exact top-k by cosine (brute force over the generated chunks)."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.zeros((len(q), k), np.int64)
    for start, v in gen:
        s = q @ v.T
        idx = np.argpartition(-s, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, idx, 1)], axis=1)
        cand_i = np.concatenate([best_i, idx + start], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, order, 1)
        best_i = np.take_along_axis(cand_i, order, 1)
    return best_i


def time_queries(table, q: np.ndarray, k: int, **opts) -> tuple[list[float], list[set]]:
    lat, got = [], []
    for vec in q:
        t = time.perf_counter()
        b = table.search(vec, vector_column_name="vector").distance_type("cosine")
        if "nprobes" in opts:
            b = b.nprobes(opts["nprobes"]).refine_factor(opts["refine_factor"])
        if opts.get("flat"):
            b = b.bypass_vector_index()
        res = b.select(["id"]).limit(k).to_arrow()
        lat.append((time.perf_counter() - t) * 1000)
        got.append(set(res.column("id").to_pylist()))
    return lat, got


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--spread", type=float, default=0.5,
                   help="noise std per dim relative to unit-variance centres")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--flat-queries", type=int, default=10)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=50_000)
    p.add_argument("--probe", action="append", default=[],
                   help="nprobes:refine_factor to measure besides the calibrated default and "
                   "the old fixed 32:20 (repeatable)")
    p.add_argument("--target-recall", type=float, default=None,
                   help="recall@10 to calibrate to (default: geofm index's)")
    p.add_argument("--index-type", default=None, help="IVF_PQ | IVF_SQ | IVF_FLAT | IVF_HNSW_SQ")
    p.add_argument("--append", type=int, default=0, metavar="F",
                   help="then append n/F more rows (a new date: F=60) and compare what "
                   "geofm index does now (no fold: new rows scanned exactly, recall "
                   "re-measured) with optimize() and with a re-train + calibration")
    p.add_argument("--old-recall", metavar="PATH",
                   help="also calibrate the same index with this older "
                   "geofm/index/recall.py (e.g. from `git show`) and time both")
    p.add_argument("--dir", help="work folder (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="20,000 vectors, 50 queries")
    p.add_argument("--json", help="write the results as JSON here")
    args = p.parse_args()
    if args.quick:
        args.n, args.queries, args.flat_queries = 20_000, 50, 5
    import lancedb
    import pyarrow as pa

    from geofm.index.recall import DEFAULT_TARGET_RECALL, calibrate
    from geofm.index.table import ann_parameters, create_ann_index

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_search_"))
    gen = dict(n_clusters=args.clusters, spread=args.spread, seed=args.seed)
    schema = pa.schema([pa.field("id", pa.int64()),
                        pa.field("vector", pa.list_(pa.float32(), args.dim))])

    def batches():
        for start, v in chunks(args.n, args.dim, chunk=args.chunk, **gen):
            yield pa.record_batch([pa.array(np.arange(start, start + len(v))),
                                   pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()),
                                                                     args.dim)],
                                  schema=schema)

    db = lancedb.connect(str(work / "index"))
    t0 = time.perf_counter()
    table = db.create_table("chips", data=batches(), schema=schema, mode="overwrite")
    t_write = time.perf_counter() - t0
    print(f"wrote {args.n} vectors in {t_write:.1f} s", flush=True)
    params = ann_parameters(args.n, args.dim, **(
        {"index_type": args.index_type} if args.index_type else {}))
    t0 = time.perf_counter()
    create_ann_index(table, "vector", params)
    t_index = time.perf_counter() - t0
    print(f"n={args.n} dim={args.dim}: write {t_write:.1f} s, "
          f"{params['index_type']} build {t_index:.1f} s "
          f"({params['num_partitions']} partitions, {params.get('num_sub_vectors')} sub-vectors)",
          flush=True)
    target = args.target_recall or DEFAULT_TARGET_RECALL
    cal = calibrate(table, "vector", num_partitions=params["num_partitions"],
                    target_recall=target, key="id")
    print(f"calibrated in {cal.seconds:.1f} s on {cal.queries} table rows: nprobes "
          f"{cal.nprobes} refine {cal.refine_factor} -> recall@10 {cal.recall:.3f} "
          f"(target {target}, met {cal.met}), p50 {cal.p50_ms:.1f} ms; trials "
          f"{cal.to_dict()['trials']}", flush=True)

    old_cal = None
    if args.old_recall:
        import importlib.util
        import sys

        spec = importlib.util.spec_from_file_location("old_recall", args.old_recall)
        old = importlib.util.module_from_spec(spec)
        sys.modules["old_recall"] = old  # dataclasses look their module up
        spec.loader.exec_module(old)
        old_cal = old.calibrate(table, "vector", num_partitions=params["num_partitions"],
                                target_recall=target, key="id")
        print(f"old calibration {old_cal.seconds:.1f} s on {old_cal.queries} rows: nprobes "
              f"{old_cal.nprobes} refine {old_cal.refine_factor} -> recall@10 "
              f"{old_cal.recall:.3f}; {len(old_cal.trials)} trials (new: {cal.seconds:.1f} s, "
              f"{len(cal.trials)} trials)", flush=True)
    q = queries(args.queries, args.dim, **gen)
    t0 = time.perf_counter()
    truth = exact_topk(q, chunks(args.n, args.dim, chunk=args.chunk, **gen), args.k)
    t_exact = (time.perf_counter() - t0) / len(q) * 1000
    truth_sets = [set(r.tolist()) for r in truth]

    flat_lat, flat_got = time_queries(table, q[: args.flat_queries], args.k, flat=True)
    flat_recall = np.mean([len(g & t) / args.k for g, t in zip(flat_got, truth_sets, strict=False)])
    rows = [{"mode": "flat (exact LanceDB scan)", "p50_ms": float(np.percentile(flat_lat, 50)),
             "p95_ms": float(np.percentile(flat_lat, 95)), "recall@10": float(flat_recall),
             "queries": len(flat_lat)}]
    probes = [f"{cal.nprobes}:{cal.refine_factor}", "32:20", *args.probe]
    if old_cal is not None:
        probes.append(f"{old_cal.nprobes}:{old_cal.refine_factor}")
    for n, spec in enumerate(dict.fromkeys(probes)):
        npb, rf = (int(x) for x in spec.split(":"))
        time_queries(table, q[:5], args.k, nprobes=npb, refine_factor=rf)  # warm caches
        lat, got = time_queries(table, q, args.k, nprobes=npb, refine_factor=rf)
        recall = np.mean([len(g & t) / args.k for g, t in zip(got, truth_sets, strict=True)])
        label = " (calibrated default)" if n == 0 else " (old fixed default)" \
            if spec == "32:20" else ""
        rows.append({"mode": f"{params['index_type']} nprobes={npb} refine={rf}{label}",
                     "p50_ms": float(np.percentile(lat, 50)),
                     "p95_ms": float(np.percentile(lat, 95)), "recall@10": float(recall),
                     "queries": len(lat)})
    result = {"n": args.n, "dim": args.dim, "clusters": args.clusters, "spread": args.spread,
              "write_s": t_write, "index_build_s": t_index, "calibration": cal.to_dict(),
              "build_and_calibrate_s": t_index + cal.seconds, "params": params,
              "numpy_bruteforce_ms_per_query": t_exact, "rows": rows,
              "old_calibration": old_cal.to_dict() if old_cal else None}
    for r in rows:
        print(f"{r['mode']:<52} p50 {r['p50_ms']:8.1f} ms  p95 {r['p95_ms']:8.1f} ms  "
              f"recall@10 {r['recall@10']:.3f}  ({r['queries']} queries)")
    print(f"numpy brute force: {t_exact:.1f} ms/query (batched, generation included)")
    if args.append:
        result["append"] = bench_append(table, args, gen, schema, q, cal, params)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def bench_append(table, args, gen, schema, q, cal, params) -> dict:
    """Append n/F rows and time the three ways of keeping the index (see ``--append``)."""
    import pyarrow as pa

    from geofm.index.recall import RecallProbe, calibrate, calibration_queries
    from geofm.index.table import (
        LATENCY_SLACK,
        LATENCY_SLACK_MS,
        SCAN_SLACK,
        _degraded,
        ann_parameters,
        create_ann_index,
    )

    if args.n % args.chunk:
        raise SystemExit("--append needs --n to be a multiple of --chunk")
    m = args.n // args.append
    total = args.n + m
    truth = [set(r.tolist()) for r in exact_topk(
        q, chunks(total, args.dim, chunk=args.chunk, **gen), args.k)]
    out: dict = {"rows_added": m, "rows": total}

    def queries_now(label, nprobes, refine):
        time_queries(table, q[:5], args.k, nprobes=nprobes, refine_factor=refine)
        lat, got = time_queries(table, q, args.k, nprobes=nprobes, refine_factor=refine)
        rec = float(np.mean([len(g & t) / args.k for g, t in zip(got, truth, strict=True)]))
        out[f"queries_{label}"] = {"nprobes": nprobes, "refine_factor": refine,
                      "p50_ms": float(np.percentile(lat, 50)),
                      "p95_ms": float(np.percentile(lat, 95)), "recall@10": rec}
        p50 = out[f"queries_{label}"]["p50_ms"]
        print(f"append {label}: nprobes {nprobes} refine {refine}: p50 {p50:.1f} ms, "
              f"recall@10 {rec:.3f} (held-out, {total} rows)",
              flush=True)

    for start, v in chunks(total, args.dim, chunk=args.chunk, first=args.n, **gen):
        t0 = time.perf_counter()
        table.add(pa.record_batch([pa.array(np.arange(start, start + len(v))),
                                   pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()),
                                                                     args.dim)],
                                  schema=schema))
        out["write_s"] = time.perf_counter() - t0
    out["unindexed_rows"] = int(table.index_stats("vector_idx").num_unindexed_rows)
    # 1. what geofm index does now: leave the rows unindexed, re-measure recall
    t0 = time.perf_counter()
    probe = RecallProbe(table, "vector", n_queries=calibration_queries(total), seed=1,
                        key="id")
    trial = probe.measure(cal.nprobes, cal.refine_factor)
    expected = args.n * min(1.0, cal.nprobes / params["num_partitions"]) + m
    scanned = probe.scanned_rows(cal.nprobes, cap=int(min(total, SCAN_SLACK * expected)))
    limit = max(LATENCY_SLACK * cal.p50_ms, cal.p50_ms + LATENCY_SLACK_MS)
    why = _degraded({"vector": {"recall": trial.recall, "p50_ms": trial.p50_ms,
                                "p50_limit_ms": limit, "scanned_rows": scanned,
                                "expected_rows": expected}}, total, cal.target)
    out["unindexed"] = {"maintenance_s": time.perf_counter() - t0, "recall_table": trial.recall,
                        "recall_se": trial.recall_se, "scanned_rows": scanned,
                        "expected_rows": expected, "p50_ms_table": trial.p50_ms,
                        "p50_limit_ms": limit, "geofm_index_would": why or "append"}
    print(f"append: geofm index would {'re-train: ' + why if why else 'append'}", flush=True)
    print(f"append: {m} rows left unindexed; re-measured in "
          f"{out['unindexed']['maintenance_s']:.1f} s: recall@10 {trial.recall:.3f} on "
          f"table rows, a query scans {scanned:.0f} rows (expected {expected:.0f})", flush=True)
    queries_now("unindexed", cal.nprobes, cal.refine_factor)
    # 2. optimize(): lancedb folds the rows into the index
    t0 = time.perf_counter()
    table.optimize()
    out["optimize_s"] = time.perf_counter() - t0
    out["optimize_scanned_rows"] = probe.scanned_rows(cal.nprobes, cap=total)
    print(f"append: optimize() {out['optimize_s']:.1f} s; a query then scans "
          f"{out['optimize_scanned_rows']:.0f} rows", flush=True)
    queries_now("optimized", cal.nprobes, cal.refine_factor)
    # 3. re-train and calibrate (what geofm index did before on every append)
    t0 = time.perf_counter()
    new_params = ann_parameters(total, args.dim, index_type=params["index_type"])
    create_ann_index(table, "vector", new_params)
    again = calibrate(table, "vector", num_partitions=new_params["num_partitions"],
                      target_recall=cal.target, key="id")
    out["retrain_s"] = time.perf_counter() - t0
    print(f"append: re-train + calibrate {out['retrain_s']:.1f} s", flush=True)
    queries_now("retrained", again.nprobes, again.refine_factor)
    return out


if __name__ == "__main__":
    main()
