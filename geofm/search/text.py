"""Text and hybrid search over the descriptions written by ``geofm index --describe``.

- Text only (no chip id or vector): LanceDB's full-text (BM25) query on
  ``search_text``; ``score`` is the BM25 score and ``similarity`` is null.
- Text + a vector query: LanceDB's hybrid query (vector and full-text results fused by
  reciprocal-rank fusion, LanceDB's default reranker); ``score`` is the fused relevance
  and ``similarity`` the cosine to the query vector.

Results are ranked by ``score`` (best first); filters are the same prefilters as
vector search. Negative examples are not supported with text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from geofm.exceptions import GeofmValueError, SearchIndexError
from geofm.layout import RunRoot

if TYPE_CHECKING:
    import geopandas as gpd
    import lancedb

    from geofm.index.table import IndexInfo


def has_text_index(table: lancedb.table.Table) -> bool:
    """True when the table has ``search_text`` with a full-text index."""
    from geofm.index.table import FTS_COLUMN

    if FTS_COLUMN not in table.schema.names:
        return False
    return any(ix.index_type == "FTS" and FTS_COLUMN in ix.columns
               for ix in table.list_indices())


def text_search(root: RunRoot, table: lancedb.table.Table, info: IndexInfo, *, text: str,
                chip_ids: Sequence[str] = (), date: str | None = None, vector: Any = None,
                k: int = 10, min_similarity: float | None = None, start: str | None = None,
                end: str | None = None, bbox: Sequence[float] | str | None = None,
                max_cloud: float | None = None, centre: bool = False,
                nprobes: int | None = None, refine_factor: int | None = None,
                distinct: bool = False) -> gpd.GeoDataFrame:
    """Full-text or hybrid search; options as :func:`geofm.search.search`.

    Returns:
        GeoDataFrame (EPSG:4326) ranked by ``score``: the search result columns plus
        ``score`` and ``description``.

    Raises:
        SearchIndexError: the index has no full-text index (run ``geofm index
        --describe``).
        GeofmValueError: empty text.
    """
    import geopandas as gpd
    import numpy as np
    import pandas as pd
    import shapely

    from geofm.index.table import FTS_COLUMN, TEXT_COLUMNS
    from geofm.search.query import build_query
    from geofm.search.stage import _RESULT_COLUMNS, _place_keys, _places, build_filter, parse_bbox

    if not text.strip():
        raise GeofmValueError("--text must not be empty")
    if not has_text_index(table):
        raise SearchIndexError(
            f"the search index {root.index_dir} has no full-text index; run `geofm index "
            f"--root {root.path} --describe PROMPT --generative-provider ...` first")
    with_vector = bool(chip_ids) or vector is not None
    query = build_query(table, info, chip_ids=chip_ids, date=date, vector=vector,
                        centre=centre) if with_vector else None
    where = build_filter(exclude=query.exclude if query else (), start=start, end=end,
                         bbox=bbox, max_cloud=max_cloud)
    box = shapely.box(*parse_bbox(bbox)) if bbox is not None else None
    columns = [c for c in _RESULT_COLUMNS if c != "similarity"] + ["geometry", TEXT_COLUMNS[0]]
    if query is not None:
        columns.append(query.column)
    fetch = k if box is None and not distinct else 2 * k + 10
    places = _places(root) if distinct else {}
    while True:
        builder: Any
        if query is not None:
            builder = table.search(query_type="hybrid", vector_column_name=query.column)
            builder = builder.vector(query.vector).text(text).distance_type("cosine")
            if info.ann is not None:
                from geofm.index.table import query_parameters

                probes, refine = query_parameters(info, query.column, nprobes=nprobes,
                                                  refine_factor=refine_factor)
                builder = builder.nprobes(probes).refine_factor(refine)
            score = "_relevance_score"
        else:
            builder = table.search(text, query_type="fts", fts_columns=FTS_COLUMN)
            score = "_score"
        # naming _score silences lance's scoring-autoprojection notice (hybrid cannot)
        builder = builder.select(columns if query is not None else [*columns, score])
        builder = builder.limit(fetch)
        if where:
            builder = builder.where(where, prefilter=True)
        rows = builder.to_arrow().to_pandas()
        got = len(rows)
        rows["score"] = rows.pop(score).astype(np.float32)
        rows = rows.drop(columns=[c for c in ("_distance", "_score") if c in rows.columns])
        if query is not None:
            vecs = np.stack(rows.pop(query.column).to_numpy()) if len(rows) else \
                np.zeros((0, info.dim), np.float32)
            rows["similarity"] = (vecs @ query.vector).astype(np.float32)
        else:
            rows["similarity"] = np.float32(np.nan)
        rows["geometry"] = shapely.from_wkb(rows["geometry"].to_numpy())
        if box is not None:
            rows = rows[shapely.intersects(rows["geometry"].to_numpy(), box)]
        rows = rows.sort_values("score", ascending=False, kind="stable")
        if distinct:
            rows = rows[~_place_keys(rows["chip_id"], places).duplicated()]
        if len(rows) >= k or got < fetch:
            break
        fetch *= 4
    rows = rows.head(k)
    if min_similarity is not None and query is not None:
        rows = rows[rows["similarity"] >= min_similarity]
    rows["date"] = pd.to_datetime(rows["date"], utc=True)
    keep = [*_RESULT_COLUMNS, "score", TEXT_COLUMNS[0], "geometry"]
    result = gpd.GeoDataFrame(rows[keep].reset_index(drop=True), geometry="geometry", crs=4326)
    result.attrs["query"] = {"sources": query.sources if query else [], "text": text,
                             "centre": centre, "embedding": info.embedding, "filter": where,
                             "negatives": []}
    return result
