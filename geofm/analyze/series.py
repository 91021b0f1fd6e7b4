"""Reading a run's embeddings as per-chip time series, streamed file by file.

:func:`index_embeddings` reads only the small columns (``chip_id``, ``scene_id``,
``date``) of every ``embeddings/<scene_id>.parquet`` and numbers chips and
observations. An observation is one chip on one UTC day: several acquisitions of a
chip on the same day (duplicate items) are averaged, each with weight ``1/k``.
:func:`iter_vectors` then streams the (large) embedding column file by file, row group
by row group, in blocks of :data:`BLOCK_ROWS` rows decoded ahead by a reading thread, so
memory stays bounded by a few blocks plus per-chip accumulators (not by a file).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError
from geofm.tables import iter_row_group_batches, read_schema, read_table

NS_PER_DAY = 86_400 * 10**9

#: ``--embedding`` choice -> column of the embeddings Parquet.
EMBEDDING_COLUMNS = {"cls": "embedding", "mean": "embedding_mean"}


@dataclass
class ObservationIndex:
    """Row, chip and observation numbering of a run's embedding files.

    Attributes:
        files: embedding Parquet files, sorted by scene id.
        scene_ids: ``[F]`` scene id of each file.
        offsets: int64 ``[F + 1]`` first global row of each file.
        dim: embedding dimension ``D``.
        chip_ids: str ``[C]`` sorted unique chip ids.
        row_chip: int32 ``[N]`` chip index of each row (int64 past 2**31 rows).
        row_obs: int32 ``[N]`` observation index of each row (int64 past 2**31 rows).
        row_weight: float64 ``[N]`` ``1/k`` for ``k`` same-day rows of a chip.
        obs_chip: int64 ``[M]`` chip of each observation (observations are sorted by
            chip, then date).
        obs_ns: int64 ``[M]`` time of each observation, ns since the epoch (UTC; the
            earliest of same-day rows).
        obs_scene: int64 ``[M]`` file index of the observation's first row.
    """

    files: list[Path]
    scene_ids: list[str]
    offsets: np.ndarray
    dim: int
    chip_ids: np.ndarray
    row_chip: np.ndarray
    row_obs: np.ndarray
    row_weight: np.ndarray
    obs_chip: np.ndarray
    obs_ns: np.ndarray
    obs_scene: np.ndarray

    @property
    def n_rows(self) -> int:
        """Number of embedding rows ``N``."""
        return int(self.offsets[-1])

    @property
    def n_obs(self) -> int:
        """Number of (chip, day) observations ``M``."""
        return int(self.obs_chip.size)

    @property
    def obs_days(self) -> np.ndarray:
        """float64 ``[M]`` observation times in days since 1970-01-01 UTC."""
        return self.obs_ns / NS_PER_DAY


def _vector_dim(path: Path, column: str) -> int:
    schema = read_schema(path, made_by="embed")
    if column not in schema.names:
        raise GeofmValueError(f"{path} has no column {column!r} (columns: {schema.names}); "
                              "re-run `geofm embed`, or choose --embedding cls|mean to match.")
    typ = schema.field(column).type
    if pa.types.is_fixed_size_list(typ):
        return int(typ.list_size)
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        first = read_table(path, made_by="embed", columns=[column]).column(column)
        for chunk in first.chunks:
            if len(chunk):
                return len(chunk[0])
        return 0
    raise GeofmValueError(f"{path}: column {column!r} has type {typ}, expected "
                          "fixed_size_list<float32>[D]. Re-run `geofm embed`.")


def index_embeddings(files: list[Path], scene_ids: list[str], *,
                     column: str = "embedding") -> ObservationIndex:
    """Number the rows, chips and (chip, day) observations of embedding files.

    Args:
        files: ``embeddings/<scene_id>.parquet`` paths.
        scene_ids: their scene ids, same order.
        column: the embedding column that will be streamed (checked to exist).

    Returns:
        The :class:`ObservationIndex`.

    Raises:
        GeofmFileNotFoundError: if ``files`` is empty.
        GeofmValueError: if a file lacks the column or the dimensions differ.
    """
    if not files:
        raise GeofmFileNotFoundError("no embedding files to analyse; run `geofm embed` first "
                                     "(it writes embeddings/<scene_id>.parquet).")
    dims = {}
    code_parts, ns_parts, counts = [], [], []
    # chip ids are numbered file by file against a growing array of the ids seen so far
    # (no array of every row's id string: at 5 M rows that is ~0.3 GB in pyarrow's
    # memory pool, which keeps it)
    seen = pa.array([], type=pa.string())
    for path in files:
        dims[path] = _vector_dim(path, column)
        table = read_table(path, made_by="embed", columns=["chip_id", "date"])
        encoded = table.column("chip_id").cast(pa.string()).combine_chunks().dictionary_encode()
        names = encoded.dictionary
        found = pc.index_in(names, value_set=seen)
        if found.null_count:
            seen = pa.concat_arrays([seen, names.filter(pc.is_null(found))])
            found = pc.index_in(names, value_set=seen)
        pos = found.to_numpy(zero_copy_only=False).astype(np.int64)
        code_parts.append(pos[encoded.indices.to_numpy(zero_copy_only=False)])
        date = table.column("date")
        if pa.types.is_timestamp(date.type) and date.type.unit != "ns":
            date = date.cast(pa.timestamp("ns", tz=date.type.tz))
        ns_parts.append(np.asarray(pc.cast(date, pa.int64()).to_numpy(zero_copy_only=False)))
        counts.append(table.num_rows)
        del table, encoded
    found = {d for d, p in ((dims[p], p) for p in files) if d}
    if len(found) > 1:
        raise GeofmValueError(f"embedding files disagree on dimension {column!r}: {sorted(found)}"
                              "; they come from different models. Re-embed the run with one "
                              "model (`geofm embed --overwrite`).")
    dim = found.pop() if found else 0
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    dictionary = np.asarray(seen.to_pylist(), dtype=object)
    order = np.argsort(dictionary)
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    chip_ids = dictionary[order]
    codes = rank[np.concatenate(code_parts)] if code_parts else np.array([], dtype=np.int64)
    del code_parts
    ns = np.concatenate(ns_parts) if ns_parts else np.array([], dtype=np.int64)
    day = np.floor_divide(ns, NS_PER_DAY)
    day_span = int(day.max() - day.min() + 1) if day.size else 1
    key = codes * day_span + (day - (day.min() if day.size else 0))
    order = np.lexsort((ns, key))
    sorted_key = key[order]
    first = np.concatenate([[True], sorted_key[1:] != sorted_key[:-1]]) if key.size else \
        np.array([], dtype=bool)
    obs_of_sorted = np.cumsum(first) - 1
    row_obs = np.empty(key.size, dtype=np.int64)
    row_obs[order] = obs_of_sorted
    n_obs = int(first.sum())
    obs_count = np.bincount(row_obs, minlength=n_obs)
    first_rows = order[first]
    del order, sorted_key, key, first, obs_of_sorted
    pa.default_memory_pool().release_unused()  # the id strings read: back to the system
    small = np.int32 if max(int(offsets[-1]), n_obs, chip_ids.size) < 2**31 else np.int64
    return ObservationIndex(
        files=list(files), scene_ids=list(scene_ids), offsets=offsets, dim=dim,
        chip_ids=chip_ids, row_chip=codes.astype(small), row_obs=row_obs.astype(small),
        row_weight=1.0 / obs_count[row_obs], obs_chip=codes[first_rows],
        obs_ns=ns[first_rows],
        obs_scene=np.searchsorted(offsets, first_rows, side="right").astype(np.int64) - 1)


#: Rows per block handed to the passes (bounds their temporaries: 8,192 x 768 float32
#: = 24 MiB, under glibc's largest mmap threshold, so the allocator reuses them instead
#: of mapping fresh pages for every block). Blocks never span two row groups.
BLOCK_ROWS = 8_192

#: Blocks decoded ahead of the one being processed (by the reading thread).
PREFETCH_BLOCKS = 2

Block = tuple[int, np.ndarray, np.ndarray]


class FileVectors:
    """One file's embedding column, as blocks of consecutive rows, read while iterated.

    Args:
        index: the file's position in :attr:`ObservationIndex.files`.
        blocks: ``(start, vectors, ok)``: the block's first row within the file, float32
            ``[n, D]`` vectors (read-only views of the Arrow buffers where possible), and
            bool ``[n]`` rows that are usable (not null, of length ``D``, finite; the
            others are zero in ``vectors``). Iterated once.
    """

    def __init__(self, index: int, blocks: Iterable[Block]) -> None:
        self.index = index
        self._blocks = iter(blocks)
        self._ok: list[np.ndarray] = []

    @property
    def blocks(self) -> Iterator[Block]:
        """The blocks, in row order (each is read when it is reached; iterate once)."""
        for block in self._blocks:
            self._ok.append(block[2])
            yield block

    @property
    def ok(self) -> np.ndarray:
        """Usable rows, bool ``[rows]``, of the blocks iterated so far (all: the file's)."""
        return np.concatenate(self._ok) if self._ok else np.zeros(0, dtype=bool)

    def whole(self) -> tuple[np.ndarray, np.ndarray]:
        """The (remaining) blocks in one writable copy: float32 ``[rows, D]``, ``ok [rows]``."""
        parts = [v for _, v, _ in self.blocks]
        return (np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)), self.ok


