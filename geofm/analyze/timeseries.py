"""``analysis/timeseries.parquet``: a Parquet dataset of parts, one appended per update.

The reference analysis writes one part with every observation; an update writes one
part with its new observations and leaves the published parts as they are, byte for
byte, except the parts whose rows change: those holding rows of a re-embedded or
removed scene (the rows are dropped; a re-embedded scene's new rows come with the
update) and those holding an observation whose ``anomaly`` flag flips (a chip that
just got, or lost, enough monitoring observations to be assessed). Such a part's
remaining rows move into the new part and the old file is deleted in the same commit
(:class:`geofm.io.StagedFiles`), so every row is published exactly once. A new
reference (``refit``) replaces the whole dataset.

A root analysed before parts holds a single ``timeseries.parquet`` file; its next
update converts it: the file becomes ``part-00000.parquet`` (a hard link into the
staged group, no copy) unless its rows change, in which case they move into the new
part like any other part's.

Part names: ``part-<n>.parquet``, ``n`` (5 digits) one more than the highest before, so
a name is never reused (a recovery that repeats a commit's deletions cannot delete a
new part).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from geofm.exceptions import TableError
from geofm.tables import iter_row_groups, read_metadata, read_table

if TYPE_CHECKING:
    from geofm.analyze.update import Obs
    from geofm.io import StagedFiles
    from geofm.layout import RunRoot

#: The columns an update reads from the published parts (what assessment needs, and
#: ``anomaly`` to find the parts whose flags change); the others are read only from
#: the parts that are rewritten.
CORE_COLUMNS = ("chip_id", "scene_id", "date", "signal", "residual", "baseline", "anomaly")

#: The dataset's name inside ``analysis/``.
DATASET = "timeseries.parquet"


def part_name(number: int) -> str:
    """The staged name (relative to ``analysis/``) of part ``number``."""
    return f"{DATASET}/part-{number:05d}.parquet"


def part_number(path: Path) -> int:
    """The number of a part file (0 for a single-file ``timeseries.parquet``)."""
    if path.name == DATASET:
        return 0
    return int(path.name.removeprefix("part-").removesuffix(".parquet"))


@dataclass
class Published:
    """Where the published rows an update keeps live, and their ``anomaly`` as published.

    Attributes:
        parts: the dataset's files (:meth:`geofm.layout.RunRoot.timeseries_parts`).
        bounds: int64 ``[len(parts) + 1]``: the kept rows of part ``i`` are rows
            ``bounds[i]:bounds[i + 1]`` (in part order, then file order).
        anomaly: bool ``[M]`` each kept row's published ``anomaly``.
        dropped: bool ``[len(parts)]`` parts that hold rows of ``drop_scenes``.
        drop_scenes: the scenes whose rows were left out (re-embedded or removed).
    """

    parts: list[Path]
    bounds: np.ndarray
    anomaly: np.ndarray
    dropped: np.ndarray
    drop_scenes: frozenset[str]

    @classmethod
    def kept(cls, rr: RunRoot) -> Published:
        """The published parts, all kept as they are (an update that read none of them)."""
        parts = rr.timeseries_parts()
        return cls(parts=parts, bounds=np.zeros(len(parts) + 1, dtype=np.int64),
                   anomaly=np.zeros(0, dtype=bool), dropped=np.zeros(len(parts), dtype=bool),
                   drop_scenes=frozenset())


def _codes(col: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Codes (int ``[N]``) into the returned Arrow string dictionary, of a string column.

    The parts geofm writes give every chunk of a dictionary column the same dictionary:
    then the chunks' indices are used as they are (no unification, no hashing).
    """
    if not pa.types.is_dictionary(col.type):
        col = pa.chunked_array([col.cast(pa.string()).combine_chunks().dictionary_encode()])
    chunks = col.chunks
    if not chunks:
        return np.zeros(0, dtype=np.int32), pa.array([], type=pa.string())
    first = chunks[0].dictionary
    if not all(c.dictionary.equals(first) for c in chunks[1:]):
        chunks = col.unify_dictionaries().chunks
        first = chunks[0].dictionary
    indices = pa.chunked_array([c.indices for c in chunks]).combine_chunks()
    return indices.to_numpy(zero_copy_only=False), first


class _Dictionaries:
    """The distinct dictionaries of one id column over row groups, and their union."""

    def __init__(self) -> None:
        self.arrow: list[pa.Array] = []
        self.groups: list[tuple[int, np.ndarray, int]] = []  # (first row, codes, dictionary)

    def add(self, first: int, codes: np.ndarray, dictionary: pa.Array) -> None:
        if not (self.arrow and self.arrow[-1].equals(dictionary)):  # usually the same
            self.arrow.append(dictionary)
        self.groups.append((first, codes, len(self.arrow) - 1))

    def remap(self, out: np.ndarray) -> np.ndarray:
        """Write codes into the union into ``out``; return the union (sorted object ``[V]``)."""
        values = [np.asarray(d.to_numpy(zero_copy_only=False), dtype=object) for d in self.arrow]
        union = _union(values)
        luts = [np.searchsorted(union, v) if v.size else np.zeros(1, np.int64) for v in values]
        for first, codes, k in self.groups:
            out[first:first + codes.size] = luts[k][codes]
        return union


