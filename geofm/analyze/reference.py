"""The analysis reference: what the first analysis of a run fixes for every later update.

A run's first ``geofm analyze`` (and every ``--refit``) fits the reference: the PCA
basis (``analysis/pca.npz``), the baseline period, each chip's seasonal model and
residual scale (``analysis/reference.npz``) and each chip's unit baseline mean
embedding (``analysis/reference_means.npy``, float32 ``[C, D]``, read memory-mapped).
Later updates score new observations against it and never refit.

``analysis/state.json`` says which reference is current (its id, options and baseline
period), which embedding files were analysed (name -> :func:`file_signature`, a digest
of the content) and the history of updates. The files of one update are published
together (:class:`geofm.io.StagedFiles`), so the state always describes the outputs
beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geofm.analyze.change import SeasonalFit
from geofm.exceptions import GeofmFileExistsError, GeofmFileNotFoundError, GeofmValueError
from geofm.io import atomic_path, write_json_atomic
from geofm.layout import RunRoot

#: Version of the ``state.json`` / ``reference.npz`` layout.
STATE_VERSION = 1

#: Options of :func:`geofm.analyze.stage.analyze` that shape the reference (the fits
#: every update is scored against): changing one needs ``refit``. The others (plots,
#: t-SNE) only change what is drawn.
REFERENCE_OPTIONS = ("embedding", "baseline_start", "monitor_start", "signal", "n_components",
                     "threshold", "consecutive", "min_baseline", "alpha", "center", "pca",
                     "pca_samples", "seed")


@dataclass
class Reference:
    """Each chip's seasonal model, fitted on the baseline period of the reference analysis.

    Attributes:
        id: reference id (``ref-<UTC time>``), recorded in every alert.
        chip_ids: str ``[C]`` sorted chip ids the fits belong to.
        fit: the :class:`~geofm.analyze.change.SeasonalFit` (rows = ``chip_ids``).
        baseline_start_ns: start of the baseline period, ns since the epoch (UTC).
        monitor_start_ns: start of monitoring (end of the baseline, exclusive).
    """

    id: str
    chip_ids: np.ndarray
    fit: SeasonalFit
    baseline_start_ns: int
    monitor_start_ns: int

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``reference.npz`` atomically and return its path."""
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, version=np.int64(STATE_VERSION), id=np.str_(self.id),
                     chip_ids=np.asarray(self.chip_ids, dtype=str),
                     coef=self.fit.coef, intercept=self.fit.intercept, scale=self.fit.scale,
                     fitted=self.fit.fitted, n_baseline=self.fit.n_baseline,
                     baseline_start_ns=np.int64(self.baseline_start_ns),
                     monitor_start_ns=np.int64(self.monitor_start_ns))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Reference:
        """Read a ``reference.npz``.

        Raises:
            GeofmFileNotFoundError: the file does not exist.
        """
        if not Path(path).is_file():
            raise GeofmFileNotFoundError(
                f"{path} is missing, so analysis/ has no reference to update; run "
                "`geofm analyze --refit` to fit a new one.")
        with np.load(path, allow_pickle=False) as data:
            fit = SeasonalFit(coef=data["coef"], intercept=data["intercept"],
                              scale=data["scale"], fitted=data["fitted"],
                              n_baseline=data["n_baseline"])
            return cls(id=str(data["id"]), chip_ids=data["chip_ids"].astype(object), fit=fit,
                       baseline_start_ns=int(data["baseline_start_ns"]),
                       monitor_start_ns=int(data["monitor_start_ns"]))

    def extend(self, chip_ids: np.ndarray) -> tuple[SeasonalFit, np.ndarray]:
        """The fits laid out on ``chip_ids`` (a superset, sorted); chips not in it are unfitted.

        Returns:
            ``(fit, position)``: the fit with one row per ``chip_ids`` entry, and int64
            ``[len(chip_ids)]`` the row of each in this reference (-1 if new).
        """
        pos = np.searchsorted(self.chip_ids, chip_ids)
        pos = np.minimum(pos, max(self.chip_ids.size - 1, 0))
        known = (self.chip_ids.size > 0) & (self.chip_ids[pos] == chip_ids) \
            if self.chip_ids.size else np.zeros(chip_ids.size, dtype=bool)
        pos = np.where(known, pos, -1)
        f = self.fit
        src = np.maximum(pos, 0)

        def take(a: np.ndarray, fill: Any) -> np.ndarray:
            out = a[src].copy() if a.shape[0] else np.zeros((chip_ids.size, *a.shape[1:]),
                                                             a.dtype)
            out[~known] = fill
            return out

        return SeasonalFit(coef=take(f.coef, 0.0), intercept=take(f.intercept, 0.0),
                           scale=take(f.scale, 1.0), fitted=take(f.fitted, False),
                           n_baseline=take(f.n_baseline, 0)), pos


