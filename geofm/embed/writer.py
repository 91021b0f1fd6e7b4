"""Per-scene embedding outputs: ``embeddings/<scene_id>.parquet`` and the optional patch grid.

Parquet columns (docs/contracts.md, "embed"): ``chip_id`` str, ``scene_id`` str,
``date`` timestamp[ns, UTC], ``embedding`` fixed_size_list<float32>[D] (CLS token),
``embedding_mean`` fixed_size_list<float32>[D] (mean of the patch tokens). The schema
metadata key ``geofm`` holds JSON (:func:`scene_metadata`)::

    {"model": {...ModelIdentity.to_dict(), bands included...},
     "run": {"failed_chips": [...], "chips": N, "filled_chips": K}}

``model`` decides whether two files hold the same kind of vectors
(:meth:`geofm.model.identity.ModelIdentity.compatible`); ``run`` holds facts of the run
that made the file (``failed_chips``: ids of the scene's valid chips that could not be
embedded; the scene is retried by the next embed run when not empty) and is never
compared. Files of the older flat layout (identity fields, ``bands`` and
``failed_chips`` side by side) are still read (:func:`parse_scene_metadata`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geofm.exceptions import GeofmValueError, ModelMismatchError
from geofm.io import atomic_path
from geofm.model.identity import ModelIdentity, format_differences

if TYPE_CHECKING:
    from geofm.layout import RunRoot
    from geofm.manifest import StageRecord

METADATA_KEY = b"geofm"

#: Rows per Parquet row group of an embeddings file: 16,384 x 768 float32 = 48 MiB per
#: embedding column chunk, so analyze streams a file one chunk at a time (any reader
#: reads any row-group size; older files have one row group).
ROW_GROUP_ROWS = 16_384

log = logging.getLogger(__name__)


def embedding_schema(dim: int, metadata: Mapping[str, Any] | None = None):  # type: ignore[no-untyped-def]
    """The Arrow schema of an embeddings Parquet with vectors of length ``dim``."""
    import pyarrow as pa

    vec = pa.list_(pa.float32(), dim)
    schema = pa.schema([("chip_id", pa.string()), ("scene_id", pa.string()),
                        ("date", pa.timestamp("ns", tz="UTC")),
                        ("embedding", vec), ("embedding_mean", vec)])
    if metadata is not None:
        schema = schema.with_metadata({METADATA_KEY: json.dumps(dict(metadata), sort_keys=True,
                                                                default=str).encode()})
    return schema


def write_scene(path: str | os.PathLike[str], *, scene_id: str, chip_ids: Sequence[str],
                dates: np.ndarray, embedding: np.ndarray, embedding_mean: np.ndarray,
                metadata: Mapping[str, Any], patches: np.ndarray | None = None,
                patches_path: str | os.PathLike[str] | None = None) -> Path:
    """Write one scene's embeddings atomically (patch grid first, then the Parquet).

    The Parquet is written last, so its presence means the scene is complete.

    Args:
        path: destination ``embeddings/<scene_id>.parquet``.
        scene_id: STAC item id.
        chip_ids: chip ids [N], meta order.
        dates: acquisition times [N], ``datetime64`` UTC.
        embedding: CLS vectors float32 [N, D].
        embedding_mean: mean patch-token vectors float32 [N, D].
        metadata: JSON-able dict stored under schema metadata key ``geofm`` (build it
            with :func:`scene_metadata`).
        patches: optional patch tokens [N, L, D] (written as float16).
        patches_path: destination of ``patches`` (``embeddings/<scene_id>_patches.npy``).

    Returns:
        The Parquet path.

    Raises:
        GeofmValueError: shapes disagree or a vector is not finite.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(chip_ids)
    embedding = np.asarray(embedding, dtype=np.float32)
    embedding_mean = np.asarray(embedding_mean, dtype=np.float32)
    if embedding.ndim != 2 or embedding.shape != embedding_mean.shape or embedding.shape[0] != n:
        raise GeofmValueError(f"scene {scene_id}: embedding {embedding.shape} / embedding_mean "
                              f"{embedding_mean.shape} do not match {n} chip ids")
    if not (np.isfinite(embedding).all() and np.isfinite(embedding_mean).all()):
        raise GeofmValueError(f"scene {scene_id}: refusing to write non-finite embeddings")
    dim = embedding.shape[1]
    if patches is not None:
        if patches_path is None or patches.shape[0] != n or patches.shape[2] != dim:
            raise GeofmValueError(f"scene {scene_id}: patches {patches.shape} do not match "
                                  f"[{n}, L, {dim}] or no patches_path given")
        with atomic_path(patches_path) as tmp:
            np.save(tmp, np.asarray(patches, dtype=np.float16))
    schema = embedding_schema(dim, metadata)
    stamps = pa.array(np.asarray(dates, dtype="datetime64[ns]"), pa.timestamp("ns")).cast(
        pa.timestamp("ns", tz="UTC"))
    table = pa.table({
        "chip_id": pa.array(list(chip_ids), pa.string()),
        "scene_id": pa.array([scene_id] * n, pa.string()),
        "date": stamps,
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embedding.reshape(-1)), dim),
        "embedding_mean": pa.FixedSizeListArray.from_arrays(
            pa.array(embedding_mean.reshape(-1)), dim),
    }, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
    return Path(path)


