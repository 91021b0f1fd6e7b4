"""Stage ``index``: consolidate a run into GeoParquet and a LanceDB table for search.

Writes ``consolidated.parquet`` (chip metadata + both embeddings + change columns,
WGS84 GeoParquet) and the LanceDB database ``index/`` with table ``chips`` (see
:mod:`geofm.index.table` for its columns and the ANN policy) plus
``index/geofm_index.json`` (model identity, embedding kind, dim, run mean vector; past
``ann_min_rows`` rows the ANN index and the query parameters calibrated to
``target_recall``, see :mod:`geofm.index.recall`).

Re-running after new scenes were embedded adds only their rows (the table is keyed by
``scene_id/chip_id``); re-running after ``analyze`` refreshes the change columns.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from geofm.exceptions import GeofmValueError, SearchIndexError
from geofm.index.recall import DEFAULT_TARGET_RECALL, check_target_recall
from geofm.index.table import ANN_MIN_ROWS
from geofm.layout import RunRoot
from geofm.manifest import StageRecord, call_config, stage_entry

if TYPE_CHECKING:
    from geofm.generative.describe import DescribeRequest

__all__ = ["ANN_MIN_ROWS", "build_index", "add_arguments", "run_cli", "main"]

log = logging.getLogger(__name__)


def _rows(frame: Any, vectors: Any, mean: list[float], keep: Any) -> Any:
    """Arrow rows (table schema) for the frame rows where ``keep`` is True.

    Args:
        frame: consolidated GeoDataFrame (WGS84).
        vectors: float32 [N, D] raw embeddings in the frame's row order.
        mean: the run mean vector [D] used for ``vector_centred``.
        keep: bool [N] rows to convert.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from geofm.index.table import normalise, table_schema

    schema = table_schema(vectors.shape[1])
    sub = frame.loc[keep]
    vec = vectors[keep]
    unit, norms = normalise(vec)
    centred, _ = normalise(vec - np.asarray(mean, dtype=np.float32))
    bounds = sub.geometry.bounds
    dim = vectors.shape[1]

    def fixed(values: np.ndarray) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim)

    def ts(series: pd.Series) -> pa.Array:
        return pa.array(pd.to_datetime(series, utc=True), type=pa.timestamp("us", tz="UTC"))

    data = {
        "key": pa.array((sub["scene_id"] + "/" + sub["chip_id"]).tolist()),
        "chip_id": pa.array(sub["chip_id"].tolist()),
        "scene_id": pa.array(sub["scene_id"].tolist()),
        "tile": pa.array(sub["tile"].tolist() if "tile" in sub else [None] * len(sub),
                         pa.string()),
        "date": ts(sub["date"]),
        "vector": fixed(unit),
        "vector_centred": fixed(centred),
        "vector_norm": pa.array(norms),
        "geometry": pa.array(sub.geometry.to_wkb().tolist(), pa.binary()),
        "west": pa.array(bounds["minx"].to_numpy()),
        "south": pa.array(bounds["miny"].to_numpy()),
        "east": pa.array(bounds["maxx"].to_numpy()),
        "north": pa.array(bounds["maxy"].to_numpy()),
        "cloud_fraction": pa.array(sub["cloud_fraction"].to_numpy(), pa.float32()),
        "thumbnail_path": pa.array(sub["thumbnail_path"].tolist(), pa.string()),
        "change_status": pa.array(sub["change_status"].astype(object).where(
            sub["change_status"].notna(), None).tolist(), pa.string()),
        "change": pa.array(sub["change"].astype(object).where(
            sub["change"].notna(), None).tolist(), pa.bool_()),
        "change_date": ts(sub["change_date"]),
        "magnitude": pa.array(pd.to_numeric(sub["magnitude"]).to_numpy(np.float32)
                              if sub["magnitude"].notna().any() else [None] * len(sub),
                              pa.float32()),
    }
    return pa.table(data, schema=schema)


def _changed_keys(table: Any, frame: Any) -> tuple[set[str], set[str]]:
    """Keys already in ``table``, and those whose change columns differ from ``frame``."""
    import pandas as pd

    from geofm.index.table import CHANGE_COLUMNS, KEY

    existing = table.search().select([KEY, *CHANGE_COLUMNS]).limit(None).to_arrow().to_pandas()
    keys = set(existing[KEY])
    new = frame.assign(**{KEY: frame["scene_id"] + "/" + frame["chip_id"]})
    new = new[new[KEY].isin(keys)][[KEY, *CHANGE_COLUMNS]]
    if new.empty:
        return keys, set()
    both = existing.merge(new, on=KEY, suffixes=("_old", ""))
    differ = pd.Series(False, index=both.index)
    for col in CHANGE_COLUMNS:
        old, cur = both[f"{col}_old"], both[col]
        if col.endswith("date"):
            old, cur = pd.to_datetime(old, utc=True), pd.to_datetime(cur, utc=True)
        same = (old == cur) | (old.isna() & cur.isna())
        differ |= ~same
    return keys, set(both.loc[differ, KEY])


