"""Reference analysis and incremental update: the observations both hand to publication.

:func:`reference` analyses every observation and fits a new reference (PCA basis,
baseline period, seasonal fits); :func:`update` scores only the observations of new
(or re-embedded) files against the stored reference and keeps the published rows.
Both return a :class:`Work`, which :mod:`geofm.analyze.stage` assesses and publishes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geofm.analyze import footprints
from geofm.analyze.change import SeasonalFit, check_parameters, fit_seasonal
from geofm.analyze.chipstate import ChipState, load_state
from geofm.analyze.footprints import Footprints
from geofm.analyze.passes import Padded, pass_one, pass_one_files, pass_two
from geofm.analyze.reduce import PCAModel, fit_pca
from geofm.analyze.reference import Reference, load_means, save_means
from geofm.analyze.series import EMBEDDING_COLUMNS, NS_PER_DAY, index_embeddings
from geofm.analyze.timeseries import Published, read_published
from geofm.exceptions import GeofmValueError
from geofm.layout import RunRoot
from geofm.manifest import StageRecord
from geofm.tables import read_schema, read_table

log = logging.getLogger(__name__)


def _parse_date(value: str | pd.Timestamp | None, name: str) -> pd.Timestamp | None:
    from geofm.dates import parse_utc

    return None if value is None else parse_utc(value, name=name, hint="use YYYY-MM-DD.")


def baseline_window(first_ns: int, *, baseline_start: str | None = None,
                    monitor_start: str | None = None) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Baseline period ``[baseline_start, monitor_start)``; monitoring from ``monitor_start``.

    Default: the first calendar year with data (``first_ns`` = earliest observation,
    ns since epoch UTC). With only ``baseline_start`` the baseline lasts one year; with
    only ``monitor_start`` it starts at the earliest observation.

    Raises:
        GeofmValueError: if a date does not parse or ``monitor_start <= baseline_start``.
    """
    first = pd.Timestamp(first_ns, tz="UTC")
    start = _parse_date(baseline_start, "baseline_start")
    mon = _parse_date(monitor_start, "monitor_start")
    if start is None:
        start = pd.Timestamp(year=first.year, month=1, day=1, tz="UTC") if mon is None \
            else first.floor("D")
    if mon is None:
        mon = start + pd.DateOffset(years=1)
    if mon <= start:
        raise GeofmValueError(f"monitor_start {mon.date()} must be after baseline_start "
                              f"{start.date()}; pass --monitor-start later than --baseline-start.")
    return start, mon


#: ``center`` choices (see :func:`geofm.analyze.stage.analyze`).
CENTER_MODES = ("scene", "none")


def signal_column(signal: str, n_components: int) -> int | None | slice:
    """Index of the PC used as signal (None: cosine; a slice: all PCs); validates it.

    Raises:
        GeofmValueError: ``signal`` is not ``pcs``, ``cosine`` or ``pc1..pcK``.
    """
    if signal == "cosine":
        return None
    if signal == "pcs":
        return slice(0, n_components)
    if signal.startswith("pc") and signal[2:].isdigit() and 1 <= int(signal[2:]) <= n_components:
        return int(signal[2:]) - 1
    raise GeofmValueError(f"signal={signal!r} is not valid: use 'pcs', 'cosine' or "
                          f"pc1..pc{n_components} (raise n_components for a higher component).")


@dataclass
class Options:
    """The analysis options (see :func:`geofm.analyze.stage.analyze`).

    ``column``: the embedding column; ``signal_pc``: the monitored PCs as an index
    into ``pcs`` (None: the cosine; a slice: all ``n_components``).
    """

    column: str
    signal: str
    signal_pc: int | None | slice
    n_components: int
    threshold: float
    consecutive: int
    min_baseline: int
    alpha: float
    center: str
    pca_samples: int
    seed: int
    progress: bool


