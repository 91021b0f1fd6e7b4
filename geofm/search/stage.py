"""``geofm search``: similarity search over an indexed run.

Query by one chip (``--chip-id``, acquisition ``--date`` or the latest one), by several
chips (the mean of their unit vectors: "average vector strategy"), or by a vector file;
push results away from rejected examples with ``--negative-chip-id`` (see
:mod:`geofm.search.query`). Similarity is the cosine between embeddings, or between
centred embeddings (``--centre``: the run mean vector is subtracted first; use it when
every cosine is close to 1, as with random-weight or collapsed encoders).

Filters (date range, WGS84 bbox, max cloud, query chips excluded) are applied inside
the vector search (prefilter), so ``k`` results come back whenever that many match.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from geofm.dates import parse_utc
from geofm.exceptions import GeofmValueError, SearchIndexError
from geofm.layout import RunRoot

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = ["search", "add_arguments", "run_cli", "main"]

_RESULT_COLUMNS = ["chip_id", "scene_id", "date", "similarity", "cloud_fraction",
                   "thumbnail_path", "change_status", "change", "change_date", "magnitude"]


def parse_bbox(text: str | Sequence[float]) -> tuple[float, float, float, float]:
    """``"W,S,E,N"`` (WGS84 degrees) or a 4-sequence -> a checked tuple."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        west, south, east, north = (float(p) for p in parts)
    except ValueError as exc:
        raise GeofmValueError(
            f"bbox {text!r} must be four numbers W,S,E,N in WGS84 degrees"
        ) from exc
    if not (west < east and south < north):
        raise GeofmValueError(
            f"bbox {text!r} must have W < E and S < N (WGS84 degrees; boxes across the "
            "antimeridian are not supported)"
        )
    return west, south, east, north


def build_filter(*, exclude: Sequence[str] = (), start: str | None = None,
                 end: str | None = None, bbox: Sequence[float] | str | None = None,
                 max_cloud: float | None = None) -> str | None:
    """SQL ``WHERE`` clause for the ``chips`` table (None when there is no filter).

    ``bbox`` keeps rows whose WGS84 bounding box overlaps it (the exact footprint test
    is done on the results); ``start``/``end`` are inclusive UTC days.
    """
    from geofm.search.query import sql_str

    terms = []
    if exclude:
        terms.append(f"chip_id NOT IN ({', '.join(sql_str(c) for c in exclude)})")
    if start is not None and end is not None and parse_utc(start) > parse_utc(end, end=True):
        raise GeofmValueError(f"start {start} is after end {end}: no date can match; give "
                              "an earlier start or a later end")
    if start is not None:
        terms.append(f"date >= timestamp '{parse_utc(start):%Y-%m-%d %H:%M:%S.%f}'")
    if end is not None:
        terms.append(f"date <= timestamp '{parse_utc(end, end=True):%Y-%m-%d %H:%M:%S.%f}'")
    if bbox is not None:
        west, south, east, north = parse_bbox(bbox)
        terms.append(f"east >= {west!r} AND west <= {east!r} AND north >= {south!r} "
                     f"AND south <= {north!r}")
    if max_cloud is not None:
        terms.append(f"cloud_fraction <= {float(max_cloud)!r}")
    return " AND ".join(f"({t})" for t in terms) or None


