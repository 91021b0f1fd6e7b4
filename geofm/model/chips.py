"""Chips of a run root as encoder input: the pending valid chips, the nodata rule, batches.

Shared by every stage that feeds chips to the encoder (``embed``, ``pretrain``; and the
nodata rule, :func:`fill_invalid`, by ``finetune`` / ``predict`` through
:class:`geofm.model.embedder.Embedder`), so all read and fill chips one way.

The plan is read from ``meta/<scene_id>.parquet`` (chip stage contract): a row per chip
of a scene; only rows with ``valid`` are embedded, in the meta order. Pixels are read
in DataLoader worker processes with :func:`geofm.chipfile.read_chip_array` (DN values).

Invalid pixels rule (nodata or NaN inside a chip; a pixel is invalid when any of its
bands is nodata or not finite): if the invalid fraction of pixels is at most
``max_invalid`` (default 0.05, the same as the chip stage's default ``max_cloud``), the
invalid pixels are filled, in every band, with the band's Clay normalisation mean (so
they are exactly 0 after normalisation, "no information"); above it the chip is
rejected and reported as a failure. ``max_invalid=None`` fills any fraction (what
fine-tuning and prediction do: their label/class maps mask those pixels instead). A chip
is never embedded with NaN pixels.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geofm.exceptions import GeofmValueError, RasterError
from geofm.layout import RunRoot

#: Default largest fraction of nodata/NaN pixels a chip may hold and still be embedded.
DEFAULT_MAX_INVALID = 0.05

_META_COLUMNS = ("chip_id", "scene_id", "sensor", "date", "valid", "chip_path", "bands",
                 "geometry")


@dataclass(frozen=True)
class ChipTask:
    """One valid chip to embed.

    Attributes:
        scene_id: STAC item id of its acquisition.
        chip_id: grid id of its footprint.
        position: index of the chip among the scene's valid chips (meta order).
        path: absolute path of its NetCDF file.
        sensor: sensor name (``geofm.sensors``).
        bands: band names (asset keys), in the order fed to the encoder.
        date: acquisition time, ``numpy.datetime64`` (UTC, ns).
        lat: latitude of the WGS84 footprint centroid, degrees.
        lon: longitude of the WGS84 footprint centroid, degrees.
    """

    scene_id: str
    chip_id: str
    position: int
    path: str
    sensor: str
    bands: tuple[str, ...]
    date: np.datetime64
    lat: float
    lon: float

    @property
    def group(self) -> tuple[str, tuple[str, ...]]:
        """Chips that can share a batch: same sensor and bands."""
        return (self.sensor, self.bands)


@dataclass
class ScenePlan:
    """The valid chips of one scene, in meta order.

    Attributes:
        scene_id: STAC item id.
        chip_ids: ids of the valid chips [N], meta order.
        dates: acquisition times [N] (UTC ``datetime64[ns]``).
        tasks: one :class:`ChipTask` per valid chip.
        bands: band names of the scene's chips.
    """

    scene_id: str
    chip_ids: list[str]
    dates: np.ndarray
    tasks: list[ChipTask]
    bands: tuple[str, ...]


def read_scene_plan(root: RunRoot, scene_id: str) -> ScenePlan:
    """Read ``meta/<scene_id>.parquet`` and return its valid chips in meta order.

    Args:
        root: run root.
        scene_id: scene to read.

    Returns:
        The scene's plan; ``tasks`` is empty when no chip is valid.

    Raises:
        GeofmValueError: the meta file lacks a contract column.
    """
    from geofm.model.inputs import footprint_centres
    from geofm.tables import read_table

    path = root.meta_path(scene_id)
    table = read_table(path, made_by="chip")
    missing = [c for c in _META_COLUMNS if c not in table.column_names]
    if missing:
        raise GeofmValueError(f"chip metadata {path} lacks column(s) {', '.join(missing)}; "
                              "re-run `geofm chip --overwrite` to rewrite it")
    df = table.select(list(_META_COLUMNS)).to_pandas()
    df = df[df["valid"].eq(True)].reset_index(drop=True)
    import pandas as pd

    dates = pd.to_datetime(df["date"], utc=True)
    lats, lons = footprint_centres(df["geometry"].to_numpy())
    tasks = []
    for i, row in enumerate(df.itertuples(index=False)):
        bands = tuple(b.strip() for b in str(row.bands).split(",") if b.strip())
        tasks.append(ChipTask(
            scene_id=str(row.scene_id), chip_id=str(row.chip_id), position=i,
            path=os.fspath(root.path / str(row.chip_path)), sensor=str(row.sensor),
            bands=bands,
            date=np.datetime64(dates.iloc[i].tz_convert("UTC").tz_localize(None), "ns"),
            lat=float(lats[i]), lon=float(lons[i]),
        ))
    scene_bands = tasks[0].bands if tasks else ()
    return ScenePlan(scene_id=scene_id, chip_ids=[t.chip_id for t in tasks],
                     dates=dates.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
                     .astype("datetime64[ns]"),
                     tasks=tasks, bands=scene_bands)


def fill_invalid(pixels: np.ndarray, valid: np.ndarray, *, sensor: str,
                 bands: Sequence[str], max_invalid: float | None = DEFAULT_MAX_INVALID,
                 path: str | os.PathLike[str] = "<chip>") -> tuple[np.ndarray, float]:
    """Apply the invalid-pixel rule (module docstring) to one chip.

    Args:
        pixels: DN float32 [C, H, W].
        valid: bool [H, W], False where any band is nodata (from
            :func:`geofm.chipfile.read_chip_array`); non-finite pixels count as invalid too.
        sensor: the chip's sensor name (``geofm.sensors``).
        bands: its C band names; their Clay normalisation means (DN) are the fill value.
        max_invalid: largest allowed fraction of invalid pixels (0..1); ``None``: any.
        path: the chip file, for the message.

    Returns:
        ``(pixels, invalid_fraction)``: float32 [C, H, W], every value finite; invalid
        pixels replaced by the band's mean (``pixels`` itself when none is invalid).

    Raises:
        RasterError: more than ``max_invalid`` of the pixels are invalid.
    """
    valid = valid & np.isfinite(pixels).all(axis=0)
    invalid = 1.0 - float(valid.mean()) if valid.size else 1.0
    if max_invalid is not None and invalid > max_invalid:
        raise RasterError(
            f"chip {path}: {invalid:.1%} of its pixels are nodata or NaN, more than "
            f"max_invalid={max_invalid:.1%}; raise --max-invalid to embed it with those "
            "pixels filled by the band mean, or re-chip with a stricter --max-nodata")
    if invalid > 0:
        from geofm.sensors import get_sensor

        mean, _ = get_sensor(sensor).normalisation(list(bands))
        pixels = np.where(valid[None], pixels, mean[:, None, None]).astype(np.float32)
    return pixels, invalid


def load_chip(task: ChipTask, *, max_invalid: float | None = DEFAULT_MAX_INVALID
              ) -> tuple[np.ndarray, float]:
    """Read one chip as DN and apply the invalid-pixel rule (:func:`fill_invalid`).

    Args:
        task: the chip.
        max_invalid: largest allowed fraction of nodata/NaN pixels (0..1); ``None``: any.

    Returns:
        ``(pixels, invalid_fraction)``: pixels float32 [C, H, W] in DN, every value
        finite; invalid pixels replaced by the band's normalisation mean.

    Raises:
        RasterError: unreadable chip, or too many invalid pixels.
    """
    from geofm.chipfile import read_chip_array

    pixels, valid = read_chip_array(task.path, task.bands)
    return fill_invalid(pixels, valid, sensor=task.sensor, bands=task.bands,
                        max_invalid=max_invalid, path=task.path)


def task_inputs(tasks: Sequence[ChipTask]) -> dict[str, Any]:
    """The chip metadata :func:`geofm.model.make_datacube` takes, for a batch of tasks.

    Args:
        tasks: B tasks of one group (same sensor and bands, see :func:`batch_indices`).

    Returns:
        ``sensor``, ``bands``, ``dates`` (B UTC datetime64), ``lats`` and ``lons``
        (B degrees, footprint centroids).
    """
    first = tasks[0]
    return {"sensor": first.sensor, "bands": first.bands, "dates": [t.date for t in tasks],
            "lats": [t.lat for t in tasks], "lons": [t.lon for t in tasks]}


def default_workers() -> int:
    """The default number of :class:`ChipDataset` reader processes: min(4, cpus - 1)."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