def read_scene_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``geofm`` schema metadata of an embeddings Parquet (``None`` if it has none).

    Raises:
        TableError: the file is truncated or not Parquet (names the file and the fix).
    """
    from geofm.tables import read_schema

    meta = read_schema(path, made_by="embed").metadata or {}
    raw = meta.get(METADATA_KEY)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class SceneInfo:
    """The ``geofm`` metadata of one embeddings file, parsed.

    Attributes:
        model: the identity of the vectors (bands included).
        run: facts of the run that wrote the file (``failed_chips``, ``chips``,
            ``filled_chips``); never part of a model comparison.
    """

    model: ModelIdentity
    run: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_chips(self) -> list[str]:
        """Ids of the scene's valid chips that embed could not embed."""
        return [str(c) for c in self.run.get("failed_chips") or []]


def scene_metadata(model: ModelIdentity, *, failed_chips: Sequence[str] = (), chips: int = 0,
                   filled_chips: int = 0) -> dict[str, Any]:
    """The ``geofm`` metadata of an embeddings file: ``{"model": ..., "run": ...}``.

    Args:
        model: identity of the vectors, with the scene's ``bands`` and ``time_location``.
        failed_chips: ids of the scene's valid chips that could not be embedded.
        chips: rows written.
        filled_chips: rows whose nodata pixels were filled with the band mean.
    """
    return {"model": model.to_dict(),
            "run": {"failed_chips": list(failed_chips), "chips": int(chips),
                    "filled_chips": int(filled_chips)}}


def parse_scene_metadata(meta: Mapping[str, Any]) -> SceneInfo:
    """Parse ``geofm`` metadata of either layout (``model``/``run``, or the older flat one).

    Raises:
        GeofmValueError: the identity part is malformed.
    """
    if isinstance(meta.get("model"), Mapping):
        run = meta.get("run")
        return SceneInfo(ModelIdentity.from_dict(meta["model"]),
                         dict(run) if isinstance(run, Mapping) else {})
    # flat layout: identity fields, "bands" and "failed_chips" side by side
    return SceneInfo(ModelIdentity.from_dict(meta),
                     {"failed_chips": list(meta.get("failed_chips") or [])})


def read_scene_info(path: str | os.PathLike[str]) -> SceneInfo | None:
    """:class:`SceneInfo` of an embeddings Parquet (``None``: metadata absent or malformed).

    Raises:
        TableError: the file is truncated or not Parquet.
    """
    meta = read_scene_metadata(path)
    if meta is None:
        return None
    try:
        return parse_scene_metadata(meta)
    except GeofmValueError:
        return None