def search(root: str | os.PathLike[str] | RunRoot, *, chip_ids: Sequence[str] = (),
           date: str | None = None, vector: Any = None,
           negative_chip_ids: Sequence[str] = (), k: int = 10,
           min_similarity: float | None = None, start: str | None = None,
           end: str | None = None, bbox: Sequence[float] | str | None = None,
           max_cloud: float | None = None, centre: bool = False,
           embedding: str | None = None, nprobes: int | None = None,
           refine_factor: int | None = None, distinct: bool = False,
           text: str | None = None) -> gpd.GeoDataFrame:
    """Find the ``k`` chips most similar to a query.

    Args:
        root: run root with an index (``geofm index``).
        chip_ids: query chip ids; several are averaged. Every acquisition of these chips
            is excluded from the results.
        date: acquisition of the query chips (``YYYY-MM-DD``, UTC); default the latest.
        vector: a query vector (array [D] or [N, D], raw embedding) or a ``.npy`` /
            ``.json`` vector file path, alone or with ``chip_ids``.
        negative_chip_ids: chips the results should not resemble (excluded too); see
            :mod:`geofm.search.query` for the rule.
        k: number of results.
        min_similarity: drop results with a lower cosine similarity.
        start: earliest acquisition date (inclusive, UTC).
        end: latest acquisition date (inclusive, UTC).
        bbox: ``(west, south, east, north)`` WGS84 degrees or ``"W,S,E,N"``; keeps chips
            whose footprint intersects it.
        max_cloud: keep chips with ``cloud_fraction <= max_cloud`` (0..1).
        centre: cosine between centred vectors (run mean subtracted).
        embedding: if given, the index must have been built with it (``cls``/``mean``).
        nprobes: IVF partitions probed when the table has an ANN index (default: the
            value ``geofm index`` calibrated to its target recall, see
            :func:`geofm.index.table.query_parameters`).
        refine_factor: re-rank ``refine_factor * k`` ANN candidates exactly (default:
            the calibrated value).
        distinct: one result per chip location (its most similar acquisition), so the
            ``k`` results are ``k`` different places; chips of overlapping tiles on the
            same ground (``analysis/overlaps.parquet``, :mod:`geofm.analyze.overlaps`)
            count as one place.
        text: full-text query over the descriptions of ``geofm index --describe``:
            alone, or hybrid with ``chip_ids``/``vector`` (see :mod:`geofm.search.text`;
            adds ``score`` and ``description``, ranked by ``score``).

    Returns:
        GeoDataFrame (EPSG:4326), best first: ``chip_id scene_id date similarity
        cloud_fraction thumbnail_path change_status change change_date magnitude
        geometry``; ``attrs["query"]`` describes the query (``ann``: the
        ``nprobes`` / ``refine_factor`` used, None for exact search).

    Raises:
        SearchIndexError: no/empty index, unknown chip id, or a query incompatible with
            the index (dimension, model, embedding).
    """
    import geopandas as gpd
    import numpy as np
    import pandas as pd
    import shapely

    from geofm.index.table import IndexInfo, open_table, query_parameters
    from geofm.search.query import build_query

    root = RunRoot.of(root)
    if k < 1:
        raise GeofmValueError(f"k must be >= 1, got {k}")
    if min_similarity is not None and not -1.0 <= min_similarity <= 1.0:
        raise GeofmValueError(f"min_similarity is a cosine similarity in [-1, 1], got "
                              f"{min_similarity}")
    table = open_table(root)
    info = IndexInfo.read(root)
    if embedding is not None and embedding != info.embedding:
        raise SearchIndexError(
            f"the index in {root.index_dir} was built with embedding {info.embedding!r}, "
            f"not {embedding!r}; run `geofm index --root {root.path} --embedding {embedding} "
            "--overwrite` or search without --embedding"
        )
    if text is not None:
        from geofm.search.text import text_search

        if negative_chip_ids:
            raise GeofmValueError("--negative-chip-id cannot be combined with --text")
        return text_search(root, table, info, text=text, chip_ids=chip_ids, date=date,
                           vector=vector, k=k, min_similarity=min_similarity, start=start,
                           end=end, bbox=bbox, max_cloud=max_cloud, centre=centre,
                           nprobes=nprobes, refine_factor=refine_factor, distinct=distinct)
    query = build_query(table, info, chip_ids=chip_ids, date=date, vector=vector,
                        negative_chip_ids=negative_chip_ids, centre=centre)
    where = build_filter(exclude=query.exclude, start=start, end=end, bbox=bbox,
                         max_cloud=max_cloud)
    box = shapely.box(*parse_bbox(bbox)) if bbox is not None else None
    columns = [c for c in _RESULT_COLUMNS if c != "similarity"] + ["geometry", "_distance"]
    if len(query.negatives):
        columns.append(query.column)
    fetch = k if box is None and not len(query.negatives) and not distinct else 2 * k + 10
    places = _places(root) if distinct else {}
    ann = None if info.ann is None else query_parameters(
        info, query.column, nprobes=nprobes, refine_factor=refine_factor)
    while True:
        builder: Any = table.search(query.vector, vector_column_name=query.column)
        builder = builder.distance_type("cosine").select(columns).limit(fetch)
        if where:
            builder = builder.where(where, prefilter=True)
        if ann is not None:
            builder = builder.nprobes(ann[0]).refine_factor(ann[1])
        rows = builder.to_arrow().to_pandas()
        got = len(rows)
        rows["similarity"] = (1.0 - rows.pop("_distance")).astype(np.float32)
        rows["geometry"] = shapely.from_wkb(rows["geometry"].to_numpy())
        if box is not None:
            rows = rows[shapely.intersects(rows["geometry"].to_numpy(), box)]
        if len(query.negatives):
            vecs = np.stack(rows.pop(query.column).to_numpy()) if len(rows) else \
                np.zeros((0, info.dim), np.float32)
            to_pos = vecs @ query.positive
            to_neg = (vecs @ query.negatives.T).max(axis=1) if len(vecs) else to_pos
            rows = rows[to_neg <= to_pos]
        if distinct:
            rows = rows.sort_values("similarity", ascending=False, kind="stable")
            rows = rows[~_place_keys(rows["chip_id"], places).duplicated()]
        if len(rows) >= k or got < fetch:
            break
        fetch *= 4
    rows = rows.sort_values("similarity", ascending=False, kind="stable").head(k)
    if min_similarity is not None:
        rows = rows[rows["similarity"] >= min_similarity]
    rows["date"] = pd.to_datetime(rows["date"], utc=True)
    result = gpd.GeoDataFrame(rows[_RESULT_COLUMNS + ["geometry"]].reset_index(drop=True),
                              geometry="geometry", crs=4326)
    result.attrs["query"] = {"sources": query.sources, "centre": centre,
                             "embedding": info.embedding, "filter": where,
                             "negatives": list(negative_chip_ids),
                             "ann": None if ann is None else {"nprobes": ann[0],
                                                              "refine_factor": ann[1]}}
    return result


