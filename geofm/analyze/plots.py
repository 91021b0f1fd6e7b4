"""Per-chip timeline plots: signal, seasonal fit, threshold band, change date, thumbnails.

Drawn with :class:`matplotlib.figure.Figure` and the Agg canvas directly (no pyplot),
so nothing global (backend, rcParams, open figures) changes when plotting.
:func:`plot_timelines` draws a batch on one reusable figure per layout (with / without
thumbnails): a fixed layout instead of a layout engine, the artists' data replaced
per chip, the legend drawn once per set of entries and laid over each plot where it
covers the fewest data (as ``loc="best"``), PNGs written with fast zlib settings; each plot
is the same as :func:`plot_timeline` draws for that chip alone, 3-4x faster than a new
constrained-layout figure per chip (``benchmarks/bench_plots.py``). :func:`write_plots`
draws the chips an analysis picks, with thumbnails from ``meta/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
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
    from matplotlib.artist import Artist
    from matplotlib.image import FigureImage

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


#: Figure size (width, height), inches, without and with the thumbnail row.
_SIZE = (10.0, 4.2)
_SIZE_THUMBS = (10.0, 6.5)
#: Fixed margins around the timeline axes, inches (room for the y tick labels and axis
#: label, the title, the date tick labels); the left one widens for a chip whose y
#: labels need more (see :meth:`_TimelineFigure.render`).
_LEFT, _RIGHT, _TOP, _BOTTOM = 0.75, 0.4, 0.32, 0.35
#: Timeline axes height above the thumbnail row, and that row's height, inches.
_PLOT_HEIGHT_THUMBS, _THUMB_HEIGHT, _THUMB_BOTTOM, _THUMB_GAP = 2.85, 2.8, 0.05, 0.2
#: zlib level of the PNGs: 1 with the run-length strategy (plots are mostly flat colour)
#: writes 2-4x faster than the default 6 and, with RGB instead of RGBA, files of about
#: the same size.
_PNG_LEVEL = 1
#: Smallest gap between the y-axis label and the figure's left edge, pixels.
_LABEL_PAD_PX = 3.0
#: Legend font size (points) and its gap to the axes edge (in font sizes), as
#: ``ax.legend(fontsize=7)`` with matplotlib's default ``borderaxespad``.
_LEGEND_FONTSIZE, _LEGEND_PAD = 7.0, 0.5
#: Legend places tried in order (matplotlib's ``loc`` codes 1-10: upper right, upper
#: left, lower left, lower right, right, center left, center right, lower center,
#: upper center, center), as (x, y) anchors: 0 left / bottom, 0.5 centre, 1 right / top.
_LEGEND_PLACES = ((1, 1), (0, 1), (0, 0), (1, 0), (1, 0.5), (0, 0.5), (1, 0.5), (0.5, 0),
                  (0.5, 1), (0.5, 0.5))


def _to_datetime(days: np.ndarray) -> np.ndarray:
    return (np.asarray(days, dtype=np.float64) * NS_PER_DAY).astype("datetime64[ns]")


def _read_thumbnail(path: Path) -> np.ndarray | None:
    """uint8 ``[H, W, 3]`` pixels of a thumbnail PNG, or None if the file is missing."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        return None


