"""Per-chip timeline plots: signal, seasonal fit, threshold band, change date, thumbnails.

Drawn with :class:`matplotlib.figure.Figure` and the Agg canvas directly (no pyplot),
so nothing global (backend, rcParams, open figures) changes when plotting.
:func:`write_plots` draws the chips an analysis picks, with thumbnails from ``meta/``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from geofm.analyze.harmonic import harmonic_design
from geofm.analyze.series import NS_PER_DAY
from geofm.io import atomic_path
from geofm.log import progress as progress_bar
from geofm.tables import read_schema, read_table

if TYPE_CHECKING:
    from geofm.analyze.change import SeasonalFit
    from geofm.analyze.passes import Padded
    from geofm.analyze.update import Core, Options
    from geofm.layout import RunRoot


@dataclass
class Timeline:
    """What one chip's plot shows.

    Attributes:
        chip_id: the chip.
        days: float64 ``[T]`` observation dates, days since 1970-01-01 UTC.
        signal: float ``[T]`` the monitored signal.
        baseline: bool ``[T]`` observations used in the baseline fit.
        anomaly: bool ``[T]`` observations beyond the threshold.
        coef: float ``[9]`` seasonal model weights (:func:`harmonic_design` columns).
        intercept: seasonal model intercept.
        rmse: residual scale (signal units).
        threshold: anomaly threshold (in units of ``rmse``).
        status: ``change`` / ``no change`` / ``insufficient data``.
        change_day: change date (days since epoch) or None.
        signal_name: y-axis label, e.g. ``pc1``.
        before: path of the "before" thumbnail PNG, or None.
        after: path of the "after" thumbnail PNG, or None.
        score: ``signal`` is already a scaled anomaly score (model 0, band
            ``+-threshold``), as for the combined ``pcs`` signal.
    """

    chip_id: str
    days: np.ndarray
    signal: np.ndarray
    baseline: np.ndarray
    anomaly: np.ndarray
    coef: np.ndarray
    intercept: float
    rmse: float
    threshold: float
    status: str
    change_day: float | None
    signal_name: str
    before: Path | None = None
    after: Path | None = None
    score: bool = False


def _to_datetime(days: np.ndarray) -> np.ndarray:
    return (np.asarray(days, dtype=np.float64) * NS_PER_DAY).astype("datetime64[ns]")


def plot_timeline(timeline: Timeline, path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Write one chip's timeline plot as a PNG (atomically).

    Args:
        timeline: the chip's series and fit.
        path: output PNG path.
        dpi: resolution.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tl = timeline
    thumbs = [(label, p) for label, p in (("before", tl.before), ("after", tl.after))
              if p is not None and Path(p).exists()]
    fig = Figure(figsize=(10, 4.2 if not thumbs else 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    if thumbs:
        grid = fig.add_gridspec(2, 2, height_ratios=[1.0, 1.0])
        ax = fig.add_subplot(grid[0, :])
        for i, (label, p) in enumerate(thumbs):
            tax = fig.add_subplot(grid[1, i])
            from PIL import Image

            with Image.open(p) as img:
                tax.imshow(np.asarray(img.convert("RGB")))
            tax.set_title(f"{label}: {Path(p).parent.name}", fontsize=8)
            tax.set_axis_off()
    else:
        ax = fig.add_subplot(1, 1, 1)

    days = np.asarray(tl.days, dtype=np.float64)
    if days.size:
        dense = np.linspace(days.min(), days.max(), 400)
        curve = tl.intercept + harmonic_design(dense) @ np.asarray(tl.coef)
        if np.isfinite(tl.rmse) and np.isfinite(curve).all():
            band = tl.threshold * tl.rmse
            ax.fill_between(_to_datetime(dense), curve - band, curve + band, color="tab:blue",
                            alpha=0.15, label=f"threshold band (±{tl.threshold:g}"
                            f"{'' if tl.score else ' RMSE'})")
            ax.plot(_to_datetime(dense), curve, color="tab:blue", lw=1.2,
                    label="expected (0)" if tl.score else "seasonal fit (baseline)")
        base = np.asarray(tl.baseline, dtype=bool)
        anom = np.asarray(tl.anomaly, dtype=bool)
        t = _to_datetime(days)
        ax.plot(t, tl.signal, color="0.6", lw=0.8)
        ax.scatter(t[base], tl.signal[base], s=18, color="tab:green", label="baseline", zorder=3)
        rest = ~base & ~anom
        ax.scatter(t[rest], tl.signal[rest], s=18, color="k", label="monitoring", zorder=3)
        ax.scatter(t[anom], tl.signal[anom], s=26, color="tab:red", marker="x",
                   label="beyond threshold", zorder=4)
    if tl.change_day is not None:
        ax.axvline(_to_datetime(np.array([tl.change_day]))[0], color="tab:red", ls="--",
                   label=f"change {str(_to_datetime(np.array([tl.change_day]))[0])[:10]}")
    ax.set_ylabel(tl.signal_name)
    ax.set_title(f"{tl.chip_id}: {tl.status}")
    ax.legend(loc="best", fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return Path(path)


def _thumbnails(rr: RunRoot, chip_ids: set[str]) -> dict[tuple[str, int], Path]:
    """(chip_id, UTC day) -> thumbnail path for the given chips, from ``meta/``."""
    out: dict[tuple[str, int], Path] = {}
    for scene in rr.scene_ids(rr.meta_dir):
        path = rr.meta_path(scene)
        if "thumbnail_path" not in read_schema(path, made_by="chip").names:
            continue
        table = read_table(path, made_by="chip", columns=["chip_id", "date", "thumbnail_path"])
        frame = table.to_pandas()
        frame = frame[frame["chip_id"].isin(chip_ids) & frame["thumbnail_path"].notna()]
        for cid, date, rel in frame.itertuples(index=False):
            day = int(pd.Timestamp(date).value // NS_PER_DAY)
            out.setdefault((cid, day), rr.path / rel)
    return out


def write_plots(rr: RunRoot, chip_ids: np.ndarray, obs: Core, grid: Padded,
                out: dict[str, np.ndarray], fit: SeasonalFit, changed: np.ndarray,
                o: Options, plot_chips: Sequence[str], max_plots: int | None) -> int:
    """Plot the chips ``changed`` (int ``[n]`` rows of ``chip_ids``) and ``plot_chips``.

    ``changed`` is ordered by ``out["magnitude"]`` (largest first) and cut to
    ``max_plots`` (None: all); ``obs`` and ``grid`` are the assessed observations in
    their ``[chip, date]`` layout. Writes ``plots/<chip_id>.png``.

    Returns:
        The number of chips chosen for plotting.
    """
    magnitude = out["magnitude"]
    changed = changed[np.argsort(-np.nan_to_num(magnitude[changed], nan=0.0), kind="stable")]
    if max_plots is not None:
        changed = changed[:max(max_plots, 0)]
    position = {c: i for i, c in enumerate(chip_ids.tolist())}
    chosen = list(dict.fromkeys([*changed.tolist(), *(position[c] for c in plot_chips)]))
    if not chosen:
        return 0
    multi = isinstance(o.signal_pc, slice)
    thumbs = _thumbnails(rr, {str(chip_ids[c]) for c in chosen})
    days_grid = grid.take(obs.ns / NS_PER_DAY, np.nan)
    valid_grid = grid.take(np.isfinite(obs.sig), False)
    # One signal: plot it with its seasonal fit. Several PCs: plot the combined score,
    # whose "fit" is 0 and whose band is +-threshold.
    sig_grid = grid.take(obs.resid if multi else obs.sig, np.nan)
    base_grid = grid.take(obs.base, False)
    n_coef = fit.coef.shape[-1]
    for c in progress_bar(chosen, desc="analyze: plots", unit="plot", disable=not o.progress):
        valid = valid_grid[c]
        days = days_grid[c][valid]
        cid = str(chip_ids[c])
        whole = np.floor(days).astype(np.int64)
        if out["change"][c]:
            k = int(out["change_index"][c])
            first_after = int(valid[:k].sum())
            before_day = whole[first_after - 1] if first_after > 0 else whole[0]
            after_day = whole[min(first_after, whole.size - 1)]
            change_day: float | None = float(days_grid[c, k])
        elif whole.size:
            before_day, after_day, change_day = whole[0], whole[-1], None
        else:
            continue
        fitted = bool(fit.fitted[c])
        plot_timeline(Timeline(
            chip_id=cid, days=days, signal=sig_grid[c][valid],
            baseline=base_grid[c][valid], anomaly=out["anomaly"][c][valid],
            coef=fit.coef[c, 0] if not multi and fitted else np.zeros(n_coef),
            intercept=float(fit.intercept[c, 0]) if not multi and fitted else 0.0,
            rmse=float(fit.scale[c, 0]) if not multi and fitted else 1.0,
            threshold=o.threshold, status=str(out["status"][c]), change_day=change_day,
            signal_name=o.signal if not multi else f"anomaly score ({o.signal})",
            score=multi,
            before=thumbs.get((cid, int(before_day))), after=thumbs.get((cid, int(after_day)))),
            rr.plots_dir / f"{cid}.png")
    return len(chosen)

