"""The LanceDB table ``chips`` under ``index/``: schema, incremental upsert, ANN policy.

One row per embedded chip and acquisition, keyed by ``key = "<scene_id>/<chip_id>"``.
Vectors are stored L2-normalised, so cosine similarity is a dot product and LanceDB's
``cosine`` distance is ``1 - similarity``:

- ``vector``: the embedding (``cls`` or ``mean``, see ``geofm_index.json``) divided by
  its L2 norm; the norm is kept in ``vector_norm``.
- ``vector_centred``: ``embedding - mean`` divided by its norm, where ``mean`` is the run
  mean vector stored in ``geofm_index.json`` (computed when the table is first built or
  rebuilt with ``overwrite``; rows added later are centred with that same mean so that
  old and new rows stay comparable). Untrained or collapsed encoders give CLS vectors
  that are all nearly parallel (cosine ~ 0.99 between any two chips); centring removes
  the shared component so that cosine measures what differs between chips.

Footprint filters use the WGS84 bounding-box columns ``west south east north``
(degrees); ``geometry`` is the WGS84 footprint polygon as WKB.

Below ``ann_min_rows`` rows the table is searched exactly (flat scan). From that size
on an ANN index (IVF_SQ by default) is built on both vector columns automatically (see
:func:`ann_parameters`) and its query parameters are calibrated to a target recall on
the table itself (:mod:`geofm.index.recall`); rows added later are searched exactly
beside the index and the recall measured again by :func:`sync_ann_index`, which
re-trains the index when they exceed a tenth of the table or the recall degraded.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geofm.exceptions import SearchIndexError
from geofm.io import write_json_atomic
from geofm.layout import RunRoot

if TYPE_CHECKING:
    import lancedb
    import numpy as np
    import pyarrow as pa

TABLE_NAME = "chips"
INFO_NAME = "geofm_index.json"
KEY = "key"
VECTOR_COLUMNS = ("vector", "vector_centred")
#: default table size from which an ANN index is built (exact search below it).
ANN_MIN_ROWS = 100_000
#: query parameters of an ANN index before calibration (indexes written before
#: ``geofm.index.recall`` existed keep using them).
DEFAULT_NPROBES = 32
DEFAULT_REFINE_FACTOR = 20


@dataclass
class IndexInfo:
    """What ``geofm_index.json`` records beside the table.

    Attributes:
        embedding: ``"cls"`` or ``"mean"``: which embedding column is indexed.
        dim: vector length D.
        model: model identity from the embeddings' ``geofm`` schema metadata.
        mean: the run mean vector (float, length D) used for ``vector_centred``.
        mean_rows: number of rows the mean was computed from.
        rows: rows in the table after the last ``geofm index``.
        ann: ``None`` (exact search) or the ANN index parameters, including the
            query-time ``nprobes`` and ``refine_factor`` (enough for every column),
            ``target_recall``, ``calibration`` (per vector column: the calibrated
            choice, its measured recall@10 and latency,
            :meth:`geofm.index.recall.Calibration.to_dict`) and ``maintenance`` (what
            the last ``geofm index`` did to the index and why, see
            :func:`sync_ann_index`).
        ann_min_rows: table size from which an ANN index is built.
        metric: distance LanceDB computes (``cosine``: 1 - similarity).
    """

    embedding: str
    dim: int
    model: dict[str, Any]
    mean: list[float]
    mean_rows: int
    rows: int = 0
    ann: dict[str, Any] | None = None
    ann_min_rows: int = ANN_MIN_ROWS
    metric: str = "cosine"
    table: str = TABLE_NAME
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, root: RunRoot) -> IndexInfo:
        """Read ``index/geofm_index.json``; :class:`SearchIndexError` when absent."""
        path = info_path(root)
        if not path.exists():
            raise SearchIndexError(
                f"no search index at {root.index_dir} (missing {path.name}); "
                f"run `geofm index --root {root.path}` first"
            )
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return cls(**data)

    def write(self, root: RunRoot) -> None:
        """Write ``index/geofm_index.json`` atomically."""
        write_json_atomic(info_path(root), asdict(self))


def info_path(root: RunRoot) -> Path:
    """Path of the JSON that describes the index (model, embedding, dim, mean, ANN)."""
    return root.index_dir / INFO_NAME


def table_schema(dim: int) -> pa.Schema:
    """Arrow schema of the ``chips`` table for vectors of length ``dim``."""
    import pyarrow as pa

    vec = pa.list_(pa.float32(), dim)
    ts = pa.timestamp("us", tz="UTC")
    return pa.schema([
        pa.field(KEY, pa.string(), nullable=False),
        pa.field("chip_id", pa.string(), nullable=False),
        pa.field("scene_id", pa.string(), nullable=False),
        pa.field("tile", pa.string()),
        pa.field("date", ts),
        pa.field("vector", vec),
        pa.field("vector_centred", vec),
        pa.field("vector_norm", pa.float32()),
        pa.field("geometry", pa.binary()),
        pa.field("west", pa.float64()),
        pa.field("south", pa.float64()),
        pa.field("east", pa.float64()),
        pa.field("north", pa.float64()),
        pa.field("cloud_fraction", pa.float32()),
        pa.field("thumbnail_path", pa.string()),
        pa.field("change_status", pa.string()),
        pa.field("change", pa.bool_()),
        pa.field("change_date", ts),
        pa.field("magnitude", pa.float32()),
    ])


#: optional text columns that ``geofm index --describe`` adds (see
#: :mod:`geofm.generative.describe`): the generated ``description`` and ``search_text``
#: (description + chip id, tile, scene id, change status), which has the full-text index.
TEXT_COLUMNS = ("description", "search_text")
FTS_COLUMN = "search_text"
#: columns refreshed on rows already in the table when ``analyze`` has been re-run.
CHANGE_COLUMNS = ("change_status", "change", "change_date", "magnitude")


def normalise(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalise rows.

    Args:
        vectors: float [N, D].

    Returns:
        ``(unit, norms)``: float32 [N, D] unit rows and float32 [N] norms. Rows of norm
        zero stay zero (their cosine to anything is 0).
    """
    import numpy as np

    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1)
    safe = np.where(norms > 0, norms, 1.0)
    return (vectors / safe[..., None]).astype(np.float32), norms.astype(np.float32)