def _legend_layer(handles: Sequence[Artist], labels: Sequence[str], *, dpi: float) -> np.ndarray:
    """uint8 RGBA ``[h, w, 4]`` pixels of a legend alone, on a transparent background.

    Drawn once per distinct set of entries and laid over each plot (alpha-blended, so
    its translucent frame shows the data below as a legend drawn in the axes does).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), dpi=dpi)
    fig.set_layout_engine("none")
    fig.patch.set_alpha(0.0)
    canvas = FigureCanvasAgg(fig)
    legend = fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.01, 0.99),
                        borderaxespad=0.0, fontsize=_LEGEND_FONTSIZE)
    canvas.draw()
    box = legend.get_window_extent()
    pixels = np.asarray(canvas.buffer_rgba())
    top = pixels.shape[0]  # display y runs up, rows down; 1 px margin for the frame line
    return pixels[max(int(top - box.y1) - 1, 0):int(np.ceil(top - box.y0)) + 1,
                  max(int(box.x0) - 1, 0):int(np.ceil(box.x1)) + 1].copy()


class _TimelineFigure:
    """One reusable figure of one layout (with or without the thumbnail row).

    The figure, its axes and every artist are made once, in a fixed layout (no layout
    engine); :meth:`render` sets one chip's data on them, rescales and draws, and
    :meth:`write` saves the pixels. Everything a chip sets is set again (or emptied)
    by the next, so a plot does not depend on the chips drawn before it. The legend
    is an image made once per set of entries (``legends``, shared between layouts)
    and placed, like ``loc="best"``, where it covers the fewest data.
    """

    def __init__(self, *, thumbs: bool, dpi: int,
                 legends: dict[tuple[str, ...], np.ndarray]) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.collections import PolyCollection
        from matplotlib.dates import date2num
        from matplotlib.figure import Figure

        width, height = _SIZE_THUMBS if thumbs else _SIZE
        self.width, self.legends = width, legends
        self.fig = Figure(figsize=(width, height), dpi=dpi)
        self.fig.set_layout_engine("none")  # whatever rcParams say: the fixed layout below
        self.canvas = FigureCanvasAgg(self.fig)
        plot_height = _PLOT_HEIGHT_THUMBS if thumbs else height - _TOP - _BOTTOM
        self.rect = (_LEFT / width, 1.0 - (_TOP + plot_height) / height,
                     1.0 - (_LEFT + _RIGHT) / width, plot_height / height)
        # Observation days (since 1970-01-01) -> matplotlib date numbers.
        self.epoch = float(date2num(np.datetime64("1970-01-01T00:00:00")))
        ax = self.ax = self.fig.add_axes(self.rect)
        ax.xaxis_date()
        ax.xaxis.set_label_coords(0.5, 0.0)  # no x label: nothing to place
        # Same artists, order and z-order as one-off fill_between / plot / scatter / axvline.
        self.band = PolyCollection([], color="tab:blue", alpha=0.15)
        ax.add_collection(self.band, autolim=False)
        (self.fit,) = ax.plot([], [], color="tab:blue", lw=1.2)
        (self.line,) = ax.plot([], [], color="0.6", lw=0.8)
        self.base = ax.scatter([], [], s=18, color="tab:green", zorder=3)
        self.rest = ax.scatter([], [], s=18, color="k", zorder=3)
        self.anom = ax.scatter([], [], s=26, color="tab:red", marker="x", zorder=4)
        self.change = ax.axvline(0.0, color="tab:red", ls="--")
        ax.set_title(" ", y=1.0)  # an explicit y: no search for ticks above the axes
        self.legend: FigureImage | None = None
        self.thumbs = []
        if thumbs:
            cell = (width - _LEFT - _RIGHT - _THUMB_GAP) / 2
            for i in range(2):
                tax = self.fig.add_axes(((_LEFT + i * (cell + _THUMB_GAP)) / width,
                                         _THUMB_BOTTOM / height, cell / width,
                                         _THUMB_HEIGHT / height))
                image = tax.imshow(np.zeros((1, 1, 3), np.uint8))
                tax.set_title(" ", fontsize=8, y=1.0)
                tax.set_axis_off()
                self.thumbs.append((tax, image))

    def render(self, tl: Timeline, thumbs: Sequence[tuple[str, np.ndarray]]) -> None:
        """Draw one chip: ``thumbs`` are (title, uint8 ``[H, W, 3]``) for the thumbnail row."""
        ax, epoch, empty = self.ax, self.epoch, np.empty((0, 2))
        days = np.asarray(tl.days, dtype=np.float64)
        signal = np.asarray(tl.signal, dtype=np.float64)
        handles: list[Artist] = []
        labels: list[str] = []
        points = [empty]  # data-coordinate (x, y) arrays, for the limits
        lines: list[np.ndarray] = []  # the drawn lines and polygons, for the legend place
        offsets = empty  # the scatter points
        self.band.set_verts([])
        self.fit.set_data([], [])
        for artist in (self.base, self.rest, self.anom):
            artist.set_offsets(empty)
        self.line.set_data([], [])
        if days.size:
            dense = np.linspace(days.min(), days.max(), 400)
            curve = tl.intercept + harmonic_design(dense) @ np.asarray(tl.coef)
            if np.isfinite(tl.rmse) and np.isfinite(curve).all():
                band = tl.threshold * tl.rmse
                x = dense + epoch
                lower = np.column_stack([x, curve - band])
                upper = np.column_stack([x, curve + band])
                self.band.set_verts([np.concatenate([lower, upper[::-1]])])
                self.fit.set_data(x, curve)
                points += [lower, upper]
                lines += [np.concatenate([lower, upper[::-1]]), np.column_stack([x, curve])]
                handles += [self.band, self.fit]
                labels += [f"threshold band (±{tl.threshold:g}{'' if tl.score else ' RMSE'})",
                           "expected (0)" if tl.score else "seasonal fit (baseline)"]
            base = np.asarray(tl.baseline, dtype=bool)
            anom = np.asarray(tl.anomaly, dtype=bool)
            xy = np.column_stack([days + epoch, signal])
            self.line.set_data(xy[:, 0], xy[:, 1])
            self.base.set_offsets(xy[base])
            self.rest.set_offsets(xy[~base & ~anom])
            self.anom.set_offsets(xy[anom])
            points.append(xy)
            lines.append(xy)
            offsets = xy
            handles += [self.base, self.rest, self.anom]
            labels += ["baseline", "monitoring", "beyond threshold"]
        title = f"{tl.chip_id}: {tl.status}"
        x_change = None
        if tl.change_day is not None:
            x_change = float(tl.change_day) + epoch
            self.change.set_data([x_change, x_change], [0.0, 1.0])  # y: axes fraction
            handles.append(self.change)
            labels.append("change date")  # the date is in the title: one legend per run
            title += f", change date {str(_to_datetime(np.array([tl.change_day]))[0])[:10]}"
        else:
            self.change.set_data([], [])
        self.change.set_visible(tl.change_day is not None)
        # Autoscale from this chip's data only, as a fresh axes would.
        ax.dataLim.set_points(np.array([[np.inf, np.inf], [-np.inf, -np.inf]]))
        ax.ignore_existing_data_limits = True
        xy = np.concatenate(points)
        xy = xy[np.isfinite(xy).all(axis=1)]
        if xy.size:
            ax.update_datalim(xy)
        if x_change is not None:
            ax.update_datalim([(x_change, 0.0)], updatey=False)
        ax.autoscale_view()
        ax.set_ylabel(tl.signal_name)
        ax.title.set_text(title)
        layer = None
        if handles:
            key = tuple(labels)
            if key not in self.legends:
                self.legends[key] = _legend_layer(handles, labels, dpi=self.fig.dpi)
            layer = self.legends[key]
        for i, (tax, image) in enumerate(self.thumbs):
            tax.set_visible(i < len(thumbs))
            if i < len(thumbs):
                name, pixels = thumbs[i]
                height, width = pixels.shape[:2]
                image.set_data(pixels)
                image.set_extent((-0.5, width - 0.5, height - 0.5, -0.5))
                tax.set_xlim(-0.5, width - 0.5)
                tax.set_ylim(height - 0.5, -0.5)
                tax.title.set_text(name)
        ax.set_position(self.rect)
        self._place_legend(layer, lines, offsets, x_change)
        self.canvas.draw()
        # A fixed margin fits the usual tick labels; wider ones move the axes right.
        overflow = _LABEL_PAD_PX - ax.yaxis.label.get_window_extent().x0
        if overflow > 0:
            left = self.rect[0] + overflow / (self.width * self.fig.dpi)
            ax.set_position((left, self.rect[1], self.rect[0] + self.rect[2] - left,
                             self.rect[3]))
            self._place_legend(layer, lines, offsets, x_change)
            self.canvas.draw()

    def _place_legend(self, layer: np.ndarray | None, lines: Sequence[np.ndarray],
                      offsets: np.ndarray, x_change: float | None) -> None:
        """Lay ``layer`` (RGBA legend pixels) where it meets the fewest data, or remove it.

        The places and the score follow matplotlib's ``loc="best"``: vertices of the
        ``lines`` (float ``[V, 2]`` data coordinates, polygons included) and the scatter
        ``offsets`` inside the box, plus the lines (and the change line at ``x_change``)
        that cross it; the first place with the lowest score wins.
        """
        from matplotlib.path import Path as MplPath
        from matplotlib.transforms import Bbox

        if self.legend is not None:
            self.legend.remove()
            self.legend = None
        if layer is None:
            return
        ax = self.ax
        box = ax.get_window_extent()  # display pixels, for the axes' current position
        to_display = ax.transData.transform
        shown = [to_display(v) for v in lines if len(v)]
        if x_change is not None:
            x = to_display([(x_change, 0.0)])[0, 0]
            shown.append(np.array([[x, box.y0], [x, box.y1]]))
        paths = [MplPath(v) for v in shown]
        vertices = np.concatenate([np.empty((0, 2)), *shown, to_display(offsets)])
        height, width = layer.shape[:2]
        pad = _LEGEND_PAD * _LEGEND_FONTSIZE * self.fig.dpi / 72.0
        best = (np.inf, 0.0, 0.0)
        for fx, fy in _LEGEND_PLACES:
            x0 = box.x0 + pad + fx * (box.width - 2 * pad - width)
            y0 = box.y0 + pad + fy * (box.height - 2 * pad - height)
            inside = ((vertices[:, 0] > x0) & (vertices[:, 0] < x0 + width)
                      & (vertices[:, 1] > y0) & (vertices[:, 1] < y0 + height))
            legend_box = Bbox.from_bounds(x0, y0, width, height)
            score = int(inside.sum()) + sum(p.intersects_bbox(legend_box, filled=False)
                                            for p in paths)
            if score < best[0]:
                best = (score, x0, y0)
            if score == 0:
                break
        self.legend = self.fig.figimage(layer, xo=int(round(best[1])), yo=int(round(best[2])),
                                        origin="upper", zorder=10)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Save the last :meth:`render` as a PNG at ``path`` (atomically)."""
        import zlib

        from PIL import Image

        image = Image.fromarray(np.asarray(self.canvas.buffer_rgba()))
        if image.getchannel("A").getextrema()[0] == 255:  # opaque (a white figure): no alpha
            image = image.convert("RGB")
        with atomic_path(path) as tmp:
            image.save(tmp, format="png", compress_level=_PNG_LEVEL,
                       compress_type=zlib.Z_RLE)
        return Path(path)


