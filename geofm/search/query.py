"""Build the query vector: from chip ids (mean of positives), a vector file, negatives.

All vectors live in the index's search space: ``vector`` (unit embeddings) or, with
centring, ``vector_centred`` (unit ``embedding - run mean``); see
:mod:`geofm.index.table`.

Negative examples (Rocchio-style relevance feedback)::

    q = normalise(mean(positives) - NEGATIVE_WEIGHT * mean(negatives))

with unit vectors throughout and ``NEGATIVE_WEIGHT = 0.5``. In addition, a result that
is more similar to one of the negatives than to the positive query
``normalise(mean(positives))`` is dropped.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError, SearchIndexError
from geofm.index.table import IndexInfo, normalise

if TYPE_CHECKING:
    import lancedb
    import numpy as np
    import pyarrow as pa

#: weight of the mean negative vector subtracted from the positive query.
NEGATIVE_WEIGHT = 0.5


@dataclass
class Query:
    """A resolved query.

    Attributes:
        vector: unit query vector float32 [D] in the column ``column``.
        column: ``"vector"`` or ``"vector_centred"``.
        positive: unit mean of the positives (before the negative shift), float32 [D].
        negatives: unit vectors of the negative examples, float32 [M, D] (M may be 0).
        exclude: chip ids excluded from the results (query and negative chips).
        sources: the (chip_id, scene_id, date) rows or file the query was built from.
    """

    vector: np.ndarray
    column: str
    positive: np.ndarray
    negatives: np.ndarray
    exclude: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)


def sql_str(value: str) -> str:
    """Quote a string for a LanceDB SQL filter."""
    return "'" + str(value).replace("'", "''") + "'"


def _all_chip_ids(table: lancedb.table.Table) -> list[str]:
    ids = table.search().select(["chip_id"]).limit(None).to_arrow().column("chip_id")
    return sorted(set(ids.to_pylist()))


def lookup_chips(table: lancedb.table.Table, chip_ids: Sequence[str], date: str | None,
                 column: str) -> pa.Table:
    """One indexed acquisition per chip id: on ``date`` (UTC day) or the latest one.

    Args:
        table: the ``chips`` table.
        chip_ids: chip ids to look up.
        date: ``YYYY-MM-DD`` (any pandas-parsable date); None = latest acquisition.
        column: the vector column to return.

    Returns:
        Arrow rows ``chip_id scene_id date <column>``, one per chip id, in order.

    Raises:
        SearchIndexError: a chip id is not in the index (close ids are suggested), or
            it has no acquisition on ``date`` (its dates are listed).
        GeofmValueError: ``date`` is not a date.
    """
    import pandas as pd
    import pyarrow as pa

    from geofm.dates import parse_utc

    ids = list(dict.fromkeys(chip_ids))
    where = f"chip_id IN ({', '.join(sql_str(c) for c in ids)})"
    rows = (table.search().where(where).select(["chip_id", "scene_id", "date", column])
            .limit(None).to_arrow().to_pandas())
    chosen = []
    for chip_id in ids:
        mine = rows[rows["chip_id"] == chip_id].sort_values("date")
        if mine.empty:
            close = difflib.get_close_matches(chip_id, _all_chip_ids(table), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else \
                "; list the indexed chips in consolidated.parquet"
            raise SearchIndexError(f"chip id {chip_id!r} is not in the search index{hint}")
        if date is None:
            chosen.append(mine.iloc[-1])
            continue
        day = parse_utc(date)
        on_day = mine[mine["date"].dt.normalize() == day.normalize()]
        if on_day.empty:
            dates = ", ".join(d.strftime("%Y-%m-%d") for d in mine["date"])
            raise SearchIndexError(
                f"chip {chip_id!r} has no indexed acquisition on {day:%Y-%m-%d}; "
                f"its dates are: {dates}"
            )
        chosen.append(on_day.iloc[-1])
    frame = pd.DataFrame(chosen).reset_index(drop=True)
    return pa.Table.from_pandas(frame, preserve_index=False)


def _vectors(rows: pa.Table, column: str) -> np.ndarray:
    import numpy as np

    return np.stack([np.asarray(v, dtype=np.float32) for v in rows.column(column).to_pylist()])


def read_vector_file(path: str | os.PathLike[str], info: IndexInfo) -> np.ndarray:
    """Raw query vector(s) from ``.npy`` ([D] or [N, D]) or ``.json``.

    JSON is a list of D numbers, a list of such lists, or an object
    ``{"vector": [...], "model": {...}, "embedding": "cls"}``; when ``model`` or
    ``embedding`` are given they must match the index (``model`` by
    :meth:`geofm.model.identity.ModelIdentity.compatible`).

    Returns:
        float32 [N, D] raw (not normalised) vectors.

    Raises:
        GeofmFileNotFoundError: the file does not exist.
        GeofmValueError: the file is not valid JSON, not a numeric ``.npy`` array (object
            arrays are never unpickled), or holds something other than numbers.
        SearchIndexError: the vector length, model or embedding differs from the index.
    """
    import numpy as np

    path = Path(path)
    if not path.exists():
        raise GeofmFileNotFoundError(f"vector file {path} does not exist")
    if path.suffix == ".npy":
        try:  # never unpickle: an object array is refused, not loaded
            values = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise GeofmValueError(
                f"vector file {path} is not a numeric .npy array ({exc}); save a float "
                "array [D] or [N, D] with numpy.save (no object/pickled arrays)") from None
        if not isinstance(values, np.ndarray) or values.dtype.kind not in "fiu":
            raise GeofmValueError(
                f"vector file {path} holds {getattr(values, 'dtype', type(values).__name__)} "
                "values; save a float array [D] or [N, D] with numpy.save")
    elif path.suffix == ".json":
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (ValueError, UnicodeDecodeError) as exc:
            raise GeofmValueError(
                f"vector file {path} is not valid JSON ({exc}); write a list of D numbers, "
                'a list of such lists, or {"vector": [...]}') from None
        if isinstance(data, dict):
            if "model" in data:
                from geofm.model.identity import ModelIdentity, format_differences

                diffs = ModelIdentity.from_dict(data["model"]).differences(
                    ModelIdentity.from_dict(info.model))
                if diffs:
                    raise SearchIndexError(
                        f"{path} was computed with model {data['model']!r} but the index "
                        f"was built with another one (file vs index: "
                        f"{format_differences(diffs)}); re-index with that model or compute "
                        "the vector with the index's model"
                    )
            if "embedding" in data and data["embedding"] != info.embedding:
                raise SearchIndexError(
                    f"{path} was computed with embedding {data['embedding']!r} but the index "
                    f"was built with {info.embedding!r}; re-index with that embedding or "
                    "compute the vector with the index's embedding"
                )
            data = data.get("vector")
        try:
            values = np.asarray(data, dtype=np.float32)
        except (TypeError, ValueError):
            raise GeofmValueError(
                f"vector file {path} does not hold numbers (a list of D numbers, a list of "
                'such lists, or {"vector": [...]} expected)') from None
    else:
        raise GeofmValueError(f"vector file {path} must end in .npy or .json")
    values = np.atleast_2d(np.asarray(values, dtype=np.float32))
    if values.ndim != 2 or values.shape[1] != info.dim:
        raise SearchIndexError(
            f"the query vector in {path} has {values.shape[-1]} values but the index was "
            f"built with dim {info.dim} (model {info.model.get('preset', '?')}, embedding "
            f"{info.embedding!r}); use a vector from the same model"
        )
    if not np.isfinite(values).all():
        raise GeofmValueError(f"the query vector in {path} has NaN or infinite values")
    return values


def build_query(table: lancedb.table.Table, info: IndexInfo, *,
                chip_ids: Sequence[str] = (), date: str | None = None,
                vector: Any = None, negative_chip_ids: Sequence[str] = (),
                centre: bool = False) -> Query:
    """Resolve chip ids / a vector (file) and negatives into a :class:`Query`.

    Args:
        table: the ``chips`` table.
        info: the index description.
        chip_ids: positive chip ids (their unit vectors are averaged).
        date: acquisition date of the positives (default: latest of each).
        vector: a raw query vector (array-like [D] or [N, D]) or the path of a
            ``.npy``/``.json`` vector file; combined with ``chip_ids`` by averaging.
        negative_chip_ids: chips to push the results away from (latest acquisition).
        centre: search centred vectors (subtract the run mean before cosine).

    Raises:
        GeofmValueError: neither chip ids nor a vector were given.
    """
    import numpy as np

    column = "vector_centred" if centre else "vector"
    if not chip_ids and vector is None:
        raise GeofmValueError("give at least one chip id (--chip-id) or a vector (--vector-file)")
    units, sources = [], []
    if chip_ids:
        rows = lookup_chips(table, chip_ids, date, column)
        units.append(_vectors(rows, column))
        sources += [{"chip_id": r["chip_id"], "scene_id": r["scene_id"], "date": str(r["date"])}
                    for r in rows.to_pylist()]
    if vector is not None:
        if isinstance(vector, (str, os.PathLike)):
            raw = read_vector_file(vector, info)
            sources.append({"vector_file": str(vector)})
        else:
            raw = np.atleast_2d(np.asarray(vector, dtype=np.float32))
            if raw.shape[-1] != info.dim:
                raise SearchIndexError(
                    f"the query vector has {raw.shape[-1]} values but the index was built "
                    f"with dim {info.dim}; use a vector from the same model"
                )
            sources.append({"vector": "array"})
        if centre:
            raw = raw - np.asarray(info.mean, dtype=np.float32)
        units.append(normalise(raw)[0])
    positive, _ = normalise(np.concatenate(units).mean(axis=0))
    negatives = np.zeros((0, info.dim), np.float32)
    query = positive
    if negative_chip_ids:
        neg_rows = lookup_chips(table, negative_chip_ids, None, column)
        negatives = _vectors(neg_rows, column)
        query, _ = normalise(positive - NEGATIVE_WEIGHT * negatives.mean(axis=0))
    exclude = list(dict.fromkeys([*chip_ids, *negative_chip_ids]))
    return Query(vector=query, column=column, positive=positive, negatives=negatives,
                 exclude=exclude, sources=sources)
