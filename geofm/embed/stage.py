"""The ``embed`` stage: valid chips of a run root -> per-scene Clay embeddings.

Work plan: every scene in ``meta/`` whose ``embeddings/<scene_id>.parquet`` is missing
(or incomplete, or ``overwrite``) is pending. All pending chips go through ONE global
DataLoader (worker processes read the NetCDF chips), batched across chips and scenes;
only chips with different sensors/bands are kept apart. Results are accumulated per
scene and a scene is written as soon as its last chip is embedded.

The encoder runs through :class:`geofm.model.embedder.Embedder` (loading, datacube,
time/location rule, precision; a batch that runs out of CUDA memory is retried in halves).

Failures: an unreadable chip, a chip with too many invalid pixels (see
:mod:`geofm.model.chips`) or a chip whose vectors are not finite is recorded with
``record.fail`` and left out; the scene's other chips are written, with the failed ids in
the Parquet's ``geofm`` metadata (``run.failed_chips``, see :mod:`geofm.embed.writer`), and
such a scene is recomputed by the next run. No NaN vector is ever written.

Resume: an existing scene file is reused only when its model identity is compatible
(:meth:`geofm.model.identity.ModelIdentity.compatible`) with this run's, with the scene's
bands; otherwise the stage stops before any work and asks for ``--overwrite``.

``patches``: ``"none"`` (default) and ``"mean"`` write the Parquet only (the mean of
the patch tokens is always its ``embedding_mean`` column); ``"full"`` also writes the
patch-token grid ``embeddings/<scene_id>_patches.npy``, float16 [N, L, D] (L = (H/8)^2
patches in row-major order; rows in the Parquet's order). With ``full`` one scene's
patches are held in memory until the scene is written.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geofm.embed.writer import read_scene_info, scene_metadata, write_scene
from geofm.exceptions import (
    GeofmError,
    GeofmFileExistsError,
    GeofmValueError,
    SensorError,
    TableError,
)
from geofm.layout import RunRoot
from geofm.log import progress as progress_bar
from geofm.manifest import StageRecord, call_config, stage_entry
from geofm.model.chips import (
    DEFAULT_MAX_INVALID,
    ChipDataset,
    ChipTask,
    ScenePlan,
    batch_indices,
    collate,
    iter_tasks,
    read_scene_plan,
    task_inputs,
)
from geofm.model.embedder import (
    Embedder,
    encoder_cli_options,
    load_run_encoder,
)
from geofm.model.identity import ModelIdentity, format_differences
from geofm.sensors import get_sensor

log = logging.getLogger(__name__)

PATCHES = ("none", "mean", "full")


def load_model(*, checkpoint: str | os.PathLike[str] | None, model: str | None, device: str,
               seed: int = 0) -> tuple[Any, ModelIdentity]:
    """Load the encoder (eval mode) and return ``(encoder, identity)`` (a ModelIdentity).

    The rule of :func:`geofm.model.embedder.load_run_encoder`: without ``checkpoint`` the
    weights are random (seeded with ``seed``): the loader emits a
    :class:`~geofm.exceptions.GeofmWarning`, the stage logs a warning and the identity has
    ``random_init: true``.

    Raises:
        GeofmValueError: neither or an unknown preset given.
        CheckpointError: the checkpoint is missing, corrupt or of another architecture.
    """
    return load_run_encoder(checkpoint=checkpoint, model=model, device=device, seed=seed,
                            stage="embed")


@dataclass
class _SceneBuffer:
    """Results of one scene's chips while the scene is in flight."""

    plan: ScenePlan
    pending: int
    cls: dict[int, np.ndarray] = field(default_factory=dict)
    mean: dict[int, np.ndarray] = field(default_factory=dict)
    patches: dict[int, np.ndarray] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    filled: int = 0


def _plan(root: RunRoot, *, identity: ModelIdentity, patches: str, overwrite: bool,
          record: StageRecord) -> list[ScenePlan]:
    """Pending scenes; raise before any work if an output was made by another model."""
    plans, conflicts = [], []
    for scene_id in root.scene_ids(root.meta_dir):
        plan = read_scene_plan(root, scene_id)
        out = root.embeddings_path(scene_id)
        if out.exists() and not overwrite:
            try:
                found = read_scene_info(out)
            except TableError:  # a broken output is redone, like a missing one
                found = None
            diffs = (found.model.differences(identity.replace(bands=plan.bands))
                     if found is not None else {})
            if diffs:
                conflicts.append(f"{out} ({format_differences(diffs)})")
                continue
            complete = (found is not None and not found.failed_chips
                        and (patches != "full" or root.patches_path(scene_id).exists()))
            if complete:
                record.counts["skipped_scenes"] = record.counts.get("skipped_scenes", 0) + 1
                continue
        plans.append(plan)
    for sensor, bands in {t.group for p in plans for t in p.tasks}:
        try:  # a band without Clay statistics: fail before any work
            get_sensor(sensor).normalisation(bands)
        except SensorError as exc:
            raise GeofmValueError(f"cannot embed chips of sensor {sensor!r} with bands "
                                  f"{','.join(bands)}: {exc}. Re-chip with --bands from the "
                                  "sensor's Clay bands") from None
    if conflicts:
        raise GeofmFileExistsError(
            f"{len(conflicts)} embeddings file(s) were made by another model than "
            f"{identity.describe()} (field: file's vs this run's): "
            f"{'; '.join(conflicts[:5])}. Pass --overwrite to recompute them with this model")
    return plans


