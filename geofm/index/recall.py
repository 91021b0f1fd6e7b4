"""Measure an ANN index's recall against exact search and choose its query parameters.

An IVF index answers a query by scanning the ``nprobes`` partitions whose centroids
are nearest and re-ranking ``refine_factor * k`` candidates with the full vectors. How
many partitions must be probed for a given recall depends on the data: on well
clustered vectors a few are enough, on weakly clustered ones the true neighbours are
spread over many partitions. :func:`calibrate` therefore measures, on the table
itself:

1. a seeded sample of ``n_queries`` rows of the table is used as queries (each row is
   held out of its own answer: its nearest *other* rows are its neighbours);
2. the exact answer is one brute-force pass (numpy, float32 dot products of the unit
   vectors) over the column, streamed in batches, keeping the cosine distance of
   every query's k-th nearest other row;
3. a trial ``(nprobes, refine_factor)`` scores, per query, the fraction of the ANN
   top-k whose exact cosine distance is within ``TIE_TOLERANCE`` of the k-th exact
   distance (ties count as hits); recall@k is the mean over queries, its standard
   error the standard deviation over queries / sqrt(n);
4. ``nprobes`` doubles (1, 2, 4, ... all partitions) at the largest refine factor
   until the lower bound ``recall - standard error`` reaches the target, and is
   bisected between the last miss and the first hit; then the refine factors are tried
   at that ``nprobes`` from the smallest up, stopping at the first that reaches the
   target (8-bit scalar quantisation hardly changes the order, so the smallest one
   usually does: one trial instead of three); the trial that reached the target with
   the lowest median single-query latency is chosen. Only settings that reach the
   target are timed (a miss cannot be chosen), except the fallback when none does.

Distances are LanceDB's ``cosine`` (1 - similarity); vectors are stored unit length
(see :mod:`geofm.index.table`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from geofm.exceptions import GeofmValueError

if TYPE_CHECKING:
    import lancedb
    import numpy as np

__all__ = ["DEFAULT_TARGET_RECALL", "CALIBRATION_QUERIES", "RECALL_K", "REFINE_FACTORS",
           "Trial", "Calibration", "calibration_queries", "check_target_recall",
           "RecallProbe", "calibrate"]

log = logging.getLogger(__name__)

#: recall@k that ``geofm index`` calibrates the query parameters to by default.
DEFAULT_TARGET_RECALL = 0.95
#: table rows used as calibration queries (at most; see :func:`calibration_queries`).
CALIBRATION_QUERIES = 200
#: the fewest calibration queries (tables under 500 rows use this many).
MIN_CALIBRATION_QUERIES = 50
#: neighbours per query whose recall is measured (recall@10).
RECALL_K = 10
#: refine factors tried, largest first (re-rank ``refine_factor * k`` candidates).
REFINE_FACTORS = (40, 20, 10, 5)
#: queries timed one at a time per trial for the median latency.
TIMED_QUERIES = 20
#: a result whose exact distance is this close to the k-th exact one counts as a hit.
TIE_TOLERANCE = 1e-5


def calibration_queries(rows: int) -> int:
    """Calibration queries for a table of ``rows`` rows: a tenth of it, 50 to 200."""
    return int(min(CALIBRATION_QUERIES, max(MIN_CALIBRATION_QUERIES, rows // 10)))


def check_target_recall(value: float | str) -> float:
    """Return ``value`` as a float if it is a recall in (0, 1].

    Raises:
        GeofmValueError: ``value`` is not a number in (0, 1].
    """
    try:
        target = float(value)
    except (TypeError, ValueError):
        raise GeofmValueError(
            f"target recall {value!r} is not a number; give a recall@10 in (0, 1], "
            f"e.g. {DEFAULT_TARGET_RECALL}") from None
    if not 0.0 < target <= 1.0:
        raise GeofmValueError(
            f"target recall {value!r} is outside (0, 1]; give a recall@10 in (0, 1], "
            f"e.g. {DEFAULT_TARGET_RECALL}")
    return target


@dataclass
class Trial:
    """One measured query setting.

    Attributes:
        nprobes: IVF partitions probed.
        refine_factor: ``refine_factor * k`` candidates re-ranked exactly.
        recall: mean recall@k over the calibration queries (0..1).
        recall_se: standard error of ``recall`` over queries.
        p50_ms: median single-query latency (milliseconds, this machine, now); 0.0
            when not timed (:func:`calibrate` times only settings reaching the target).
    """

    nprobes: int
    refine_factor: int
    recall: float
    recall_se: float
    p50_ms: float

    def reaches(self, target: float) -> bool:
        """True when ``recall - recall_se >= target`` (one standard error of margin)."""
        return self.recall - self.recall_se >= target - 1e-12


@dataclass
class Calibration:
    """The chosen query setting and how it was found.

    Attributes:
        nprobes: chosen IVF partitions to probe.
        refine_factor: chosen refine factor.
        recall: measured recall@k of the choice on the calibration queries.
        recall_se: its standard error.
        p50_ms: median single-query latency of the choice (ms).
        target: the recall@k aimed at.
        met: whether the choice reaches ``target`` (False: the best recall found, all
            partitions probed at the largest refine factor).
        k: neighbours per query.
        queries: number of calibration queries.
        rows: table rows when measured.
        seconds: wall time of the calibration (exact pass + trials).
        trials: every measured setting, in order.
    """

    nprobes: int
    refine_factor: int
    recall: float
    recall_se: float
    p50_ms: float
    target: float
    met: bool
    k: int
    queries: int
    rows: int
    seconds: float
    trials: list[Trial] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``geofm_index.json``), trials as compact lists."""
        data = asdict(self)
        data["trials"] = [[t.nprobes, t.refine_factor, round(t.recall, 4),
                           round(t.p50_ms, 2)] for t in self.trials]
        for key in ("recall", "recall_se", "p50_ms", "seconds"):
            data[key] = round(data[key], 4)
        return data