@stage_entry("index")
def build_index(root: str | os.PathLike[str] | RunRoot, *, embedding: str = "cls",
                overwrite: bool = False, ann_min_rows: int = ANN_MIN_ROWS,
                target_recall: float = DEFAULT_TARGET_RECALL,
                describe: DescribeRequest | Mapping[str, Any] | None = None) -> StageRecord:
    """Consolidate the run and build (or extend) its LanceDB search index.

    Args:
        root: run root with ``meta/`` and ``embeddings/`` (and optionally
            ``analysis/changes.parquet``).
        embedding: ``"cls"`` (class token) or ``"mean"`` (mean of patch tokens): the
            vector that is searched.
        overwrite: drop the existing index and rebuild it (new run mean vector). Without
            it, only rows whose ``scene_id/chip_id`` is new are added and the change
            columns of existing rows are refreshed.
        ann_min_rows: table size (rows) from which an ANN index (IVF_SQ) is built
            automatically; smaller tables are searched exactly.
        target_recall: recall@10 (vs exact search, in (0, 1]) the ANN query parameters
            are calibrated to: when the index is built, the index's own recall is
            measured on a held-out sample of the table's rows and the ``nprobes`` /
            ``refine_factor`` reaching it at the lowest latency are stored in
            ``geofm_index.json`` (``ann["calibration"]``), which ``geofm search`` uses.
            After rows are added the recall is measured again (new rows, up to a
            tenth of the table, are scanned exactly beside the index) and the index
            re-trained when they exceed that or the recall fell under the target
            (:func:`geofm.index.table.sync_ann_index`).
        describe: generate one description per chip (cached) and build the full-text
            index for text search (:mod:`geofm.generative.describe`); failed chips are
            recorded as failures. A mapping (``geofm run`` YAML) is read by
            :meth:`~geofm.generative.describe.DescribeRequest.of`.

    Returns:
        The stage record; counts ``rows`` (in consolidated.parquet), ``added``,
        ``updated``, ``table_rows``, ``bad_vectors``, ``failed_chips`` and
        ``unembedded_scenes`` (valid chips embed could not embed: not indexed, listed in
        ``extra["not_indexed"]``, not a failure of this stage).

    Raises:
        SearchIndexError: the existing index was built with another model (by
            :meth:`geofm.model.identity.ModelIdentity.compatible`), embedding or dimension
            and ``overwrite`` was not given.
        ModelMismatchError: the run's scenes were embedded by different models.
        GeofmFileNotFoundError: the run root has no embeddings.
        GeofmValueError: ``ann_min_rows`` < 1 or ``target_recall`` not in (0, 1].
    """
    import numpy as np

    from geofm.index.consolidate import consolidate, write_consolidated
    from geofm.index.table import (
        TABLE_NAME,
        IndexInfo,
        connect,
        info_path,
        sync_ann_index,
        table_schema,
        upsert,
    )
    from geofm.model.identity import ModelIdentity, format_differences

    root = RunRoot.of(root)
    if ann_min_rows < 1:
        raise GeofmValueError(f"ann_min_rows must be >= 1, got {ann_min_rows}")
    target_recall = check_target_recall(target_recall)
    if describe is not None:
        from geofm.generative.describe import DescribeRequest

        describe = DescribeRequest.of(describe)
    config = call_config(describe=None if describe is None else {
        "prompt": describe.prompt, "provider": describe.provider.name,
        "model": describe.provider.model, "with_images": describe.with_images,
        "max_prompt_tokens": describe.max_prompt_tokens})
    with StageRecord(root, "index", config=config) as record:
        frame, vectors, identity = consolidate(root, embedding=embedding, record=record)
        finite = np.isfinite(vectors).all(axis=1) & (np.linalg.norm(vectors, axis=1) > 0)
        for i in np.flatnonzero(~finite):
            record.fail(f"{frame['scene_id'].iat[i]}/{frame['chip_id'].iat[i]}",
                        f"{embedding} embedding is zero or not finite; re-embed this scene",
                        path=root.embeddings_path(frame["scene_id"].iat[i]))
        record.counts.update(rows=len(frame), bad_vectors=int((~finite).sum()))
        if len(frame):
            write_consolidated(root, frame)
        dim = int(vectors.shape[1]) if vectors.ndim == 2 else int(identity.dim or 0)
        db = connect(root)
        has_table = TABLE_NAME in db.list_tables().tables and info_path(root).exists()
        info = None
        if has_table and not overwrite:
            info = IndexInfo.read(root)
            diffs = {k: (a, b) for k, (a, b) in (("embedding", (info.embedding, embedding)),
                                                 ("dim", (info.dim, dim))) if a != b}
            diffs.update(ModelIdentity.from_dict(info.model).differences(identity))
            if diffs:
                raise SearchIndexError(
                    f"the index in {root.index_dir} was built from other vectors than the "
                    f"run's embeddings now hold (index vs run: {format_differences(diffs)}); "
                    "pass --overwrite (overwrite=True) to rebuild it"
                )
            table = db.open_table(TABLE_NAME)
        else:
            mean = vectors[finite].mean(axis=0) if finite.any() else np.zeros(dim, np.float32)
            info = IndexInfo(embedding=embedding, dim=dim, model=identity.to_dict(),
                             mean=[float(x) for x in mean], mean_rows=int(finite.sum()),
                             ann_min_rows=ann_min_rows)
            table = db.create_table(TABLE_NAME, schema=table_schema(dim), mode="overwrite")
        info.ann_min_rows = ann_min_rows
        added = updated = 0
        if len(frame):
            keys, changed = _changed_keys(table, frame)
            row_keys = frame["scene_id"] + "/" + frame["chip_id"]
            keep = finite & ~row_keys.isin(keys - changed).to_numpy()
            if keep.any():
                added, updated = upsert(table, _rows(frame, vectors, info.mean, keep))
        action = sync_ann_index(table, info, target_recall=target_recall)
        if action is not None:
            _log_ann(action, info)
        info.rows = table.count_rows()
        info.write(root)
        record.counts.update(added=added, updated=updated, table_rows=info.rows)
        record.extra["model"] = identity.to_dict()
        record.extra["index"] = {"embedding": embedding, "dim": dim, "ann": info.ann}
        log.info("index: %d rows added, %d updated, %d in the table", added, updated, info.rows)
        if describe is not None and info.rows:
            from geofm.generative.describe import describe_chips

            record.counts.update(describe_chips(root, describe, record=record))
    return record


