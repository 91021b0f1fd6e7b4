"""Benchmark the per-chip timeline plots (``geofm.analyze.plots``): seconds per plot.

Draws N synthetic timelines (~60 observations, seasonal signal, half with a change,
a quarter as a combined ``pcs`` score) without and with before/after thumbnails, three
ways in the same run: the baseline ``plot_timeline`` (a new constrained-layout figure
per chip) loaded from a git revision (``--baseline-ref``, default the code before the
reusable figures), today's ``plot_timeline`` called once per chip, and today's
``plot_timelines`` over the whole batch (what ``geofm analyze`` uses). Rounds alternate
the methods so machine load hits them alike; the table gives the median wall and CPU
seconds per plot and the baseline / batch ratio. Every PNG is checked to have the
baseline's pixel size.

    python benchmarks/bench_plots.py                 # 40 chips x 3 rounds
    python benchmarks/bench_plots.py --n 100 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: The last commit with one constrained-layout figure per plot.
BASELINE_REF = "63c0818a586f9c4bdb6dfd88c1b2ebf59cff3633"


def _baseline_module(ref: str) -> types.ModuleType:
    """``geofm/analyze/plots.py`` as of git revision ``ref``, as a module."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{ref}:geofm/analyze/plots.py"], cwd=root,
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType("geofm_plots_baseline")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{ref[:10]}:geofm/analyze/plots.py", "exec"), module.__dict__)
    return module


def _thumbnail(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """A smooth uint8 ``[size, size, 3]`` "scene" with a little noise (PNG-typical)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(1, 4, 2).tolist() + [rng.uniform(0, 6.3)]
        field = np.sin(2 * np.pi * fx * xx + phase) * np.cos(2 * np.pi * fy * yy)
        channels.append(110 + 60 * field + rng.normal(0, 6, field.shape))
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def _timelines(n: int, thumbs_dir: Path | None, seed: int) -> list[dict]:
    """Keyword arguments of N ``Timeline`` s (and their thumbnail PNGs under ``thumbs_dir``)."""
    from PIL import Image

    from geofm.analyze.harmonic import harmonic_design

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        days = np.sort(18628.0 + rng.choice(np.arange(0, 900, 5), 60, replace=False)
                       + rng.uniform(0, 0.5, 60))
        coef = np.zeros(9)
        coef[:4] = rng.normal(0, 1, 4)
        rmse = float(rng.uniform(0.05, 0.3))
        fit = harmonic_design(days) @ coef
        signal = fit + rng.normal(0, rmse, days.size)
        baseline = np.arange(days.size) < 24
        changed = i % 2 == 0
        k = int(rng.integers(30, 55))
        if changed:
            signal[k:] += rng.choice([-1, 1]) * rng.uniform(4, 8) * rmse
        score = i % 4 == 3
        if score:
            signal = (signal - fit) / rmse
        resid = signal if score else (signal - fit) / rmse
        anomaly = ~baseline & (np.abs(resid) > 3.0)
        kwargs = dict(
            chip_id=f"31TCJ_{i:05d}", days=days, signal=signal, baseline=baseline,
            anomaly=anomaly, coef=np.zeros(9) if score else coef, intercept=0.0,
            rmse=1.0 if score else rmse, threshold=3.0,
            status="change" if changed else "no change",
            change_day=float(days[k]) if changed else None,
            signal_name="anomaly score (pcs)" if score else "pc1", score=score)
        if thumbs_dir is not None:
            for key, day in (("before", days[k - 1 if changed else 0]),
                             ("after", days[k if changed else -1])):
                date = str(np.datetime64(int(day), "D"))
                path = thumbs_dir / date / f"{kwargs['chip_id']}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_thumbnail(rng)).save(path)
                kwargs[key] = path
        out.append(kwargs)
    return out


def _methods(old: types.ModuleType, new: types.ModuleType,
             specs: list[dict]) -> dict[str, Callable[[Path], object]]:
    """The three ways to draw ``specs``, each a function of the output folder."""

    def baseline(out: Path) -> None:
        for s in specs:
            old.plot_timeline(old.Timeline(**s), out / f"{s['chip_id']}.png")

    def per_chip(out: Path) -> None:
        for s in specs:
            new.plot_timeline(new.Timeline(**s), out / f"{s['chip_id']}.png")

    def batch(out: Path) -> None:
        new.plot_timelines((new.Timeline(**s), out / f"{s['chip_id']}.png") for s in specs)

    return {"baseline: plot_timeline per chip (old)": baseline,
            "plot_timeline per chip (new)": per_chip, "plot_timelines batch (new)": batch}


def _time(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(wall, CPU) seconds per plot of one call of ``fn`` that draws ``n`` plots."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="chips per layout and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-ref", default=BASELINE_REF,
                        help="git revision whose plot_timeline is the baseline")
    args = parser.parse_args()
    from PIL import Image

    from geofm.analyze import plots

    old = _baseline_module(args.baseline_ref)
    print(f"load: {os.getloadavg()}")
    print("| layout | method | wall s / plot | CPU s / plot | MB written |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ratios = {}
        for layout in ("no thumbnails", "thumbnails"):
            specs = _timelines(args.n, root / "thumbs" if layout == "thumbnails" else None,
                               args.seed)
            methods = _methods(old, plots, specs)
            methods["baseline: plot_timeline per chip (old)"](root / "warm")  # imports, fonts
            times: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
            for r in range(args.rounds):
                for name, fn in methods.items():
                    out = root / f"r{r}" / name.split(":")[0].replace(" ", "_")
                    times[name].append(_time(lambda fn=fn, out=out: fn(out), args.n))
            sizes = {}
            for name in methods:
                out = root / "r0" / name.split(":")[0].replace(" ", "_")
                pngs = sorted(out.glob("*.png"))
                assert len(pngs) == args.n, (name, len(pngs))
                for p in pngs:
                    with Image.open(p) as img:
                        sizes.setdefault(p.name, set()).add(img.size)
                mb = sum(p.stat().st_size for p in pngs) / 1e6
                wall = statistics.median(t[0] for t in times[name])
                cpu = statistics.median(t[1] for t in times[name])
                ratios.setdefault(layout, []).append((wall, cpu))
                print(f"| {layout} | {name} | {wall:.4f} | {cpu:.4f} | {mb:.2f} |")
            bad = {k: v for k, v in sizes.items() if len(v) != 1}
            assert not bad, f"pixel sizes differ from the baseline's: {bad}"
        for layout, ((ow, oc), (_, _), (bw, bc)) in ratios.items():
            print(f"{layout}: baseline / batch = {ow / bw:.2f}x wall, {oc / bc:.2f}x CPU")
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