def save_means(path: str | os.PathLike[str], means: np.ndarray) -> Path:
    """Write the float32 ``[C, D]`` unit baseline means as ``.npy`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(means, dtype=np.float32))
    return Path(path)


def load_means(path: str | os.PathLike[str], n_chips: int) -> np.ndarray:
    """Memory-map the reference means (``[C, D]`` float32).

    Raises:
        GeofmFileNotFoundError: the file is missing.
        GeofmValueError: it does not have ``n_chips`` rows.
    """
    if not Path(path).is_file():
        raise GeofmFileNotFoundError(f"{path} is missing; run `geofm analyze --refit` to fit "
                                     "a new reference.")
    means = np.load(path, mmap_mode="r")
    if means.ndim != 2 or means.shape[0] != n_chips:
        raise GeofmValueError(f"{path} has shape {means.shape} but the reference has {n_chips} "
                              "chips; run `geofm analyze --refit`.")
    return means


def read_state(root: RunRoot) -> dict[str, Any] | None:
    """``analysis/state.json`` as a dict, or None if there is none.

    Raises:
        GeofmValueError: the file is not a geofm analysis state.
    """
    path = root.analysis_state_path
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            state: dict[str, Any] = json.load(fh)
    except json.JSONDecodeError as exc:
        raise GeofmValueError(f"{path} is not valid JSON ({exc}); run `geofm analyze --refit` "
                              "to rebuild analysis/.") from exc
    if state.get("version") != STATE_VERSION:
        raise GeofmValueError(f"{path} has state version {state.get('version')!r}, expected "
                              f"{STATE_VERSION}; run `geofm analyze --refit`.")
    return state


def write_state(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write a state dict as JSON atomically."""
    return write_json_atomic(path, {**state, "version": STATE_VERSION})


#: Files up to this size are hashed whole; a larger one by its Parquet footer and
#: :data:`SAMPLE_BLOCKS` blocks of :data:`SAMPLE_BYTES` spread over the rest.
WHOLE_FILE_BYTES = 1 << 20
SAMPLE_BLOCKS = 16
SAMPLE_BYTES = 4096


def file_signature(path: Path) -> str:
    """``"<size>:<digest>"`` of an embeddings file's content: a changed file is analysed again.

    Content, not modification time: a copy of the same bytes (SageMaker downloads its
    inputs again for every job, with new mtimes) keeps its signature. The digest
    (sha256, 32 hex digits) covers a small file whole; of a larger one, the Parquet
    footer (the schema with embed's model identity, the row count, every column chunk's
    offsets, sizes and min/max statistics) and 16 blocks of 4 KiB spread evenly over
    the data: a few reads whatever the size. A rewrite with other rows, another model or
    other values changes the footer (sizes or statistics) or a sampled block.
    """
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        if size <= WHOLE_FILE_BYTES:
            digest.update(fh.read())
        else:
            fh.seek(size - 8)
            tail = fh.read(8)
            footer = int.from_bytes(tail[:4], "little") + 8 if tail[4:] == b"PAR1" else 8
            data = size - min(footer, size)
            fh.seek(data)
            digest.update(fh.read())
            for k in range(SAMPLE_BLOCKS):
                fh.seek(data * k // SAMPLE_BLOCKS)
                digest.update(fh.read(min(SAMPLE_BYTES, data)))
    return f"{size}:{digest.hexdigest()[:32]}"


def stat_signature(path: Path) -> str:
    """``"<size>:<mtime_ns>"``: the signature ``state.json`` held before content digests."""
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def fingerprint(signatures: dict[str, str], config: dict[str, Any]) -> str:
    """sha256 of the options and of each embeddings file's name and :func:`file_signature`."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for scene, signature in sorted(signatures.items()):
        h.update(f"{scene}:{signature}".encode())
    return h.hexdigest()


def changed_scenes(state: dict[str, Any] | None, options: dict[str, Any],
                   signatures: dict[str, str], *, changes_path: Path, refit: bool,
                   stats: dict[str, str] | None = None
                   ) -> tuple[list[str], list[str]] | None:
    """The scenes an update must score (new or rewritten) and drop (gone), sorted.

    ``state``: the stored ``state.json`` (None: none yet); ``options``: the analysis'
    :data:`REFERENCE_OPTIONS` (JSON-able values); ``signatures``: scene id ->
    :func:`file_signature` of every embeddings file now; ``stats``: scene id ->
    :func:`stat_signature`, matched against a state written before content digests
    (so such a root is not rescored whole once).

    Returns:
        ``(todo, gone)``, or None when a new reference must be fitted (``refit``, or
        no state yet).

    Raises:
        GeofmFileExistsError: the stored reference was made with other options (names
            them), or ``changes_path`` exists without a state; refit to start anew.
    """
    if state is None and changes_path.exists() and not refit:
        raise GeofmFileExistsError(
            f"{changes_path} holds results of other embeddings or options (written "
            "without an analysis reference); pass overwrite=True (--overwrite) or "
            "refit=True (--refit) to start a new reference.")
    if refit or state is None:
        return None
    stored = state["reference"]["options"]
    if stored != options:
        diff = sorted(k for k in options if stored.get(k) != options[k])
        raise GeofmFileExistsError(
            f"{changes_path} holds results of other embeddings or options (the reference "
            f"{state['reference']['id']} differs in {diff}); pass overwrite=True "
            "(--overwrite) or refit=True (--refit) to start a new reference, or use the "
            "reference's options.")
    stored_sigs = state["scenes"]
    todo = sorted(s for s in signatures if stored_sigs.get(s) not in (
        signatures[s], None if stats is None else stats.get(s)))
    gone = sorted(set(state["scenes"]) - set(signatures))
    return todo, gone


def new_state(reference: Reference, options: dict[str, Any], analysis: dict[str, Any],
              previous: dict[str, Any] | None) -> dict[str, Any]:
    """The ``state.json`` of a new reference (no scenes yet; keeps ``previous`` updates)."""
    def day(ns: int) -> str:
        return str(np.datetime64(ns, "ns").astype("datetime64[D]"))

    return {"reference": {"id": reference.id, "options": options,
                          "baseline_start": day(reference.baseline_start_ns),
                          "monitor_start": day(reference.monitor_start_ns),
                          "analysis": analysis},
            "scenes": {}, "updates": (previous or {}).get("updates", [])}