class ChipDataset:
    """Map-style torch Dataset over :class:`ChipTask` s; never raises for a bad chip.

    Item ``i`` is a dict: ``index`` (int, into ``tasks``), ``pixels`` (float32 [C, H, W]
    DN, or ``None`` when the chip failed), ``invalid`` (fraction filled) and ``error``
    (the reason, or ``None``).
    """

    def __init__(self, tasks: Sequence[ChipTask], *,
                 max_invalid: float | None = DEFAULT_MAX_INVALID) -> None:
        if max_invalid is not None and not 0.0 <= max_invalid <= 1.0:
            raise GeofmValueError(f"max_invalid must be in [0, 1], got {max_invalid}")
        self.tasks = list(tasks)
        self.max_invalid = max_invalid

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        task = self.tasks[index]
        try:
            pixels, invalid = load_chip(task, max_invalid=self.max_invalid)
        except RasterError as exc:
            return {"index": index, "pixels": None, "invalid": 1.0, "error": str(exc)}
        return {"index": index, "pixels": pixels, "invalid": invalid, "error": None}


def batch_indices(tasks: Sequence[ChipTask], batch_size: int) -> list[list[int]]:
    """Split task indices into batches of at most ``batch_size`` of one group each.

    Batches cross scenes (and chip locations): consecutive tasks of one group (sensor,
    bands) fill a batch whatever scene they come from. A batch never mixes groups, since
    they differ in band count or normalisation.

    Args:
        tasks: tasks in processing order.
        batch_size: largest batch.

    Returns:
        Lists of indices into ``tasks``, in processing order.
    """
    if batch_size < 1:
        raise GeofmValueError(f"batch_size must be >= 1, got {batch_size}")
    batches: list[list[int]] = []
    current: list[int] = []
    for i, task in enumerate(tasks):
        if current and (len(current) == batch_size or tasks[current[0]].group != task.group):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the readable samples of a batch; keep the failed ones aside.

    Returns:
        Dict with ``indices`` (list[int], readable samples), ``pixels`` (torch float32
        [B, C, H, W] DN, or ``None`` if none was readable), ``invalid`` (list[float]) and
        ``failed`` (list of ``(index, reason)``).
    """
    import torch

    good = [s for s in samples if s["error"] is None]
    failed = [(s["index"], s["error"]) for s in samples if s["error"] is not None]
    shapes = {s["pixels"].shape for s in good}
    if len(shapes) > 1:  # chips of one group with different sizes: report, do not crash
        keep = good[0]["pixels"].shape
        failed += [(s["index"], f"chip shape {s['pixels'].shape} differs from {keep} of the "
                                "other chips of its batch; re-chip with one --chip-size")
                   for s in good if s["pixels"].shape != keep]
        good = [s for s in good if s["pixels"].shape == keep]
    pixels = torch.from_numpy(np.stack([s["pixels"] for s in good])) if good else None
    return {"indices": [s["index"] for s in good], "pixels": pixels,
            "invalid": [s["invalid"] for s in good], "failed": failed}


def iter_tasks(plans: Sequence[ScenePlan]) -> Iterator[ChipTask]:
    """All tasks of ``plans``, grouped by (sensor, bands), scenes in order within a group."""
    groups: dict[tuple[str, tuple[str, ...]], list[ChipTask]] = {}
    for plan in plans:
        for task in plan.tasks:
            groups.setdefault(task.group, []).append(task)
    for group in groups.values():
        yield from group