def _flush(root: RunRoot, buf: _SceneBuffer, *, identity: ModelIdentity, patches: str,
           record: StageRecord) -> None:
    plan = buf.plan
    keep = [i for i in range(len(plan.tasks)) if i in buf.cls]
    if not keep:
        log.error("scene %s: none of its %d valid chips could be embedded; nothing written",
                  plan.scene_id, len(plan.tasks))
        return
    meta = scene_metadata(identity.replace(bands=plan.bands), failed_chips=buf.failed,
                          chips=len(keep), filled_chips=buf.filled)
    write_scene(
        root.embeddings_path(plan.scene_id), scene_id=plan.scene_id,
        chip_ids=[plan.chip_ids[i] for i in keep], dates=plan.dates[keep],
        embedding=np.stack([buf.cls[i] for i in keep]),
        embedding_mean=np.stack([buf.mean[i] for i in keep]), metadata=meta,
        patches=np.stack([buf.patches[i] for i in keep]) if patches == "full" else None,
        patches_path=root.patches_path(plan.scene_id) if patches == "full" else None,
    )
    stale = root.patches_path(plan.scene_id)
    if patches != "full" and stale.exists():  # left by an earlier run: rows would not match
        stale.unlink()
    record.counts["scenes"] = record.counts.get("scenes", 0) + 1


@stage_entry("embed")
def embed(
    root: str | os.PathLike[str] | RunRoot,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    model: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    patches: str = "none",
    precision: str | None = None,
    compile: bool = False,
    workers: int = 0,
    max_invalid: float = DEFAULT_MAX_INVALID,
    time_location: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    seed: int = 0,
) -> StageRecord:
    """Embed every valid chip of a run root with a Clay encoder.

    Args:
        root: run root written by ``chip``.
        checkpoint: Clay checkpoint (Lightning ``.ckpt``, state dict or ``.safetensors``).
        model: preset ``tiny|small|base|large``; without ``checkpoint``: random weights
            (testing only, loudly flagged).
        batch_size: chips per forward pass (across chips and scenes).
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``.
        patches: ``none``/``mean`` (Parquet only) or ``full`` (plus float16 [N, L, D] .npy).
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast; default bf16 on CUDA, fp32 on CPU.
        compile: wrap the encoder in ``torch.compile``.
        workers: DataLoader reader processes (0 = read in this process).
        max_invalid: largest fraction of nodata/NaN pixels filled with the band mean;
            chips above it are failures.
        time_location: ``encode`` the acquisition time and chip centre into Clay's 8
            metadata channels, ``zero`` them (embeddings depend on pixels only), or
            ``auto``: encode with a checkpoint, zero with random weights (see
            :func:`geofm.model.embedder.resolve_time_location`). Recorded in the model identity.
        overwrite: recompute scenes whose embeddings exist.
        progress: show a progress bar (chips/s).
        seed: seed of the random weights when no checkpoint is given.

    Returns:
        The stage record (counts ``scenes``, ``skipped_scenes``, ``chips``,
        ``failed_chips``, ``filled_chips``; ``extra["model"]`` = model identity).

    Raises:
        GeofmError: bad options, a bad checkpoint, or outputs of another model present
            (all before any chip is read).
    """
    root = RunRoot.of(root)
    if patches not in PATCHES:
        raise GeofmValueError(f"unknown patches mode {patches!r}; use one of {', '.join(PATCHES)}")
    if batch_size < 1 or workers < 0:
        raise GeofmValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} "
                              f"and {workers}")
    root.require_chips()
    from geofm.model import resolve_device
    from geofm.model.embedder import resolve_precision

    dev = str(resolve_device(device))
    prec = resolve_precision(precision, dev)
    config = call_config(device=dev, precision=prec)
    embedder = Embedder.load(checkpoint=checkpoint, model=model, device=dev, seed=seed,
                             precision=prec, time_location=time_location,
                             max_invalid=max_invalid, compile=compile, stage="embed")
    identity = embedder.identity
    with StageRecord(root, "embed", config=config) as record:
        record.extra["model"] = identity.to_dict()
        for key in ("scenes", "skipped_scenes", "chips", "failed_chips", "filled_chips"):
            record.counts[key] = 0
        plans = _plan(root, identity=identity, patches=patches, overwrite=overwrite,
                      record=record)
        tasks = list(iter_tasks(plans))
        buffers = {p.scene_id: _SceneBuffer(plan=p, pending=len(p.tasks)) for p in plans}
        for plan in plans:
            if not plan.tasks:
                log.info("scene %s has no valid chips; nothing to embed", plan.scene_id)
        if not tasks:
            log.info("embed: nothing to do (%d scene(s) already embedded)",
                     record.counts["skipped_scenes"])
            return record
        loader = _loader(tasks, batch_size=batch_size, workers=workers,
                         max_invalid=embedder.max_invalid, pin=dev.startswith("cuda"))
        with progress_bar(total=len(tasks), unit="chip", desc="embed",
                          disable=not progress) as bar:
            for batch in loader:
                done = _handle_batch(batch, tasks, embedder, buffers, record,
                                     patches=patches == "full")
                for task in done:
                    buf = buffers[task.scene_id]
                    buf.pending -= 1
                    if buf.pending == 0:
                        _flush(root, buf, identity=identity, patches=patches, record=record)
                        del buffers[task.scene_id]
                bar.update(len(done))
        if record.failures:
            log.error("embed: %d chip(s) failed; see %s", len(record.failures),
                      root.manifest_path)
    return record