class RecallProbe:
    """Calibration queries of one vector column and their exact answers.

    Args:
        table: LanceDB table with unit vectors in ``column`` and unique ids in ``key``.
        column: fixed-size-list float32 vector column [D].
        n_queries: rows sampled as queries (capped at the table size - 1).
        k: neighbours per query.
        seed: sampling seed.
        key: unique id column (used to hold each query out of its own answer).
        batch_size: rows per batch of the exact pass.
    """

    def __init__(self, table: lancedb.table.Table, column: str, *,
                 n_queries: int = CALIBRATION_QUERIES, k: int = RECALL_K, seed: int = 0,
                 key: str = "key", batch_size: int = 65_536) -> None:
        import numpy as np

        self.table, self.column, self.k, self.key = table, column, k, key
        self.rows = table.count_rows()
        if self.rows <= k:
            raise GeofmValueError(
                f"recall@{k} needs more than {k} rows; the table has {self.rows}")
        n = min(n_queries, self.rows - 1)
        offsets = np.sort(np.random.default_rng(seed).choice(self.rows, n, replace=False))
        sample = table.take_offsets([int(o) for o in offsets]).to_arrow()
        self._key_type = sample.schema.field(key).type
        self.keys: list[Any] = sample.column(key).to_pylist()
        self.vectors = np.asarray(sample.column(column).to_pylist(), dtype=np.float32)  # [n, D]
        self._batch_size = batch_size
        self._kth: np.ndarray | None = None

    @property
    def kth(self) -> np.ndarray:
        """Cosine distance float32 [n] of each query's k-th nearest other row (exact).

        Computed by one pass over the table on first use (latency alone needs none).
        """
        if self._kth is None:
            self._kth = self._exact_kth(self._batch_size)
        return self._kth

    def _exact_kth(self, batch_size: int) -> np.ndarray:
        """Cosine distance float32 [n] of each query's k-th nearest other row (exact)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        k, q = self.k, self.vectors
        best = np.full((len(q), k), -np.inf, np.float32)  # top-k similarities
        value_set = pa.array(self.keys, self._key_type)
        reader = (self.table.search().select([self.key, self.column]).limit(None)
                  .to_batches(batch_size))
        for batch in reader:
            vecs = batch.column(self.column)
            dim = vecs.type.list_size
            v = np.asarray(vecs.flatten().to_numpy(zero_copy_only=False),
                           np.float32).reshape(-1, dim)
            sims = q @ v.T  # [n, m]
            own = pc.index_in(batch.column(self.key), value_set=value_set)
            rows = np.flatnonzero(own.is_valid().to_numpy(zero_copy_only=False))
            if len(rows):
                sims[own.to_numpy(zero_copy_only=False)[rows].astype(np.int64), rows] = -np.inf
            take = min(k, sims.shape[1])
            top = np.partition(sims, sims.shape[1] - take, axis=1)[:, -take:]
            best = np.partition(np.concatenate([best, top], axis=1), -k, axis=1)[:, -k:]
        return (1.0 - best.min(axis=1)).astype(np.float32)

    def _builder(self, vectors: Any, nprobes: int, refine_factor: int, limit: int) -> Any:
        builder: Any = self.table.search(vectors, vector_column_name=self.column)
        return (builder.distance_type("cosine").nprobes(nprobes).refine_factor(refine_factor)
                .select([self.key, "_distance"]).limit(limit))

    def scanned_rows(self, nprobes: int, *, cap: int, queries: int = 3) -> float:
        """Mean rows held by the partitions ``nprobes`` probes (at most ``cap``).

        A query without refinement and a limit of ``cap`` returns every row of the
        partitions it probes, up to ``cap``: the work one query does. It shows an index
        that no longer narrows the search (see :func:`geofm.index.table.sync_ann_index`).
        """
        builder: Any
        counts = []
        for vec in self.vectors[:queries]:
            builder = self.table.search(vec, vector_column_name=self.column)
            res = (builder.distance_type("cosine").nprobes(nprobes).select([self.key])
                   .limit(cap).to_arrow())
            counts.append(res.num_rows)
        return sum(counts) / max(1, len(counts))

    def measure(self, nprobes: int, refine_factor: int, *,
                timed: int = TIMED_QUERIES) -> Trial:
        """Recall@k and median latency of one setting on the calibration queries."""
        import numpy as np

        k = self.k
        res = self._builder(self.vectors, nprobes, refine_factor, k + 1).to_arrow()
        qi = res.column("query_index").to_numpy()
        keys = res.column(self.key).to_pylist()
        dist = res.column("_distance").to_numpy()
        hits = np.zeros(len(self.keys))
        for i in range(len(self.keys)):
            mine = [j for j in np.flatnonzero(qi == i) if keys[j] != self.keys[i]][:k]
            hits[i] = min(k, int((dist[mine] <= self.kth[i] + TIE_TOLERANCE).sum())) / k
        se = float(hits.std(ddof=1) / math.sqrt(len(hits))) if len(hits) > 1 else 0.0
        return Trial(nprobes=nprobes, refine_factor=refine_factor, recall=float(hits.mean()),
                     recall_se=se, p50_ms=self.p50_ms(nprobes, refine_factor, timed=timed))

    def p50_ms(self, nprobes: int, refine_factor: int, *, timed: int = TIMED_QUERIES
               ) -> float:
        """Median latency (ms) of ``timed`` single queries of one setting (0.0 if none)."""
        import numpy as np

        lat = []
        for vec in self.vectors[:timed]:
            t0 = time.perf_counter()
            self._builder(vec, nprobes, refine_factor, self.k + 1).to_arrow()
            lat.append((time.perf_counter() - t0) * 1000)
        return float(np.median(lat)) if lat else 0.0


def calibrate(table: lancedb.table.Table, column: str, *, num_partitions: int,
              target_recall: float = DEFAULT_TARGET_RECALL, n_queries: int | None = None,
              k: int = RECALL_K, seed: int = 0, key: str = "key",
              refine_factors: tuple[int, ...] = REFINE_FACTORS,
              timed: int = TIMED_QUERIES) -> Calibration:
    """Choose ``nprobes`` / ``refine_factor`` reaching ``target_recall`` at the lowest latency.

    Args:
        table: table with an IVF index on ``column`` (unit vectors, cosine metric).
        column: the indexed vector column.
        num_partitions: IVF partitions of the index (the largest useful ``nprobes``).
        target_recall: recall@k to reach, in (0, 1].
        n_queries: table rows sampled as held-out queries (default
            :func:`calibration_queries` of the table size).
        k: neighbours per query (recall@k).
        seed: sampling seed.
        key: unique id column.
        refine_factors: refine factors to try (the largest is used to find ``nprobes``).
        timed: calibration queries timed one at a time per trial (median latency).

    Returns:
        The choice; ``met`` is False when even every partition at the largest refine
        factor misses the target (then that setting is returned).
    """
    target = check_target_recall(target_recall)
    t0 = time.perf_counter()
    if n_queries is None:
        n_queries = calibration_queries(table.count_rows())
    probe = RecallProbe(table, column, n_queries=n_queries, k=k, seed=seed, key=key)
    trials: dict[tuple[int, int], Trial] = {}

    def run(nprobes: int, refine: int) -> Trial:
        if (nprobes, refine) not in trials:
            t = trials[nprobes, refine] = probe.measure(nprobes, refine, timed=0)
            if t.reaches(target):
                t.p50_ms = probe.p50_ms(nprobes, refine, timed=timed)
            log.debug("%s nprobes=%d refine=%d: recall@%d %.3f, p50 %.1f ms", column,
                      nprobes, refine, k, t.recall, t.p50_ms)
        return trials[nprobes, refine]

    top_refine = max(refine_factors)
    parts = max(1, int(num_partitions))
    ladder = sorted({min(parts, 2 ** i) for i in range(math.ceil(math.log2(parts)) + 1)})
    lo, hi = 0, None
    for nprobes in ladder:
        if run(nprobes, top_refine).reaches(target):
            hi = nprobes
            break
        lo = nprobes
    if hi is None:
        best = run(parts, top_refine)
        best.p50_ms = probe.p50_ms(parts, top_refine, timed=timed)
        met = False
    else:
        while hi - lo > max(1, hi // 8):  # bisect to within an eighth
            mid = (lo + hi) // 2
            if run(mid, top_refine).reaches(target):
                hi = mid
            else:
                lo = mid
        for refine in sorted(refine_factors)[:-1]:  # smallest first; top already passed
            if run(hi, refine).reaches(target):
                break
        passing = [t for t in trials.values() if t.reaches(target)]
        best = min(passing, key=lambda t: (t.p50_ms, t.nprobes, t.refine_factor))
        met = True
    return Calibration(nprobes=best.nprobes, refine_factor=best.refine_factor,
                       recall=best.recall, recall_se=best.recall_se, p50_ms=best.p50_ms,
                       target=target, met=met, k=k, queries=len(probe.keys),
                       rows=probe.rows, seconds=time.perf_counter() - t0,
                       trials=list(trials.values()))