def connect(root: RunRoot) -> lancedb.DBConnection:
    """Connect to the LanceDB database ``index/`` of a run root."""
    import lancedb

    root.index_dir.mkdir(parents=True, exist_ok=True)
    return lancedb.connect(str(root.index_dir))


def open_table(root: RunRoot) -> lancedb.table.Table:
    """Open the ``chips`` table; :class:`SearchIndexError` if it is missing or empty."""
    hint = f"run `geofm index --root {root.path}` first"
    if not root.index_dir.is_dir():
        raise SearchIndexError(f"no search index at {root.index_dir}; {hint}")
    db = connect(root)
    try:
        table = db.open_table(TABLE_NAME)
    except (ValueError, FileNotFoundError) as exc:
        raise SearchIndexError(
            f"no table {TABLE_NAME!r} in the search index {root.index_dir}; {hint}"
        ) from exc
    if table.count_rows() == 0:
        raise SearchIndexError(
            f"the search index {root.index_dir} is empty (no embedded chips were indexed); "
            f"run `geofm embed` and then `geofm index --root {root.path}`"
        )
    return table


def upsert(table: lancedb.table.Table, rows: pa.Table) -> tuple[int, int]:
    """Insert rows whose key is new and refresh the change columns of the others.

    Args:
        table: the ``chips`` table.
        rows: rows in :func:`table_schema`; keys already in the table have their whole
            row replaced (only the change columns can differ for the same key).

    Returns:
        ``(inserted, updated)`` row counts.
    """
    if rows.num_rows == 0:
        return 0, 0
    result = (table.merge_insert(KEY).when_matched_update_all()
              .when_not_matched_insert_all().execute(rows))
    return int(result.num_inserted_rows), int(result.num_updated_rows)


#: ANN index kinds :func:`create_ann_index` can build.
ANN_TYPES = ("IVF_PQ", "IVF_SQ", "IVF_FLAT", "IVF_HNSW_SQ")
#: default ANN index kind (see ``benchmarks/results/search.md`` for the comparison).
DEFAULT_ANN_TYPE = "IVF_SQ"