def plot_timelines(items: Iterable[tuple[Timeline, str | os.PathLike[str]]], *,
                   dpi: int = 100) -> list[Path]:
    """Write several chips' timeline plots as PNGs (each atomically).

    Draws on one reusable figure per layout (with / without thumbnails) instead of a
    new figure per chip; each plot is the same as :func:`plot_timeline` of that chip.

    Args:
        items: (timeline, output PNG path) pairs, consumed lazily.
        dpi: resolution; a plot is 10 x 4.2 inches, 10 x 6.5 with thumbnails.

    Returns:
        The paths written, in order.
    """
    figures: dict[bool, _TimelineFigure] = {}
    legends: dict[tuple[str, ...], np.ndarray] = {}
    written = []
    for tl, path in items:
        decoded: dict[Path, np.ndarray | None] = {}
        thumbs = []
        for label, p in (("before", tl.before), ("after", tl.after)):
            if p is None:
                continue
            p = Path(p)
            if p not in decoded:  # before and after can be the same file
                decoded[p] = _read_thumbnail(p)
            pixels = decoded[p]
            if pixels is not None:
                thumbs.append((f"{label}: {p.parent.name}", pixels))
        layout = bool(thumbs)
        if layout not in figures:
            figures[layout] = _TimelineFigure(thumbs=layout, dpi=dpi, legends=legends)
        figures[layout].render(tl, thumbs)
        written.append(figures[layout].write(path))
    return written


