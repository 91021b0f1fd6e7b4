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
:func:`ann_parameters`); rows added later are searched exactly until
:func:`sync_ann_index` folds them into the index.
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
#: defaults for queries against an ANN index (stored in ``geofm_index.json``).
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
            query-time ``nprobes`` and ``refine_factor``.
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
    Queries probe ``DEFAULT_NPROBES`` partitions and re-rank ``refine_factor * k``
    candidates with the exact vectors, which brings recall@10 close to exact search
    (see ``benchmarks/results/search.md``).
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


def sync_ann_index(table: lancedb.table.Table, info: IndexInfo) -> bool:
    """Apply the ANN policy after rows were added; return True if an index was built.

    Below ``info.ann_min_rows`` nothing happens (exact search). At or above it the
    index is built once on both vector columns; later calls fold new rows into the
    existing index with ``table.optimize()``.
    """
    n_rows = table.count_rows()
    if n_rows < info.ann_min_rows:
        return False
    if info.ann is None:
        params = ann_parameters(n_rows, info.dim)
        for column in VECTOR_COLUMNS:
            create_ann_index(table, column, params)
        info.ann = params
        return True
    table.optimize()
    return False