def check_one_model(paths: Sequence[str | os.PathLike[str]], *, purpose: str,
                    require_metadata: bool = True) -> tuple[ModelIdentity, list[SceneInfo]]:
    """The model shared by every embeddings file, by the one rule; raise if two differ.

    Args:
        paths: ``embeddings/<scene_id>.parquet`` files (at least one).
        purpose: what the vectors are for, for the message (``"share an index"``).
        require_metadata: a file without ``geofm`` metadata is an error; otherwise its
            model is unknown (every field ``None``), which matches only other unknowns.

    Returns:
        The first file's identity and every file's :class:`SceneInfo`, in order.

    Raises:
        ModelMismatchError: two files were made by models that differ (the message names
            both files, the differing fields and the fix).
        GeofmValueError: a file has no (readable) ``geofm`` metadata and
            ``require_metadata`` is set.
    """
    infos: list[SceneInfo] = []
    seen: list[tuple[ModelIdentity, Path]] = []  # one file per distinct identity
    for raw in paths:
        path = Path(raw)
        info = read_scene_info(path)
        if info is None:
            if require_metadata:
                raise GeofmValueError(
                    f"{path} has no readable 'geofm' schema metadata (model identity); it "
                    "was not written by `geofm embed`: re-embed with `geofm embed "
                    "--overwrite`")
            info = SceneInfo(ModelIdentity())
        infos.append(info)
        if any(info.model == known for known, _ in seen):
            continue
        for known, known_path in seen:
            diffs = known.differences(info.model)
            if diffs:
                root = path.parent.parent
                raise ModelMismatchError(
                    f"{known_path} and {path} hold vectors of different models "
                    f"({format_differences(diffs)}); vectors of different models cannot "
                    f"{purpose}: re-run `geofm embed --root {root} --overwrite` with one "
                    "model (same --checkpoint or --model, --seed, --time-location and "
                    "chip bands) so that every scene is embedded the same way",
                    paths=(str(known_path), str(path)), fields=tuple(diffs))
        seen.append((info.model, path))
    if not infos:
        raise GeofmValueError("check_one_model needs at least one embeddings file")
    return infos[0].model, infos


def embedding_gaps(root: RunRoot, infos: Mapping[str, SceneInfo]) -> dict[str, list[str]]:
    """Valid chips of the run that have no embedding: what downstream stages leave out.

    Args:
        root: the run root.
        infos: :class:`SceneInfo` per embedded scene id.

    Returns:
        ``failed_chips``: ``scene_id/chip_id`` of chips listed as failed in the scenes'
        metadata; ``scenes``: scene ids in ``meta/`` with valid chips but no embeddings
        file (every chip failed, or embed has not run on them).
    """
    import pyarrow.parquet as pq

    failed = [f"{scene}/{chip}" for scene, info in infos.items() for chip in info.failed_chips]
    missing = []
    if root.meta_dir.is_dir():
        for scene in root.scene_ids(root.meta_dir):
            if scene in infos or root.embeddings_path(scene).exists():
                continue
            try:
                valid = pq.read_table(root.meta_path(scene), columns=["valid"]).column("valid")
            except (OSError, KeyError, ValueError):
                continue
            if any(v is True for v in valid.to_pylist()):
                missing.append(scene)
    return {"failed_chips": failed, "scenes": missing}


def record_embedding_gaps(root: RunRoot, infos: Mapping[str, SceneInfo],
                          record: StageRecord, *, left_out_key: str) -> dict[str, list[str]]:
    """Count, list and log the valid chips a downstream stage leaves out for lack of vectors.

    Args:
        root: the run root.
        infos: :class:`SceneInfo` per embedded scene id.
        record: the downstream stage's record: counts ``failed_chips`` and
            ``unembedded_scenes``; the lists go to ``record.extra[left_out_key]``.
        left_out_key: e.g. ``"not_analysed"``, ``"not_indexed"``.

    Returns:
        The gaps, as :func:`embedding_gaps` gives them.
    """
    gaps = embedding_gaps(root, infos)
    record.counts.update(failed_chips=len(gaps["failed_chips"]),
                         unembedded_scenes=len(gaps["scenes"]))
    if gaps["failed_chips"] or gaps["scenes"]:
        record.extra[left_out_key] = gaps
        log.warning("%s: %d chip(s) that embed could not embed and %d scene(s) without "
                    "embeddings are left out (listed in %s); re-run `geofm embed --root %s` "
                    "to retry them", record.stage, len(gaps["failed_chips"]),
                    len(gaps["scenes"]), root.manifest_path, root.path)
    return gaps