def plot_timeline(timeline: Timeline, path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Write one chip's timeline plot as a PNG (atomically).

    Args:
        timeline: the chip's series and fit.
        path: output PNG path.
        dpi: resolution.

    Returns:
        The path written.
    """
    return plot_timelines([(timeline, path)], dpi=dpi)[0]


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

    def timelines() -> Iterator[tuple[Timeline, Path]]:
        for c in progress_bar(chosen, desc="analyze: plots", unit="plot",
                              disable=not o.progress):
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
            yield Timeline(
                chip_id=cid, days=days, signal=sig_grid[c][valid],
                baseline=base_grid[c][valid], anomaly=out["anomaly"][c][valid],
                coef=fit.coef[c, 0] if not multi and fitted else np.zeros(n_coef),
                intercept=float(fit.intercept[c, 0]) if not multi and fitted else 0.0,
                rmse=float(fit.scale[c, 0]) if not multi and fitted else 1.0,
                threshold=o.threshold, status=str(out["status"][c]), change_day=change_day,
                signal_name=o.signal if not multi else f"anomaly score ({o.signal})",
                score=multi, before=thumbs.get((cid, int(before_day))),
                after=thumbs.get((cid, int(after_day)))), rr.plots_dir / f"{cid}.png"

    plot_timelines(timelines())  # one reusable figure per layout for the whole batch
    return len(chosen)
