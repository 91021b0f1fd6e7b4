"""Join chip metadata, embeddings and change-detection columns into one frame.

Reads ``meta/<scene_id>.parquet`` (chip stage), ``embeddings/<scene_id>.parquet``
(embed stage) and, when present, ``analysis/changes.parquet`` (analyze stage), and
returns one row per embedded chip and acquisition. Written as ``consolidated.parquet``
(GeoParquet, WGS84 footprints).
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError
from geofm.io import write_bytes_atomic
from geofm.layout import RunRoot
from geofm.manifest import StageRecord

if TYPE_CHECKING:
    import geopandas as gpd
    import numpy as np

    from geofm.embed.writer import SceneInfo
    from geofm.model.identity import ModelIdentity

log = logging.getLogger(__name__)

#: embedding kind -> column of ``embeddings/<scene_id>.parquet``.
EMBEDDING_COLUMNS = {"cls": "embedding", "mean": "embedding_mean"}
#: columns of ``analysis/changes.parquet`` joined per chip, renamed for the index.
CHANGE_RENAMES = {"status": "change_status", "change": "change", "change_date": "change_date",
                  "magnitude": "magnitude"}


def check_same_model(root: RunRoot, scene_ids: list[str]) -> tuple[ModelIdentity,
                                                                  dict[str, SceneInfo]]:
    """The model identity shared by every scene's embeddings (by the one rule).

    Returns:
        The shared identity and every scene's parsed metadata (run facts included).

    Raises:
        ModelMismatchError: two scenes were embedded with models that differ; the
            message names both files and the differing fields.
        GeofmValueError: a file has no ``geofm`` metadata.
    """
    from geofm.embed.writer import check_one_model

    identity, infos = check_one_model([root.embeddings_path(s) for s in scene_ids],
                                      purpose="share an index")
    return identity, dict(zip(scene_ids, infos, strict=True))


def read_scene(root: RunRoot, scene_id: str, embedding: str) -> tuple[gpd.GeoDataFrame,
                                                                      np.ndarray]:
    """Embedded chips of one scene with their metadata.

    Returns:
        ``(frame, vectors)``: the meta rows of the embedded chips (in the embeddings
        file's order) with ``embedding`` and ``embedding_mean`` columns, and the indexed
        embedding as float32 [N, D].

    Raises:
        GeofmFileNotFoundError: the scene has embeddings but no ``meta`` file.
        GeofmValueError: an embedded chip has no row in the scene's ``meta`` file.
    """
    import geopandas as gpd
    import numpy as np

    from geofm.tables import read_geoframe, read_table

    meta_path = root.meta_path(scene_id)
    if not meta_path.exists():
        raise GeofmFileNotFoundError(
            f"{root.embeddings_path(scene_id)} has no chip metadata {meta_path}; "
            "re-run `geofm chip` for this scene"
        )
    meta = read_geoframe(meta_path, made_by="chip").to_crs(4326)
    emb = read_table(root.embeddings_path(scene_id), made_by="embed")
    chip_ids = emb.column("chip_id").to_pylist()
    by_id = meta.set_index("chip_id", drop=False)
    missing = [c for c in chip_ids if c not in by_id.index]
    if missing:
        raise GeofmValueError(
            f"{root.embeddings_path(scene_id)} has chips missing from {meta_path}: "
            f"{missing[:5]}; the embeddings are stale: re-run `geofm embed --overwrite`"
        )
    frame = gpd.GeoDataFrame(by_id.loc[chip_ids].reset_index(drop=True), crs=meta.crs)
    columns = {}
    for name in EMBEDDING_COLUMNS.values():
        col = emb.column(name).combine_chunks()
        columns[name] = np.asarray(col.values, dtype=np.float32).reshape(len(col), -1)
    for name, values in columns.items():
        frame[name] = list(values)
    return frame, columns[EMBEDDING_COLUMNS[embedding]]


def read_changes(root: RunRoot) -> Any:
    """Per-chip change columns from ``analysis/changes.parquet`` (None when absent)."""
    from geofm.tables import read_table

    path = root.analysis_dir / "changes.parquet"
    if not path.exists():
        return None
    changes = read_table(path, made_by="analyze").to_pandas()
    keep = [c for c in CHANGE_RENAMES if c in changes.columns]
    return changes[["chip_id", *keep]].rename(columns=CHANGE_RENAMES)


def consolidate(root: RunRoot, *, embedding: str, record: StageRecord
                ) -> tuple[gpd.GeoDataFrame, np.ndarray, ModelIdentity]:
    """Every embedded chip and acquisition of the run, with metadata and changes.

    Scenes whose files cannot be joined are recorded as failures (``record.fail``)
    and left out; the others go on. Valid chips that embed could not embed (listed in
    the scenes' ``run.failed_chips``, or scenes without an embeddings file) are not
    indexed; they are counted (``failed_chips``, ``unembedded_scenes``), listed in
    ``record.extra["not_indexed"]`` and logged, without failing the stage: embed has
    reported them already.

    Args:
        root: run root.
        embedding: ``"cls"`` or ``"mean"``: which embedding becomes the search vector.
        record: the index stage's record (failures, counts).

    Returns:
        ``(frame, vectors, identity)``: a WGS84 GeoDataFrame (meta columns, both
        embeddings, change columns ``change_status change change_date magnitude``,
        null when analyze has not run), the indexed embedding float32 [N, D] in the
        frame's row order, and the shared model identity.

    Raises:
        GeofmFileNotFoundError: no embeddings in the run root.
        ModelMismatchError: scenes embedded by different models.
    """
    import geopandas as gpd
    import numpy as np
    import pandas as pd

    if embedding not in EMBEDDING_COLUMNS:
        raise GeofmValueError(
            f"embedding {embedding!r} is not one of {sorted(EMBEDDING_COLUMNS)}"
        )
    scene_ids = root.scene_ids(root.embeddings_dir)
    if not scene_ids:
        raise GeofmFileNotFoundError(
            f"no embeddings in {root.embeddings_dir}; run `geofm embed --root {root.path}` "
            "before `geofm index`"
        )
    from geofm.embed.writer import record_embedding_gaps

    identity, infos = check_same_model(root, scene_ids)
    record_embedding_gaps(root, infos, record, left_out_key="not_indexed")
    frames, vectors = [], []
    for scene_id in scene_ids:
        try:
            frame, vec = read_scene(root, scene_id, embedding)
        except (GeofmFileNotFoundError, GeofmValueError) as exc:
            record.fail(scene_id, str(exc), path=root.embeddings_path(scene_id))
            continue
        frames.append(frame)
        vectors.append(vec)
    if not frames:
        return gpd.GeoDataFrame(), np.zeros((0, int(identity.dim or 0)), np.float32), identity
    frame = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=4326)
    frame["date"] = pd.to_datetime(frame["date"], utc=True)
    changes = read_changes(root)
    if changes is not None:
        frame = frame.merge(changes, on="chip_id", how="left")
    for name in CHANGE_RENAMES.values():
        if name not in frame.columns:
            frame[name] = None
    frame = gpd.GeoDataFrame(frame, geometry="geometry", crs=4326)
    return frame, np.concatenate(vectors), identity


def write_consolidated(root: RunRoot, frame: gpd.GeoDataFrame) -> None:
    """Write ``consolidated.parquet`` (GeoParquet, WGS84) atomically.

    Unchanged content leaves the file untouched, so a re-run changes no file.
    """
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes_atomic(root.consolidated_path, buffer.getvalue())