def _places(root: RunRoot) -> dict[str, str]:
    """Chip id -> representative chip of its place across overlapping tiles."""
    from geofm.analyze.overlaps import place_of

    return place_of(root)


def _place_keys(chip_ids: Any, places: dict[str, str]) -> Any:
    """Per result row, its place: the representative chip, or the chip itself."""
    return chip_ids.map(lambda c: places.get(c, c))


def cli_options() -> dict[str, Any]:
    """``geofm search``'s options: :func:`search`'s signature plus what it cannot say.

    Returns:
        ``{name: geofm.options.Option}``.
    """
    from geofm.cliargs import DateRangeBound, positive_int, similarity, utc_date
    from geofm.cliargs import bbox as cli_bbox
    from geofm.options import Cli, declare

    return declare(search, {
        "root": Cli(required=True, help="run root with an index"),
        "chip_ids": Cli(flags=("--chip-id",), action="append", metavar="ID",
                        help="query chip (repeat for several: their mean vector is used)"),
        "date": Cli(type=utc_date, help="acquisition of the query chips, YYYY-MM-DD "
                                        "(default: the latest)"),
        "vector": Cli(flags=("--vector-file",), metavar="F",
                      help="query vector: .npy ([D] or [N, D]) or .json list"),
        "negative_chip_ids": Cli(flags=("--negative-chip-id",), action="append", metavar="ID",
                                 help="chip the results should not resemble (repeatable)"),
        "k": Cli(type=positive_int),
        "min_similarity": Cli(type=similarity, metavar="S"),
        "start": Cli(type=utc_date, action=DateRangeBound, metavar="D"),
        "end": Cli(type=utc_date, action=DateRangeBound, metavar="D"),
        "bbox": Cli(type=cli_bbox, metavar="W,S,E,N",
                    help="WGS84 box the chip footprint must intersect (write "
                         "--bbox=W,S,E,N when W is negative)"),
        "max_cloud": Cli(type=float, metavar="F"),
        "embedding": Cli(choices=("cls", "mean")),
        "text": Cli(metavar="QUERY",
                    help="full-text query over `geofm index --describe` descriptions; "
                         "hybrid with --chip-id / --vector-file"),
    })


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``geofm search`` options to ``parser`` (from :func:`cli_options`)."""
    from geofm.generative.cli import add_hit_arguments
    from geofm.options import add_arguments as add_options

    add_options(parser, cli_options().values())
    add_hit_arguments(parser)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``geofm search`` from parsed arguments; return the exit code."""
    from geofm.generative.cli import deliver, prepare, usage_error
    from geofm.options import library_kwargs

    if not args.chip_ids and not args.vector and not args.text:
        raise GeofmValueError("give --chip-id ID (repeatable), --vector-file F or --text QUERY")
    try:
        generation = prepare(args, [*_RESULT_COLUMNS, *(("score", "description")
                                                        if args.text else ())])
    except GeofmValueError as exc:
        return usage_error(exc)
    return deliver(search(**library_kwargs(args, cli_options().values())), generation, args)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m geofm.search`` style entry point."""
    from geofm.cli import stage_main

    return stage_main("search", argv)