def ann_parameters(n_rows: int, dim: int, *, index_type: str = DEFAULT_ANN_TYPE
                   ) -> dict[str, Any]:
    """ANN index parameters for ``n_rows`` vectors of length ``dim``.

    ``sqrt(n)`` IVF partitions (about 1,000 rows each at 1M rows), k-means trained on
    64 rows per partition for 20 iterations (enough on 2 cores), cosine metric. For
    IVF_PQ: sub-vectors of 8 values (``dim / 8``; 96 for D = 768) with 8-bit codes;
    IVF_SQ: 8-bit scalar quantisation; IVF_HNSW_SQ: an HNSW graph per partition.
    ``nprobes`` = ``DEFAULT_NPROBES`` and ``refine_factor`` = ``DEFAULT_REFINE_FACTOR``
    are placeholders: :func:`sync_ann_index` replaces them by the values calibrated to
    the target recall (see ``benchmarks/results/search.md``).
    """
    from geofm.exceptions import GeofmValueError

    if index_type not in ANN_TYPES:
        raise GeofmValueError(f"ANN index type {index_type!r} is not one of {ANN_TYPES}")
    partitions = max(1, int(math.sqrt(n_rows)))
    sub_vectors = dim // 8 if dim % 8 == 0 else dim // 4 if dim % 4 == 0 else 1
    params: dict[str, Any] = {"index_type": index_type, "metric": "cosine",
                              "num_partitions": partitions, "sample_rate": 64,
                              "max_iterations": 20, "nprobes": DEFAULT_NPROBES,
                              "refine_factor": DEFAULT_REFINE_FACTOR}
    if index_type == "IVF_PQ":
        params.update(num_sub_vectors=sub_vectors, num_bits=8)
    return params


def create_ann_index(table: lancedb.table.Table, column: str, params: dict[str, Any]) -> None:
    """Build (or replace) the ANN index described by ``params`` on one vector column."""
    from lancedb.index import IvfFlat, IvfHnswSq, IvfPq, IvfSq

    common = {"distance_type": params["metric"], "num_partitions": params["num_partitions"],
              "sample_rate": params["sample_rate"], "max_iterations": params["max_iterations"]}
    kind = params["index_type"]
    if kind == "IVF_PQ":
        config: Any = IvfPq(num_sub_vectors=params["num_sub_vectors"],
                            num_bits=params["num_bits"], **common)
    elif kind == "IVF_SQ":
        config = IvfSq(**common)
    elif kind == "IVF_FLAT":
        config = IvfFlat(**common)
    else:
        config = IvfHnswSq(**common)
    table.create_index(column, config=config, replace=True)


def query_parameters(info: IndexInfo, column: str, *, nprobes: int | None = None,
                     refine_factor: int | None = None) -> tuple[int, int]:
    """``(nprobes, refine_factor)`` for an ANN query on ``column``.

    Explicit values win; otherwise the calibrated choice for that column (see
    :func:`geofm.index.recall.calibrate`), else the index-wide values in ``info.ann``
    (indexes built before calibration existed).

    Raises:
        SearchIndexError: the table has no ANN index (``info.ann`` is None).
    """
    if info.ann is None:
        raise SearchIndexError("the index has no ANN index: it is searched exactly")
    chosen = info.ann.get("calibration", {}).get(column, info.ann)
    return (int(nprobes or chosen["nprobes"]), int(refine_factor or chosen["refine_factor"]))


def _calibrate_columns(table: lancedb.table.Table, info: IndexInfo, params: dict[str, Any],
                       target_recall: float, seed: int) -> None:
    """Calibrate every vector column and store the choice in ``info.ann``."""
    from geofm.index.recall import calibrate

    calibration = {column: calibrate(table, column, num_partitions=params["num_partitions"],
                                     target_recall=target_recall, seed=seed, key=KEY).to_dict()
                   for column in VECTOR_COLUMNS}
    info.ann = {**params, "target_recall": target_recall, "calibration": calibration,
                # index-wide values: enough for every column (older readers use these)
                "nprobes": max(c["nprobes"] for c in calibration.values()),
                "refine_factor": max(c["refine_factor"] for c in calibration.values())}


def _unindexed_rows(table: lancedb.table.Table) -> int:
    """Rows of the table not yet in the ANN index of some vector column."""
    counts = [0]
    for index in table.list_indices():
        stats = table.index_stats(index.name)
        if stats is not None and set(index.columns) & set(VECTOR_COLUMNS):
            counts.append(int(stats.num_unindexed_rows))
    return max(counts)


