"""Per-scene embedding outputs: ``embeddings/<scene_id>.parquet`` and the optional patch grid.

Parquet columns (docs/contracts.md, "embed"): ``chip_id`` str, ``scene_id`` str,
``date`` timestamp[ns, UTC], ``embedding`` fixed_size_list<float32>[D] (CLS token),
``embedding_mean`` fixed_size_list<float32>[D] (mean of the patch tokens). The schema
metadata key ``geofm`` holds JSON: the model identity (``checkpoint``, ``sha256``,
``preset``, ``random_init``, ``dim``), ``bands`` and ``failed_chips`` (ids of the scene's
valid chips that could not be embedded; the scene is retried by the next run when not
empty).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geofm.exceptions import GeofmValueError
from geofm.io import atomic_path

METADATA_KEY = b"geofm"


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
        metadata: JSON-able dict stored under schema metadata key ``geofm``.
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
        pq.write_table(table, tmp)
    return Path(path)


def read_scene_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``geofm`` schema metadata of an embeddings Parquet (``None`` if absent/unreadable)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError):
        return None
    raw = meta.get(METADATA_KEY)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