def _finite_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows without NaN or infinity, bool ``[n]`` (a row sum first: no ``[n, D]`` mask)."""
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(vectors.sum(axis=1))
    maybe = np.flatnonzero(~finite)  # NaN/inf, or a sum of huge finite values
    if maybe.size:
        finite[maybe] = np.isfinite(vectors[maybe]).all(axis=1)
    return finite


def iter_file_vectors(path: Path, column: str, dim: int, *, block_rows: int | None = None
                      ) -> Iterator[Block]:
    """Stream one file's embedding column as blocks of at most ``block_rows`` rows.

    Each row group is decoded batch by batch (memory: one block, not the file).

    Args:
        path: an embeddings Parquet file.
        column: ``embedding`` or ``embedding_mean``.
        dim: expected dimension ``D``.
        block_rows: most rows per block (default :data:`BLOCK_ROWS`).

    Yields:
        ``(start, vectors float32 [n, D], ok bool [n])`` in row order (``start``: first
        row of the block in the file); rows that are null, of another length or not
        finite are zero in ``vectors`` and False in ``ok``. Vectors of a
        ``fixed_size_list<float32>`` column without nulls are zero-copy (read-only).
    """
    block_rows = block_rows or BLOCK_ROWS
    start = 0
    for chunk in iter_row_group_batches(path, made_by="embed", column=column,
                                        batch_size=block_rows):
        n = len(chunk)
        if pa.types.is_fixed_size_list(chunk.type) and chunk.null_count == 0 and \
                chunk.type.list_size == dim and pa.types.is_float32(chunk.type.value_type):
            vectors = chunk.flatten().to_numpy(zero_copy_only=False).reshape(n, dim)
            ok = np.ones(n, dtype=bool)
        else:
            vectors = np.zeros((n, dim), dtype=np.float32)
            ok = np.ones(n, dtype=bool)
            for i, item in enumerate(chunk.to_pylist()):
                if item is None or len(item) != dim:
                    ok[i] = False
                else:
                    vectors[i] = item
        finite = _finite_rows(vectors)
        if not finite.all():
            vectors = vectors.copy() if not vectors.flags.writeable else vectors
            vectors[~finite] = 0.0
        yield start, vectors, ok & finite
        start += n


def read_vectors(path: Path, column: str, dim: int, *, block_rows: int | None = None
                 ) -> list[Block]:
    """Read one file's embedding column as blocks: :func:`iter_file_vectors` as a list."""
    return list(iter_file_vectors(path, column, dim, block_rows=block_rows))