def _log_ann(action: str, info: Any) -> None:
    """One log line per ANN maintenance step and per calibrated column."""
    ann = info.ann
    done = ann["maintenance"]
    log.info("ANN index %s (%s; %s partitions, %.0f s): %s", ann["index_type"], action,
             ann["num_partitions"], done.get("seconds", 0.0), done["reason"])
    for column, cal in ann.get("calibration", {}).items():
        log.info("ANN %s: nprobes %d, refine %d -> recall@%d %.3f (target %.2f%s), "
                 "p50 %.1f ms on %d held-out rows", column, cal["nprobes"],
                 cal["refine_factor"], cal["k"], cal.get("recall_now", cal["recall"]),
                 cal["target"], "" if cal["met"] else ", NOT met", cal["p50_ms"],
                 cal["queries"])


def _target_recall_arg(text: str) -> float:
    """The argparse type of ``--target-recall`` (the rule is :func:`check_target_recall`)."""
    from geofm.cliargs import library_value

    return library_value(check_target_recall, text)


def cli_options() -> dict[str, Any]:
    """``geofm index``'s options: :func:`build_index`'s signature plus what it cannot say.

    ``describe`` is made from ``--describe`` and the provider flags
    (:func:`geofm.generative.describe.add_arguments`).

    Returns:
        ``{name: geofm.options.Option}``.
    """
    from geofm.options import Cli, declare

    return declare(build_index, {
        "root": Cli(required=True),
        "embedding": Cli(choices=("cls", "mean")),
        "describe": Cli(cli=False),
        "target_recall": Cli(type=_target_recall_arg),
    })


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``geofm index`` options to ``parser`` (from :func:`cli_options`)."""
    from geofm.generative.describe import add_arguments as add_describe_arguments
    from geofm.options import add_arguments as add_options

    add_options(parser, cli_options().values())
    add_describe_arguments(parser)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``geofm index`` from parsed arguments; return the exit code."""
    from geofm.generative.cli import usage_error
    from geofm.generative.describe import request_from_args
    from geofm.options import library_kwargs

    try:
        describe = request_from_args(args)
    except GeofmValueError as exc:
        return usage_error(exc)
    record = build_index(**library_kwargs(args, cli_options().values()), describe=describe)
    return 1 if record.failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m geofm.steps.index`` entry point."""
    from geofm.cli import stage_main

    return stage_main("index", argv)