def _kept(table: pa.Table, drop_scenes: frozenset[str]
          ) -> tuple[np.ndarray | None, np.ndarray, pa.Array]:
    """``(keep, codes, scenes)``: rows not of ``drop_scenes`` (None: all), scene codes."""
    idx, scenes = _codes(table.column("scene_id"))
    drop = np.isin(np.asarray(scenes.to_pylist(), dtype=object), list(drop_scenes)) \
        if len(scenes) and drop_scenes else None
    return (~drop[idx] if drop is not None and drop.any() else None), idx, scenes


def _union(values: list[np.ndarray]) -> np.ndarray:
    """Sorted unique object ``[V]`` of several value lists (one sorted list: as it is)."""
    if len(values) == 1 and (values[0].size < 2 or bool(np.all(values[0][1:] > values[0][:-1]))):
        return values[0]
    return np.unique(np.concatenate(values)) if values else np.array([], dtype=object)


def read_published(rr: RunRoot, *, drop_scenes: set[str]) -> tuple[Published, dict[str, Any]]:
    """The published observations (:data:`CORE_COLUMNS` only), minus those of ``drop_scenes``.

    Returns:
        ``(published, core)``: where the kept rows live, and the
        :class:`~geofm.analyze.update.Core` fields as arrays: ``chip`` (int32 ``[M]``)
        indexes ``chip_ids`` (object ``[C']``, sorted, the chips the rows name),
        ``scene`` (int32) indexes ``scenes`` (sorted), ``ns`` int64 ns since the epoch (UTC),
        ``sig``, ``resid`` float32, ``base`` bool; and ``lost``: the ``chip`` codes of
        the dropped rows.

    Raises:
        TableError: a part is truncated or lacks a column.
    """
    parts = rr.timeseries_parts()
    drop = frozenset(drop_scenes)
    sizes = [read_metadata(p, made_by="analyze").num_rows for p in parts]
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(bounds[-1])
    out: dict[str, np.ndarray] = {
        "chip": np.empty(n, np.int32), "scene": np.empty(n, np.int32),
        "ns": np.empty(n, np.int64), "sig": np.empty(n, np.float32),
        "resid": np.empty(n, np.float32), "base": np.empty(n, bool),
        "anomaly": np.empty(n, bool)}
    keep = np.ones(n, dtype=bool)
    dropped = np.zeros(len(parts), dtype=bool)
    # each row group's id codes, mapped onto the union of the parts' ids at the end
    codes = {"chip": _Dictionaries(), "scene": _Dictionaries()}
    stamp = pa.timestamp("ns", tz="UTC")
    at = 0
    for i, path in enumerate(parts):  # row group by row group: memory is one group's
        for table in iter_row_groups(path, made_by="analyze", columns=CORE_COLUMNS):
            rows = slice(at, at + len(table))
            kept, scene_idx, scenes = _kept(table, drop)
            if kept is not None:
                dropped[i] = True
                keep[rows] = kept
            codes["scene"].add(at, scene_idx, scenes)
            codes["chip"].add(at, *_codes(table.column("chip_id")))
            date = table.column("date")
            date = date if date.type == stamp else date.cast(stamp)
            _fill(out["ns"], at, [c.view(pa.int64()) for c in date.chunks])
            for key, name in (("sig", "signal"), ("resid", "residual"), ("base", "baseline"),
                              ("anomaly", "anomaly")):
                _fill(out[key], at, table.column(name).chunks)
            at = rows.stop
        if at != bounds[i + 1]:
            raise TableError(f"{path} changed while being read; re-run `geofm analyze`",
                             path=path, made_by="analyze")
    unions = {key: dicts.remap(out[key]) for key, dicts in codes.items()}
    lost = out["chip"][~keep]  # chips whose rows are dropped (codes into the union)
    if not keep.all():
        out = {k: v[keep] for k, v in out.items()}
        bounds = np.concatenate([[0], np.cumsum(keep)])[bounds]
    published = Published(parts=parts, bounds=bounds, anomaly=out.pop("anomaly"),
                          dropped=dropped, drop_scenes=drop)
    core = {**out, "chip_ids": unions["chip"], "scenes": [str(s) for s in unions["scene"]],
            "lost": lost}
    return published, core


def _fill(out: np.ndarray, at: int, chunks: Sequence[pa.Array]) -> None:
    """Copy Arrow ``chunks`` into ``out[at:]`` (one copy: each chunk viewed, not joined)."""
    for chunk in chunks:
        out[at:at + len(chunk)] = chunk.to_numpy(zero_copy_only=False)
        at += len(chunk)


