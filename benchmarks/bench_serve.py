"""Benchmark ``geofm serve`` on a 100,000-chip run: home page load, search, chip page.

The run root's tables are synthesised directly in the layout of docs/contracts.md
(no chip/embed/analyze run): ``--tiles`` tiles of a square grid of 64 px chips (640 m,
UTM 33N, footprints densified before projecting to WGS84 like ``geofm chip`` does),
``--dates`` acquisitions each (one ``meta/<scene>.parquet`` per tile and date, every
chip of the tile in it), ``analysis/changes.parquet`` (``--changed`` share of chips
changed, 80 % no change, the rest insufficient data), ``analysis/timeseries.parquet``
(every chip and date), and embeddings of the latest acquisition of every chip
(clustered unit vectors from ``bench_search.chunks``, ``--dim``), indexed with
``geofm.index.build_index`` (100,000 rows: the IVF_SQ ANN index is built).

Measured, with the server in this process (a thread, like the tests):

- server: building the chip layer (the first request's cost) and the warm response
  times and sizes of ``/api/run``, ``/api/chips``, ``/api/chips/footprints.bin``;
- browser (system Chromium via Playwright, if installed): from navigation to the map's
  first drawn tiles (``body[data-ready]``), against a cold server (layer not built yet)
  and a warm one; redrawing after a zoom-in of 3 levels;
- search: ``/api/search`` latency: the first query after start (it loads the table;
  ``geofm serve`` does one such query itself while it warms up), then random query
  chips (the chip page's similar chips query, the same with a bbox of one tile, and
  two chips with a negative);
- chip page: ``/api/chip`` latency.

    python benchmarks/bench_serve.py                 # 100,000 chips
    python benchmarks/bench_serve.py --chips 20000   # quicker
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import chunks  # noqa: E402  (clustered unit vectors, seeded)

CHIP_M = 640.0
X0, Y0 = 300_000.0, 5_400_000.0


def tile_code(t: int) -> str:
    """A distinct 5-character tile code per tile index (33U + two letters)."""
    return "33U" + chr(ord("A") + t // 26) + chr(ord("A") + t % 26)


def synth_root(root: Path, *, n_chips: int, n_tiles: int, n_dates: int, dim: int,
               changed: float, seed: int) -> dict:
    """Write the tables of a run root with about ``n_chips`` chips; return a summary."""
    import geopandas as gpd
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely
    from pyproj import Transformer

    rng = np.random.default_rng(seed)
    side = math.ceil(math.sqrt(n_chips / n_tiles))
    to_wgs = Transformer.from_crs(32633, 4326, always_xy=True)
    dates = pd.date_range("2021-01-15", periods=n_dates, freq="61D", tz="UTC")
    identity = {"preset": "base", "checkpoint": "bench.ckpt", "sha256": "0" * 64,
                "random_init": False, "dim": dim, "bands": "blue,green,red,nir"}
    for sub in ("meta", "embeddings", "analysis"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    all_ids, all_geoms = [], []
    vec_gen = chunks(n_tiles * side * side, dim, n_clusters=200, spread=0.5, seed=seed,
                     chunk=side * side)
    for t in range(n_tiles):
        tile = tile_code(t)
        rows, cols = np.divmod(np.arange(side * side), side)
        ox = X0 + t * (side * CHIP_M + 2_000.0)
        minx = ox + cols * CHIP_M
        maxy = Y0 - rows * CHIP_M
        boxes = shapely.segmentize(shapely.box(minx, maxy - CHIP_M, minx + CHIP_M, maxy),
                                   CHIP_M / 4)
        geoms = shapely.transform(boxes, lambda xy: np.column_stack(
            to_wgs.transform(xy[:, 0], xy[:, 1])))
        ids = [f"{tile}_64_{r:04d}_{c:04d}" for r, c in zip(rows, cols, strict=True)]
        all_ids += ids
        all_geoms.append(geoms)
        for d, date in enumerate(dates):
            scene = f"S2A_{tile}_{date:%Y%m%d}_0_L2A"
            meta = gpd.GeoDataFrame({
                "chip_id": ids, "scene_id": scene, "tile": tile, "sensor": "sentinel-2-l2a",
                "date": date, "row": rows.astype(np.int32), "col": cols.astype(np.int32),
                "epsg": np.int32(32633), "minx": minx, "miny": maxy - CHIP_M,
                "maxx": minx + CHIP_M, "maxy": maxy,
                "cloud_fraction": rng.uniform(0, 0.05, len(ids)).astype(np.float32),
                "nodata_fraction": np.float32(0), "valid": True, "chip_path": None,
                "thumbnail_path": None, "bands": "blue,green,red,nir"},
                geometry=geoms, crs=4326)
            meta.to_parquet(root / "meta" / f"{scene}.parquet", index=False)
            if d == n_dates - 1:  # embeddings of the latest acquisition
                _, vec = next(vec_gen)
                table = pa.table({
                    "chip_id": ids, "scene_id": [scene] * len(ids),
                    "date": pa.array([date] * len(ids), pa.timestamp("us", tz="UTC")),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), dim),
                    "embedding_mean": pa.FixedSizeListArray.from_arrays(
                        pa.array(vec.ravel()), dim),
                }).replace_schema_metadata({"geofm": json.dumps(identity)})
                pq.write_table(table, root / "embeddings" / f"{scene}.parquet")
    n = len(all_ids)
    draw = rng.uniform(size=n)
    status = np.where(draw < changed, "change",
                      np.where(draw < changed + 0.8, "no change", "insufficient data"))
    is_change = status == "change"
    change_date = pd.Series(pd.NaT, index=range(n), dtype="datetime64[ns, UTC]")
    change_date[is_change] = dates[rng.integers(n_dates // 2, n_dates, is_change.sum())]
    gpd.GeoDataFrame({
        "chip_id": all_ids, "n_observations": np.int32(n_dates),
        "n_baseline": np.int32(n_dates // 2), "status": status, "change": is_change,
        "change_date": change_date, "magnitude": np.where(
            is_change, rng.uniform(3, 15, n), rng.uniform(0, 2, n)).astype(np.float32),
        "rmse": rng.uniform(0.01, 0.1, n).astype(np.float32)},
        geometry=np.concatenate(all_geoms), crs=4326).to_parquet(
        root / "analysis" / "changes.parquet", index=False)
    m = n * n_dates
    sig = rng.normal(size=m).astype(np.float32)
    pq.write_table(pa.table({
        "chip_id": pa.array(np.repeat(all_ids, n_dates)).dictionary_encode(),
        "date": pa.array(np.tile(dates.to_numpy(), n), pa.timestamp("ns", tz="UTC")),
        "signal": sig, "predicted": (sig * 0.5).astype(np.float32),
        "residual": (sig * 0.5 / 0.05).astype(np.float32),
        "anomaly": np.abs(sig) > 2.5, "baseline": np.tile(np.arange(n_dates) < n_dates // 2,
                                                          n)}),
        root / "analysis" / "timeseries.parquet")
    manifest = {"stages": {
        "chip": {"status": "ok", "counts": {"scenes": n_tiles * n_dates, "chips": m,
                                            "valid_chips": m}},
        "embed": {"status": "ok", "model": identity, "counts": {"chips": n}},
        "analyze": {"status": "ok", "config": {"signal": "pc1", "threshold": 3.0},
                    "analysis": {"monitor_start": str(dates[n_dates // 2].date())}}}}
    (root / "run.json").write_text(json.dumps(manifest))
    return {"chips": n, "tiles": n_tiles, "dates": n_dates, "meta_files": n_tiles * n_dates,
            "changed": int(is_change.sum()), "dim": dim, "ids": all_ids}


def get(url: str) -> tuple[float, int, bytes]:
    """GET ``url``: seconds, status, body."""
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=120) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    return time.perf_counter() - t0, status, body


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def start_server(root: Path):
    """The app over ``root`` in a thread; returns (server, url)."""
    from geofm.serve import make_server

    server = make_server(root, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.url


def browser_timings(root: Path, runs: int) -> dict | None:
    """Navigation -> first drawn chip tiles, cold and warm server; zoom redraw."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.isfile(chromium):
        print("no system Chromium: browser timings skipped (make browser)")
        return None
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
    out: dict = {"cold_s": [], "warm_s": [], "app_ready_ms": [], "zoom_redraw_ms": []}
    server, url = start_server(root)  # cold: the first page load builds the chip layer
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=args)
        for run in range(runs + 1):
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            t0 = time.perf_counter()
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=120_000)
            seconds = time.perf_counter() - t0
            out["cold_s" if run == 0 else "warm_s"].append(seconds)
            out["app_ready_ms"].append(page.evaluate("window.geofmTimings.ready_ms"))
            out["zoom_redraw_ms"].append(page.evaluate("""() => {
                const m = geofm.map; const t = performance.now();
                m.setZoom(m.getZoom() + 3, {animate: false});
                return performance.now() - t; }"""))
            out["changes_rows"] = page.locator("#changes-table tbody tr").count()
            assert not errors, errors
            context.close()
        browser.close()
    server.shutdown()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chips", type=int, default=100_000)
    p.add_argument("--tiles", type=int, default=10)
    p.add_argument("--dates", type=int, default=6)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--changed", type=float, default=0.01)
    p.add_argument("--queries", type=int, default=30)
    p.add_argument("--browser-runs", type=int, default=3, help="warm page loads")
    p.add_argument("--root", help="keep the synthetic run here (default: a temp folder)")
    p.add_argument("--json", help="write the results as JSON here")
    args = p.parse_args()

    from geofm.index import build_index
    from geofm.serve.data import RunData

    tmp = None
    if args.root:
        root = Path(args.root)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
        root = Path(tmp.name) / "run"
    result: dict = {}
    if not (root / "index").is_dir():
        t0 = time.perf_counter()
        summary = synth_root(root, n_chips=args.chips, n_tiles=args.tiles,
                             n_dates=args.dates, dim=args.dim, changed=args.changed, seed=0)
        result["synth_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_index(root)
        result["index_s"] = time.perf_counter() - t0
        ids = summary.pop("ids")
        result["root"] = summary
        print(f"synthesised {summary} in {result['synth_s']:.1f} s, indexed in "
              f"{result['index_s']:.1f} s", flush=True)
    else:
        ids = RunData(root).layer().chip_ids

    # server: the layer (cold), then warm endpoint times
    import geopandas  # noqa: F401  (imported once: not part of the layer's cost)
    import shapely  # noqa: F401

    t0, c0 = time.perf_counter(), time.process_time()
    data = RunData(root)
    data.blob("chips.json")
    data.blob("footprints.bin")
    result["layer_build_s"] = time.perf_counter() - t0
    result["layer_build_cpu_s"] = time.process_time() - c0
    server, url = start_server(root)
    server.data = data  # the warm layer
    endpoints = {}
    for path in ("api/run", "api/chips", "api/chips/footprints.bin"):
        times = []
        for _ in range(5):
            seconds, status, body = get(url + path)
            assert status == 200, (path, status)
            times.append(seconds)
        endpoints[path] = {"median_ms": 1000 * statistics.median(times), "bytes": len(body)}
    result["endpoints"] = endpoints
    print(f"layer build {result['layer_build_s']:.2f} s (CPU {result['layer_build_cpu_s']:.2f} "
          f"s); endpoints {endpoints}", flush=True)

    # search and chip page
    rng = np.random.default_rng(1)
    latest = {c: None for c in ids}  # every chip is indexed (latest acquisition)
    pool = list(latest)
    tile0 = [c for c in pool if c.startswith(tile_code(0))]
    import geopandas as gpd

    changes = gpd.read_parquet(root / "analysis" / "changes.parquet", columns=["chip_id",
                                                                              "geometry"])
    west, south, east, north = changes[changes["chip_id"].isin(tile0)].total_bounds
    bbox = f"{west},{south},{east},{north}"
    variants = {
        "similar (k=8, distinct)": lambda q: f"chip={q[0]}&k=8&distinct=1",
        "k=10, bbox of one tile": lambda q: f"chip={q[0]}&k=10&bbox={bbox}",
        "2 chips + 1 negative, k=10": lambda q: f"chip={q[0]}&chip={q[1]}&neg={q[2]}&k=10",
    }
    searches = {}
    q = [pool[i] for i in rng.choice(len(pool), 3, replace=False)]
    seconds, status, body = get(url + "api/search?" + variants["similar (k=8, distinct)"](q))
    assert status == 200, body[:300]
    searches["first search after start (cold table)"] = {"ms": 1000 * seconds}
    print(f"first search (cold): {1000 * seconds:.0f} ms", flush=True)
    for name, make in variants.items():
        times, server_times = [], []
        for _ in range(args.queries):
            q = [pool[i] for i in rng.choice(len(pool), 3, replace=False)]
            seconds, status, body = get(url + "api/search?" + make(q))
            assert status == 200, body[:300]
            times.append(seconds)
            server_times.append(json.loads(body)["seconds"])
        searches[name] = {"p50_ms": 1000 * pct(times, 0.5), "p95_ms": 1000 * pct(times, 0.95),
                          "max_ms": 1000 * max(times),
                          "search_p50_ms": 1000 * pct(server_times, 0.5)}
        print(f"search {name}: {searches[name]}", flush=True)
    result["search"] = searches
    times = []
    for _ in range(args.queries):
        seconds, status, _ = get(url + "api/chip?id=" + pool[rng.integers(len(pool))])
        assert status == 200
        times.append(seconds)
    result["chip_page"] = {"p50_ms": 1000 * pct(times, 0.5), "p95_ms": 1000 * pct(times, 0.95)}
    print(f"chip page: {result['chip_page']}", flush=True)
    server.shutdown()

    result["browser"] = browser_timings(root, args.browser_runs)
    if result["browser"]:
        b = result["browser"]
        print(f"browser: cold {b['cold_s'][0]:.2f} s, warm "
              f"{', '.join(f'{s:.2f}' for s in b['warm_s'])} s, app ready ms "
              f"{[round(v) for v in b['app_ready_ms']]}, zoom redraw ms "
              f"{[round(v) for v in b['zoom_redraw_ms']]}, {b['changes_rows']} change rows",
              flush=True)
    result["load_average"] = os.getloadavg()
    print(f"load average {result['load_average']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