def iter_vectors(index: ObservationIndex, column: str, *, order: Sequence[int] | None = None
                 ) -> Iterator[FileVectors]:
    """Stream the embedding column file by file, block by block, decoding ahead.

    A background thread decodes the next :data:`PREFETCH_BLOCKS` blocks (pyarrow
    decodes without the GIL, across file boundaries) while the caller works on the
    current one: memory is a few blocks, not whole files.

    Args:
        index: the files and their row numbering.
        column: ``embedding`` or ``embedding_mean``.
        order: file indexes in the order to stream them (default: all, in order).

    Yields:
        :class:`FileVectors` (iterate its blocks before taking the next file: the rest
        are skipped otherwise); the file's global rows are ``index.offsets[i]`` plus each
        block's ``start``.

    Raises:
        GeofmValueError: a file's row count changed since :func:`index_embeddings`.
    """
    import queue
    import threading

    files = list(range(len(index.files))) if order is None else list(order)
    if not files:
        return
    blocks: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=PREFETCH_BLOCKS)
    stop = threading.Event()
    block_rows = BLOCK_ROWS  # read here: the module value (tests change it)

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                blocks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for i in files:
                path, got = index.files[i], 0
                for block in iter_file_vectors(path, column, index.dim, block_rows=block_rows):
                    got += block[2].size
                    if not put(("block", block)):
                        return
                expected = int(index.offsets[i + 1] - index.offsets[i])
                if got != expected:
                    raise GeofmValueError(f"{path} changed while being analysed ({got} rows, "
                                          f"{expected} before); re-run when `geofm embed` "
                                          "is done.")
                if not put(("end", i)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))

    def file_blocks() -> Iterator[Block]:
        while True:
            kind, item = blocks.get()
            if kind == "error":
                raise item
            if kind == "end":
                return
            yield item

    reader = threading.Thread(target=produce, name="geofm-read", daemon=True)
    reader.start()
    try:
        for i in files:
            current = FileVectors(i, file_blocks())
            yield current
            for _ in current.blocks:  # whatever the caller left unread
                pass
            del current
    finally:
        stop.set()
        reader.join()