#: unindexed rows (appended since the index was trained), as a fraction of the table,
#: up to which :func:`sync_ann_index` leaves them to LanceDB's exact scan of unindexed
#: rows; more than this and the index is re-trained. At 10 % a query scans its share
#: of the index plus a tenth of the table exactly (about 20 ms per query at 1M x 768
#: on this machine, see ``benchmarks/results/search.md``).
UNINDEXED_FRACTION = 0.10
#: after an append the stored choice may be at most this many times slower than when
#: calibrated (or ``LATENCY_SLACK_MS`` slower, whichever allows more) before the index
#: is re-trained: LanceDB reads unindexed rows in full (at 1M x 768, 1/60 more rows
#: took a query from 11 to 95 ms, see ``benchmarks/results/search.md``).
LATENCY_SLACK = 2.0
LATENCY_SLACK_MS = 10.0
#: an index whose probed partitions hold more than this many times the rows their share
#: of the partitions should (``rows * nprobes / num_partitions``) is re-trained.
SCAN_SLACK = 4


def remeasure(table: lancedb.table.Table, info: IndexInfo, *, seed: int = 0
              ) -> dict[str, dict[str, float]]:
    """Recall@10 and scan size of the stored query choice of every vector column, now.

    Uses a fresh seeded sample of the table's rows (see
    :class:`geofm.index.recall.RecallProbe`).

    Returns:
        Per column ``{"recall", "p50_ms", "p50_limit_ms", "scanned_rows",
        "expected_rows"}``: recall@10 of the stored ``nprobes`` / ``refine_factor``;
        its median latency now and the most it may take (``LATENCY_SLACK`` times the
        calibrated one, at least ``LATENCY_SLACK_MS`` more; measured first: a column
        over it ends the measurement there, with only those two keys); the rows one
        query scans (its probed partitions plus the rows the index does not cover
        yet, which LanceDB scans exactly; counted up to ``SCAN_SLACK`` times the
        expected number); and the rows it should scan,
        ``indexed * nprobes / num_partitions + unindexed``.
    """
    from geofm.index.recall import RecallProbe, calibration_queries

    assert info.ann is not None
    rows = table.count_rows()
    unindexed = _unindexed_rows(table)
    out = {}
    for column in VECTOR_COLUMNS:
        nprobes, refine = query_parameters(info, column)
        probe = RecallProbe(table, column, n_queries=calibration_queries(rows), seed=seed,
                            key=KEY)
        share = min(1.0, nprobes / info.ann["num_partitions"])
        expected = (rows - unindexed) * share + unindexed
        cap = int(min(rows, SCAN_SLACK * expected + 100))
        calibrated = info.ann.get("calibration", {}).get(column, {}).get("p50_ms")
        limit = (max(LATENCY_SLACK * calibrated, calibrated + LATENCY_SLACK_MS)
                 if calibrated else math.inf)
        p50 = probe.p50_ms(nprobes, refine)  # first: it needs no exact pass
        out[column] = {"p50_ms": round(p50, 2), "p50_limit_ms": round(limit, 2)}
        if p50 > limit:  # a re-train is due: skip the exact pass (seconds at 1M rows)
            return out
        out[column].update(recall=round(probe.measure(nprobes, refine, timed=0).recall, 4),
                           scanned_rows=probe.scanned_rows(nprobes, cap=cap),
                           expected_rows=round(expected, 1))
    return out


def _degraded(measured: dict[str, dict[str, float]], rows: int, target: float) -> str | None:
    """Why the index must be re-trained after an append, or None if it need not be."""
    for column, m in measured.items():
        if m.get("p50_ms", 0.0) > m.get("p50_limit_ms", math.inf):
            return (f"a {column} query now takes {m['p50_ms']:.1f} ms (median) > "
                    f"{m['p50_limit_ms']:.1f} ms allowed: the unindexed rows are read in "
                    "full")
    worst = min(m["recall"] for m in measured.values())
    if worst < target:
        return f"recall@10 fell to {worst:.3f} < target {target}"
    for column, m in measured.items():
        cap = min(rows, SCAN_SLACK * m["expected_rows"] + 100)
        if cap < rows and m["scanned_rows"] >= cap:
            return (f"a {column} query now scans >= {m['scanned_rows']:.0f} rows instead of "
                    f"about {m['expected_rows']:.0f}: the folded-in index no longer narrows "
                    "the search")
    return None