def stage_timeseries(staged: StagedFiles, rr: RunRoot, obs: Obs, chip_ids: np.ndarray,
                     anomaly: np.ndarray, n_components: int, *, prior: Published | None,
                     prior_anomaly: np.ndarray | None) -> str | None:
    """Stage this analysis' part of the dataset and the deletions that go with it.

    ``obs``: the observations scored now, ``anomaly`` bool ``[len(obs)]`` their flags;
    ``prior``: the published rows an update keeps (None: a new reference, which
    replaces the dataset) and ``prior_anomaly`` bool ``[M]`` their flags now.

    Returns:
        The staged part's name (relative to ``analysis/``), or None when this update
        adds no row and changes none.
    """
    tables: list[pa.Table] = []
    if prior is None:
        parts = rr.timeseries_parts()
        remove = list(parts)
        survivors = 0
    else:
        parts = prior.parts
        assert prior_anomaly is not None
        hit = prior.dropped.copy()
        changed = np.flatnonzero(prior.anomaly != prior_anomaly)
        hit[np.unique(np.searchsorted(prior.bounds, changed, side="right") - 1)] = True
        for i in np.flatnonzero(hit).tolist():  # rewritten into the new part
            table = read_table(parts[i], made_by="analyze")
            keep, _, _ = _kept(table, prior.drop_scenes)
            if keep is not None:
                table = table.filter(pa.array(keep))
            flags = pa.array(prior_anomaly[prior.bounds[i]:prior.bounds[i + 1]])
            tables.append(table.set_column(table.schema.get_field_index("anomaly"), "anomaly",
                                           flags))
        remove = [p for p, h in zip(parts, hit.tolist(), strict=True) if h]
        survivors = len(parts) - len(remove)
        if parts == [rr.timeseries_path] and not hit[0]:
            # a single file from before parts: kept as part 0 (a hard link, no copy)
            _link(parts[0], staged.path(part_name(0)))
            remove = list(parts)
    for path in remove:
        staged.remove(path.relative_to(rr.analysis_dir).as_posix())
    n_rows = obs.chip.size + sum(len(t) for t in tables)
    if not n_rows and survivors:
        return None
    name = part_name(max((part_number(p) for p in parts), default=0) + 1)
    write_part(staged.path(name), obs, chip_ids, anomaly, n_components, prior=tables)
    return name


def _link(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (a copy where the file system has no hard links)."""
    try:
        os.link(src, dst)
    except OSError:
        import shutil

        shutil.copyfile(src, dst)


def write_part(path: Path, obs: Obs, chip_ids: np.ndarray, anomaly: np.ndarray,
               n_components: int, *, prior: Sequence[pa.Table] = ()) -> None:
    """Write one part: the rows of ``prior`` (published tables, as they are) then ``obs``.

    Columns: ``chip_id``, ``scene_id`` (dictionary-encoded strings), ``date``
    (timestamp ns UTC), ``pc1..pcK``, ``cosine_to_baseline``, ``signal``, ``predicted``,
    ``residual`` (float32, uncompressed), ``anomaly`` (``anomaly`` bool ``[len(obs)]``),
    ``baseline``.
    """
    import pyarrow.parquet as pq

    chip_dict = pa.array(chip_ids.tolist(), type=pa.string())
    scene_dict = pa.array(obs.scenes, type=pa.string())
    cols: dict[str, pa.Array] = {
        "chip_id": pa.DictionaryArray.from_arrays(pa.array(obs.chip.astype(np.int32)),
                                                  chip_dict),
        "scene_id": pa.DictionaryArray.from_arrays(pa.array(obs.scene.astype(np.int32)),
                                                   scene_dict),
        "date": pa.array(obs.ns, type=pa.timestamp("ns", tz="UTC")),
    }
    for k in range(n_components):
        cols[f"pc{k + 1}"] = pa.array(obs.pcs[:, k].astype(np.float32))
    cols["cosine_to_baseline"] = pa.array(obs.cos.astype(np.float32))
    cols["signal"] = pa.array(obs.sig.astype(np.float32))
    cols["predicted"] = pa.array(obs.pred.astype(np.float32))
    cols["residual"] = pa.array(obs.resid.astype(np.float32))
    cols["anomaly"] = pa.array(np.asarray(anomaly, dtype=bool))
    cols["baseline"] = pa.array(obs.base.astype(bool))
    table = pa.table(cols)
    if prior:
        table = pa.concat_tables([*(t.select(table.column_names).cast(table.schema)
                                    for t in prior), table])
    # dictionary-encode only the ids (trying it on the float columns doubles the write
    # time) and compress only the others: snappy gains nothing on float32 PCs and scores
    # but costs half the write and read time
    floats = [n for n in table.column_names if pa.types.is_floating(table.schema.field(n).type)]
    pq.write_table(table, path, use_dictionary=["chip_id", "scene_id"],
                   compression={n: "none" if n in floats else "snappy"
                                for n in table.column_names})