def make_options(*, embedding: str, signal: str, n_components: int, threshold: float,
                 consecutive: int, min_baseline: int, alpha: float, center: str,
                 pca_samples: int, seed: int, progress: bool) -> Options:
    """Validated :class:`Options` (arguments as :func:`geofm.analyze.stage.analyze`'s).

    Raises:
        GeofmValueError: a bad embedding kind, signal, center mode or detection parameter.
    """
    if embedding not in EMBEDDING_COLUMNS:
        raise GeofmValueError(f"embedding={embedding!r} is not valid: use 'cls' or 'mean'.")
    signal_pc = signal_column(signal, n_components)
    if center not in CENTER_MODES:
        raise GeofmValueError(f"center={center!r} is not valid: use 'scene' or 'none'.")
    check_parameters(threshold=threshold, consecutive=consecutive, min_baseline=min_baseline)
    return Options(column=EMBEDDING_COLUMNS[embedding], signal=signal, signal_pc=signal_pc,
                   n_components=n_components, threshold=threshold, consecutive=consecutive,
                   min_baseline=min_baseline, alpha=alpha, center=center,
                   pca_samples=pca_samples, seed=seed, progress=progress)


@dataclass
class Obs:
    """Scored observations, one entry per (chip, day): the content of timeseries.parquet."""

    chip: np.ndarray    # int64 [M] row in the work's chip_ids
    ns: np.ndarray      # int64 [M] ns since the epoch, UTC
    scene: np.ndarray   # int64 [M] index into ``scenes``
    scenes: list[str]
    pcs: np.ndarray     # float32 [M, K]
    cos: np.ndarray     # float32 [M]
    sig: np.ndarray     # float32 [M] the signal (pc1 for ``pcs``)
    pred: np.ndarray    # float32 [M] the model's value of ``sig``
    resid: np.ndarray   # float32 [M] scaled residual / combined score
    base: np.ndarray    # bool [M] used in the baseline fit

    def core(self) -> Core:
        """The fields assessment needs."""
        return Core(chip=self.chip, ns=self.ns, scene=self.scene, scenes=self.scenes,
                     resid=self.resid, sig=self.sig, base=self.base)

    @classmethod
    def empty(cls, n_components: int) -> Obs:
        """No observations."""
        f32 = np.zeros(0, np.float32)
        return cls(chip=np.zeros(0, np.int64), ns=np.zeros(0, np.int64),
                   scene=np.zeros(0, np.int64), scenes=[],
                   pcs=np.zeros((0, n_components), np.float32), cos=f32, sig=f32, pred=f32,
                   resid=f32, base=np.zeros(0, bool))

    def values(self, signal_pc: int | None | slice) -> np.ndarray:
        """float64 ``[M, K']`` the monitored components (cosine, one PC or all)."""
        if signal_pc is None:
            return self.cos.astype(np.float64)[:, None]
        if isinstance(signal_pc, slice):
            return self.pcs[:, signal_pc].astype(np.float64)
        return self.pcs[:, signal_pc].astype(np.float64)[:, None]


@dataclass
class Core:
    """What assessment needs of each observation (published or new)."""

    chip: np.ndarray    # int [M] (int32 for published rows: half the memory of int64)
    ns: np.ndarray      # int64 [M]
    scene: np.ndarray   # int [M] into ``scenes``
    scenes: list[str]
    resid: np.ndarray   # float32 [M]
    sig: np.ndarray     # float32 [M]
    base: np.ndarray    # bool [M]

    _FIELDS = ("chip", "ns", "scene", "resid", "sig", "base")

    @classmethod
    def empty(cls) -> Core:
        """No observations."""
        return Obs.empty(0).core()

    @classmethod
    def take_pair(cls, a: Core, b: Core, idx: np.ndarray, *, chip: np.ndarray) -> Core:
        """The rows ``idx`` of ``a`` then ``b`` (``chip``: their chips), not concatenated.

        Scene codes are remapped onto the union of the two scene lists.
        """
        scenes, remap_a, remap_b = _scene_union(a.scenes, b.scenes)
        parts = {f: take_two(getattr(a, f), getattr(b, f), idx) for f in cls._FIELDS
                 if f not in ("chip", "scene")}
        parts["scene"] = take_two(a.scene, b.scene, idx, remap=(remap_a, remap_b))
        return cls(chip=chip, scenes=scenes, **parts)