def sync_ann_index(table: lancedb.table.Table, info: IndexInfo, *,
                   target_recall: float | None = None, seed: int = 0) -> str | None:
    """Apply the ANN policy after rows were added; return what was done, if anything.

    Below ``info.ann_min_rows`` rows (or 11, the fewest recall@10 can be measured on)
    nothing happens (exact search). At or above it:

    - no index yet: build it on both vector columns and calibrate the query parameters
      to ``target_recall`` (:func:`geofm.index.recall.calibrate`) -> ``"built"``;
    - rows added or rewritten since, at most ``UNINDEXED_FRACTION`` of the table: leave
      them out of the index. LanceDB searches rows the index does not cover with an
      exact scan and merges them with the ANN candidates, so they cost a flat scan of
      those rows only (but reads them in full: float32 vectors, no quantisation); the
      stored choice is measured again on a fresh sample of all rows, new ones included
      (:func:`remeasure`). Recall still at or above the target, a query scanning about
      its share (indexed share + the unindexed rows) and no more than
      ``LATENCY_SLACK`` times slower than calibrated -> ``"appended"``; else re-train
      (new k-means over all rows, partitions for the new size) and calibrate again
      -> ``"retrained"``;
    - more unindexed rows than that: re-train -> ``"retrained"``. The index is never
      folded with ``table.optimize()``: LanceDB 0.40 folds new rows into IVF_SQ so that
      one probe scans the 8-bit codes of every row (exact, but 45 instead of 11 ms a
      query at 1M x 768, see ``benchmarks/results/search.md``), which no later
      calibration can undo: only a re-train restores a narrowing index;
    - nothing added but another target (or an index that was never calibrated):
      calibrate again -> ``"recalibrated"``.

    What was done, why, and the recall before and after are kept in
    ``info.ann["maintenance"]``; the choice and its measured recall per column in
    ``info.ann["calibration"]``.

    Args:
        table: the ``chips`` table.
        info: the index description (updated in place).
        target_recall: recall@10 to reach, in (0, 1]; default the index's previous
            target, else :data:`geofm.index.recall.DEFAULT_TARGET_RECALL`.
        seed: seed of the calibration sample.
    """
    import time

    from geofm.index.recall import DEFAULT_TARGET_RECALL, RECALL_K, check_target_recall

    n_rows = table.count_rows()
    if n_rows < max(info.ann_min_rows, RECALL_K + 1):  # recall@10 needs 11 rows
        return None
    previous = info.ann.get("target_recall") if info.ann else None
    target = check_target_recall(target_recall if target_recall is not None
                                 else previous or DEFAULT_TARGET_RECALL)
    t0 = time.perf_counter()
    maintenance: dict[str, Any] = {"rows": n_rows}
    retrain = info.ann is None
    if info.ann is None:
        action, reason = "built", f"{n_rows} rows >= ann_min_rows {info.ann_min_rows}"
    else:
        new_rows = _unindexed_rows(table)
        stale = "calibration" not in info.ann or previous != target
        if not new_rows and not stale:
            return None
        if new_rows:
            maintenance["new_rows"] = new_rows
        action, reason = "recalibrated", f"target recall {previous} -> {target}"
        if new_rows > UNINDEXED_FRACTION * n_rows:
            retrain, action = True, "retrained"
            reason = (f"{new_rows} unindexed rows > {UNINDEXED_FRACTION:.0%} of {n_rows} "
                      "rows")
        elif new_rows:
            before = remeasure(table, info, seed=seed + 1)
            maintenance["measured_before"] = before
            why = _degraded(before, n_rows, min(target, previous or target))
            if why is not None:
                retrain, action = True, "retrained"
                reason = f"{why} after {new_rows} rows were added"
            elif not stale:
                worst = min(m["recall"] for m in before.values())
                for column, m in before.items():
                    info.ann["calibration"][column]["recall_now"] = m["recall"]
                info.ann["maintenance"] = {
                    **maintenance, "action": "appended",
                    "reason": f"{new_rows} new rows ({new_rows / n_rows:.1%} <= "
                              f"{UNINDEXED_FRACTION:.0%}) searched exactly beside the "
                              f"index; recall@10 {worst:.3f} still >= target {target}",
                    "seconds": round(time.perf_counter() - t0, 1)}
                return "appended"
    if retrain:
        params = ann_parameters(n_rows, info.dim)
        for column in VECTOR_COLUMNS:
            create_ann_index(table, column, params)
        maintenance["build_s"] = round(time.perf_counter() - t0, 1)
    else:
        assert info.ann is not None
        params = {k: v for k, v in info.ann.items()
                  if k not in ("calibration", "maintenance", "target_recall")}
    _calibrate_columns(table, info, params, target, seed)
    assert info.ann is not None
    info.ann["maintenance"] = {**maintenance, "action": action, "reason": reason,
                               "seconds": round(time.perf_counter() - t0, 1)}
    return action