def _loader(tasks: Sequence[ChipTask], *, batch_size: int, workers: int,
            max_invalid: float | None, pin: bool):  # type: ignore[no-untyped-def]
    from torch.utils.data import DataLoader

    dataset = ChipDataset(tasks, max_invalid=max_invalid)
    return DataLoader(dataset, batch_sampler=batch_indices(tasks, batch_size),  # type: ignore[arg-type]
                      num_workers=workers, collate_fn=collate, pin_memory=pin,
                      prefetch_factor=4 if workers > 0 else None,
                      persistent_workers=False)


def _handle_batch(batch: dict[str, Any], tasks: Sequence[ChipTask], embedder: Embedder,
                  buffers: dict[str, _SceneBuffer], record: StageRecord, *,
                  patches: bool) -> list[ChipTask]:
    """Embed one batch into the scene buffers; return the tasks it finished (ok or failed)."""
    done: list[ChipTask] = []
    for index, reason in batch["failed"]:
        task = tasks[index]
        record.fail(task.chip_id, reason, path=task.path)
        buffers[task.scene_id].failed.append(task.chip_id)
        record.counts["failed_chips"] += 1
        done.append(task)
    if batch["pixels"] is None:
        return done
    group = [tasks[i] for i in batch["indices"]]
    try:
        out = embedder.embed(batch["pixels"], **task_inputs(group), patches=patches)
    except (RuntimeError, GeofmError) as exc:  # e.g. CUDA out of memory: report, go on
        import torch

        log.error("a batch of %d chips failed: %s", len(group), exc)
        # the embedder already retried in halves down to one chip
        hint = ("; it did not fit even one chip at a time: try --precision bf16 or a "
                "smaller --model" if isinstance(exc, torch.cuda.OutOfMemoryError) else "")
        for task in group:
            record.fail(task.chip_id, f"its batch of {len(group)} chips failed: "
                        f"{type(exc).__name__}: {exc}{hint}", path=task.path)
            buffers[task.scene_id].failed.append(task.chip_id)
            record.counts["failed_chips"] += 1
        return done + group
    cls, mean, grid = out.cls, out.mean, out.patches
    finite = np.isfinite(cls).all(axis=1) & np.isfinite(mean).all(axis=1)
    for j, task in enumerate(group):
        buf = buffers[task.scene_id]
        if not finite[j]:
            record.fail(task.chip_id, "the encoder returned non-finite values for this chip "
                        "(check its pixels, or use --precision fp32)", path=task.path)
            buf.failed.append(task.chip_id)
            record.counts["failed_chips"] += 1
        else:
            buf.cls[task.position] = cls[j]
            buf.mean[task.position] = mean[j]
            if grid is not None:
                buf.patches[task.position] = grid[j]
            record.counts["chips"] += 1
            record.counts["filled_chips"] += int(batch["invalid"][j] > 0)
            buf.filled += int(batch["invalid"][j] > 0)
        done.append(task)
    return done


def cli_options() -> dict[str, Any]:
    """``geofm embed``'s options: :func:`embed`'s signature plus what it cannot say.

    Returns:
        ``{name: geofm.options.Option}``.
    """
    from geofm.cliargs import positive_int
    from geofm.options import Cli, declare

    return declare(embed, {
        **encoder_cli_options(),
        "root": Cli(required=True, type=Path),
        "batch_size": Cli(type=positive_int),
        "patches": Cli(choices=PATCHES),
    })


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``geofm embed`` options to ``parser`` (from :func:`cli_options`)."""
    from geofm.options import add_arguments as add_options

    add_options(parser, cli_options().values())


def run_cli(args: argparse.Namespace) -> int:
    """Run ``geofm embed`` from parsed arguments; return the exit code."""
    from geofm.options import library_kwargs

    record = embed(**library_kwargs(args, cli_options().values()))
    return 1 if record.failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point ``python -m geofm.steps.embed``: same options as ``geofm embed``."""
    from geofm.cli import stage_main

    return stage_main("embed", argv)