def _scene_union(a: list[str], b: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The sorted union of two scene lists and each list's codes in it (int64)."""
    scenes = sorted(set(a) | set(b))
    pos = {s: i for i, s in enumerate(scenes)}
    return (scenes, np.array([pos[s] for s in a] or [0], dtype=np.int64),
            np.array([pos[s] for s in b] or [0], dtype=np.int64))


def take_two(a: np.ndarray, b: np.ndarray, idx: np.ndarray, *,
             remap: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``np.concatenate([a, b])[idx]`` (values mapped through ``remap[0]`` / ``remap[1]``).

    Without the ``[len(a) + len(b)]`` copy: one take from ``a``, then the (few) rows of
    ``b`` put in place. ``a``, ``b``: ``[n_a]``, ``[n_b]``; ``idx``: int64 rows.
    """
    n_a = a.size
    from_b = np.flatnonzero(idx >= n_a)
    if n_a == 0 or from_b.size == idx.size:
        out = b[idx - n_a]
        return remap[1][out] if remap is not None else out
    out = a[np.minimum(idx, n_a - 1)] if from_b.size else a[idx]
    if remap is not None:
        out = remap[0][out]
    if from_b.size:
        vb = b[idx[from_b] - n_a]
        out[from_b] = remap[1][vb] if remap is not None else vb
    return out


@dataclass
class _Prior:
    """The published ``timeseries.parquet`` rows an update keeps: their core and location."""

    core: Core
    published: Published
    lost: np.ndarray  # int64 rows of the work's chip_ids that lost published rows


def read_prior(rr: RunRoot, chip_ids: np.ndarray, *, drop_scenes: set[str]) -> _Prior:
    """The published rows (less those of ``drop_scenes``), chips coded as ``chip_ids`` rows.

    ``chip_ids``: object ``[C]``, sorted, holding every published chip.
    """
    published_rows, old = read_published(rr, drop_scenes=drop_scenes)
    old_chip = np.searchsorted(chip_ids, old.pop("chip_ids"))
    lost = np.unique(old_chip[old.pop("lost")])
    codes = old.pop("chip")
    if not (old_chip.size == chip_ids.size and (old_chip == np.arange(old_chip.size)).all()):
        codes = old_chip[codes]  # else the published chips are these: codes already rows
    return _Prior(core=Core(chip=codes, scenes=old.pop("scenes"), **old),
                  published=published_rows, lost=lost)


@dataclass
class Carried:
    """Each chip's rule state after the last analysis (:mod:`geofm.analyze.chipstate`).

    ``state``: ``[C]`` in the work's ``chip_ids`` order (chips the last analysis did not
    have: the empty state); ``known``: bool ``[C]`` chips it had.
    """

    state: ChipState
    known: np.ndarray


def carried_state(rr: RunRoot, state: dict[str, Any], chip_ids: np.ndarray
                  ) -> Carried | None:
    """The chip states saved by the last analysis, for ``chip_ids`` (None: none usable).

    None when the file is missing, unreadable or from another analysis (then every chip
    is walked again from its published rows).
    """
    got = load_state(rr.assessment_path, update=len(state["updates"]), chip_ids=chip_ids)
    return None if got is None else Carried(state=got[0], known=got[1])


@dataclass
class Work:
    """What an analysis (reference or update) hands to :func:`~geofm.analyze.outputs.publish`."""

    chip_ids: np.ndarray
    fit: SeasonalFit
    reference: Reference
    obs: Obs
    prior: _Prior | None           # published rows kept by an update (None: reference,
    # or an update that needs none: see ``load_prior``)
    kind: str                      # "reference" | "update"
    n_rows: int                    # embedding rows read
    n_new: int                     # observations scored now
    files: dict[str, Any]          # extra staged files: name -> writer(path)
    footprints: Footprints         # per chip: footprint, tile, native grid
    carried: Carried | None = None  # chip states of the last analysis (an update)
    drop_scenes: frozenset[str] = frozenset()  # scenes whose published rows go

    def load_prior(self, rr: RunRoot) -> _Prior:
        """The published rows an update keeps (read once, when first needed)."""
        if self.prior is None:
            self.prior = read_prior(rr, self.chip_ids, drop_scenes=set(self.drop_scenes))
        return self.prior


def reference(rr: RunRoot, record: StageRecord, files: list[Path], scene_ids: list[str],
              o: Options, pca_model: PCAModel | None, plot_chips: Sequence[str], *,
              baseline_start: str | None, monitor_start: str | None,
              pca_path: str | os.PathLike[str] | None, tsne: bool = False) -> Work:
    """Analyse every observation and fit a new reference (``tsne``: also stage t-SNE)."""
    index = index_embeddings(files, scene_ids, column=o.column)
    _check_plot_chips(plot_chips, index.chip_ids, rr)
    start, mon = baseline_window(int(index.obs_ns.min()), baseline_start=baseline_start,
                                 monitor_start=monitor_start)
    log.info("%d embeddings of %d chips in %d files; baseline %s..%s, monitoring from %s",
             index.n_rows, index.chip_ids.size, len(files), start.date(), mon.date(),
             mon.date())
    row_ns = index.obs_ns[index.row_obs]
    row_in_base = (row_ns >= start.value) & (row_ns < mon.value)
    # Pass 1: PCA sample and per-chip baseline sums.
    row_ok, means, sample = pass_one(index, o.column, o.center, row_in_base, record, rr,
                                     fit=pca_model is None, max_samples=o.pca_samples,
                                     seed=o.seed, progress=o.progress)
    checked = pass_one_files(index, row_in_base, fit=pca_model is None)
    del row_ns, row_in_base
    if pca_model is None:
        pca_model = fit_pca(sample, n_components=o.n_components)
    del sample
    if pca_model.dim != index.dim:
        raise GeofmValueError(f"PCA {pca_path} was fitted on dimension {pca_model.dim} but "
                              f"the embeddings have {index.dim}; fit a new one (omit --pca).")
    # Pass 2: projections and cosine to the baseline mean, per observation.
    obs_pcs, obs_cos, obs_ok = pass_two(index, o.column, o.center, row_ok, means, pca_model,
                                        o.n_components, progress=o.progress, record=record,
                                        rr=rr, checked=checked)
    sel = np.flatnonzero(obs_ok)
    every = sel.size == obs_ok.size  # then no copies of the [M, K] projections

    def keep(a: np.ndarray) -> np.ndarray:
        return a if every else a[sel]

    obs = Obs(chip=keep(index.obs_chip), ns=keep(index.obs_ns), scene=keep(index.obs_scene),
               scenes=list(index.scene_ids), pcs=keep(obs_pcs), cos=keep(obs_cos),
               sig=np.zeros(sel.size, np.float32), pred=np.zeros(sel.size, np.float32),
               resid=np.zeros(sel.size, np.float32), base=np.zeros(sel.size, bool))
    del obs_pcs, obs_cos, row_ok
    chip_ids, n_rows = index.chip_ids, index.n_rows
    del index  # the per-row numbering (4 x [rows] arrays) is not needed any more
    obs.sig = obs.values(o.signal_pc)[:, 0].astype(np.float32)

    # The reference fit, on the baseline observations laid out [chip, date].
    grid = Padded(obs.chip, chip_ids.size, np.ones(sel.size, dtype=bool))
    y = grid.take(obs.values(o.signal_pc), np.nan)
    valid = grid.valid & np.isfinite(y).all(axis=2)
    days = np.where(valid, grid.take(obs.ns / NS_PER_DAY, np.nan), 0.0)
    y = np.where(valid[..., None], y, 0.0)
    in_base = valid & grid.take((obs.ns >= start.value) & (obs.ns < mon.value), False)
    fit, used = fit_seasonal(days, y, valid, baseline=in_base, threshold=o.threshold,
                             min_baseline=o.min_baseline, alpha=o.alpha)
    del y, days
    obs.base = grid.gather(used)
    _score(obs, fit, o.signal_pc, np.arange(sel.size))
    created = pd.Timestamp.now(tz="UTC")
    reference = Reference(id=f"ref-{created:%Y%m%dT%H%M%S.%fZ}", chip_ids=chip_ids,
                          fit=fit, baseline_start_ns=start.value, monitor_start_ns=mon.value)
    extra: dict[str, Any] = {
        "pca.npz": pca_model.save, "reference.npz": reference.save,
        "reference_means.npy": lambda p: save_means(p, means)}
    record.extra["analysis"] = {
        "baseline_start": str(start.date()), "monitor_start": str(mon.date()),
        "signal": o.signal, "embedding": o.column,
        "explained_variance_ratio": [round(float(v), 6)
                                     for v in pca_model.explained_variance_ratio],
        "pca_samples": pca_model.n_samples}
    if tsne:
        from geofm.analyze.outputs import write_tsne

        extra["tsne.parquet"] = lambda p: write_tsne(p, obs, chip_ids, seed=o.seed)
    return Work(chip_ids=chip_ids, fit=fit, reference=reference, obs=obs, prior=None,
                 kind="reference", n_rows=n_rows, n_new=sel.size, files=extra,
                 footprints=footprints.gather(rr, chip_ids, record))


def update(rr: RunRoot, record: StageRecord, state: dict[str, Any], todo: list[str],
           gone: list[str], o: Options, plot_chips: Sequence[str]) -> Work:
    """Score the observations of new (or re-embedded) files against the stored reference."""
    reference = Reference.load(rr.reference_path)
    pca_model = PCAModel.load(rr.pca_path)
    files = [rr.embeddings_path(s) for s in todo]
    index = index_embeddings(files, todo, column=o.column) if files else None
    new_chips = index.chip_ids if index is not None else np.array([], dtype=object)
    chip_ids, local = _union_ids(reference.chip_ids, new_chips)
    _check_plot_chips(plot_chips, chip_ids, rr)
    fit, ref_pos = reference.extend(chip_ids)
    drop = frozenset(todo) | frozenset(gone)
    # the published rows are read only where the rule cannot go on from a chip's state:
    # no state, or rows that go (a re-embedded or removed scene: their chips are walked
    # again, from the rows that stay)
    carried = carried_state(rr, state, chip_ids)
    rescored = bool(gone) or bool(drop & set(state["scenes"]))
    prior = read_prior(rr, chip_ids, drop_scenes=set(drop)) \
        if carried is None or rescored else None
    n_rows = 0
    if index is not None:
        if pca_model.dim != index.dim:
            raise GeofmValueError(f"{rr.pca_path} was fitted on dimension {pca_model.dim} but "
                                  f"the new embeddings have {index.dim}; they come from another "
                                  "model: re-embed them, or refit (--refit).")
        n_rows = index.n_rows
        ref_means = load_means(rr.reference_means_path, reference.chip_ids.size)
        pcs, cos, obs_ok = pass_two(index, o.column, o.center, None, ref_means, pca_model,
                                    o.n_components, progress=o.progress, record=record, rr=rr,
                                    mean_rows=ref_pos[local])
        sel = np.flatnonzero(obs_ok)
        new = Obs(chip=local[index.obs_chip[sel]], ns=index.obs_ns[sel],
                   scene=index.obs_scene[sel], scenes=list(index.scene_ids), pcs=pcs[sel],
                   cos=cos[sel], sig=np.zeros(sel.size, np.float32),
                   pred=np.zeros(sel.size, np.float32), resid=np.zeros(sel.size, np.float32),
                   base=np.zeros(sel.size, bool))
        new.sig = new.values(o.signal_pc)[:, 0].astype(np.float32)
        _score(new, fit, o.signal_pc, np.arange(sel.size))
        again = _same_day(new, prior, carried)
        if again:
            log.warning("analyze: %d new observation(s) fall on a day already analysed for "
                        "their chip; they are kept beside the earlier one (a refit would "
                        "average them)", again)
    else:
        new, sel = Obs.empty(o.n_components), np.array([], dtype=np.int64)
    log.info("analyze update: %d new file(s) (%d embeddings, %d observations) scored against "
             "reference %s; %d file(s) dropped", len(todo), n_rows, sel.size, reference.id,
             len(gone))
    shapes = footprints.load(rr)
    if shapes is None or not footprints.covers(shapes, chip_ids):  # new chips (or a root
        shapes = footprints.gather(rr, chip_ids, record, known=shapes)
    return Work(chip_ids=chip_ids, fit=fit, reference=reference, obs=new, prior=prior,
                 kind="update", n_rows=n_rows, n_new=int(sel.size), files={},
                 footprints=shapes, carried=carried, drop_scenes=drop)


def _same_day(new: Obs, prior: _Prior | None, carried: Carried | None) -> int:
    """How many new observations fall on a day already analysed for their chip.

    Against the published rows, or the day of the chip's last observation when they are
    not read.
    """
    if not new.chip.size:
        return 0
    new_day = new.ns // NS_PER_DAY
    if prior is None:
        assert carried is not None
        last = carried.state.last_ns[new.chip]
        return int(((last >= 0) & (last // NS_PER_DAY == new_day)).sum())
    old = prior.core
    late = np.flatnonzero(old.ns // NS_PER_DAY >= new_day.min())
    if not late.size:
        return 0
    span = np.int64(1) << 32  # chip-day keys: chip * 2**32 + day
    return int(np.isin(new.chip * span + new_day,
                       old.chip[late].astype(np.int64) * span + old.ns[late] // NS_PER_DAY).sum())


def _union_ids(known: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted union of two sorted unique id arrays, and the row of each ``new`` id in it.

    ``known`` is returned as it is when it holds every ``new`` id (an update of the same
    chips: no sort). Returns object ``[C]`` ids and int64 ``[len(new)]`` rows.
    """
    new_str = new.astype(str)
    if known.size and new.size:
        known_str = known.astype(str)
        at = np.minimum(np.searchsorted(known_str, new_str), known.size - 1)
        if (known_str[at] == new_str).all():
            return known.astype(object), at.astype(np.int64)
    union = np.union1d(known.astype(str), new_str)
    return union.astype(object), np.searchsorted(union, new_str).astype(np.int64)


def _score(obs: Obs, fit: SeasonalFit, signal_pc: int | None | slice,
           idx: np.ndarray) -> None:
    """Fill ``pred``, ``resid`` of the observations ``idx`` from the chips' fits."""
    pred, resid = fit.score(obs.chip[idx], obs.ns[idx] / NS_PER_DAY, obs.values(signal_pc)[idx])
    obs.pred[idx] = pred[:, 0].astype(np.float32)
    obs.resid[idx] = resid.astype(np.float32)


def _check_plot_chips(plot_chips: Sequence[str], chip_ids: np.ndarray, rr: RunRoot) -> None:
    unknown = sorted(set(plot_chips) - set(chip_ids.tolist()))
    if unknown:
        raise GeofmValueError(f"plot_chips {unknown[:5]} are not chips of {rr.path}; "
                              "use chip ids from meta/<scene>.parquet.")


def published_changes(rr: RunRoot) -> pd.DataFrame | None:
    """The published ``changes.parquet``'s statuses (None before the first analysis).

    Columns ``chip_id``, ``status`` and the :data:`~geofm.analyze.outputs.KEPT_COLUMNS`
    it has (footprints: :mod:`geofm.analyze.footprints`).
    """
    if not rr.changes_path.is_file():
        return None
    names = read_schema(rr.changes_path, made_by="analyze").names
    from geofm.analyze.outputs import KEPT_COLUMNS

    cols = ["chip_id", "status", *(c for c in KEPT_COLUMNS[1:] if c in names)]
    return read_table(rr.changes_path, made_by="analyze", columns=cols).to_pandas()


def chip_date_order(chip: np.ndarray, ns: np.ndarray) -> np.ndarray:
    """Indexes that sort observations by chip, then date (stable).

    A stable sort on the chip alone when dates already ascend within each chip (the
    published series followed by newer observations: two sorted runs, merged in linear
    time), else a full lexicographic sort. ``chip``, ``ns``: int64 ``[M]`` chip rows and
    dates (ns since the epoch, UTC); returns int64 ``[M]``.
    """
    order = np.argsort(chip, kind="stable")
    c, t = chip[order], ns[order]
    if np.any((c[1:] == c[:-1]) & (t[1:] < t[:-1])):
        order = np.lexsort((ns, chip))
    return order


def check_model(rr: RunRoot, scene_ids: list[str], files: list[Path],
                record: StageRecord) -> None:
    """Refuse embeddings of two models; count and log the chips embed could not embed.

    Puts the model identity in ``record.extra["model"]`` and the left-out chips in
    ``record.extra["not_analysed"]``.
    """
    from geofm.embed.writer import check_one_model, record_embedding_gaps

    identity, infos = check_one_model(files, purpose="be analysed together",
                                      require_metadata=False)
    record.extra["model"] = identity.to_dict()
    record_embedding_gaps(rr, dict(zip(scene_ids, infos, strict=True)), record,
                          left_out_key="not_analysed")
