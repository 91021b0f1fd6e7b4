"""The ``pretrain`` stage: Clay's masked-autoencoder objective on a run root's valid chips.

Data: every valid chip of ``ROOT/meta/*.parquet`` (the chip stage's contract), read and
filled like ``embed`` does (:func:`geofm.model.chips.load_chip`, invalid-pixel rule
included) and fed through the same datacube (:func:`geofm.model.make_datacube`:
Clay normalisation, time and location codes). Chip *locations* (chip ids) are split
into training and validation (:func:`geofm.splits.split_locations`), so no
place is seen in both.

Objective (:mod:`geofm.pretrain.mae`): per chip a random ``mask_ratio`` share of the
patches is hidden; the encoder sees only the visible ones
(:meth:`geofm.model.encoder.ClayEncoder.forward_masked`), a light decoder predicts the
normalised pixels of every patch, and the loss is the mean squared error over the hidden
patches only. Optimiser: AdamW (betas 0.9/0.95, weight decay 0.05), linear warm-up over
the first :data:`WARMUP_STEPS` steps then a constant learning rate, gradient norm
clipped at 1.

Determinism: the chip order of epoch ``e`` and the masks of its step ``s`` come from
generators seeded by ``(seed, e, s)`` only; validation masks are the same every epoch
(so the validation losses of two epochs are comparable). A resumed run therefore takes
the same steps as an uninterrupted one.

Outputs in ``out`` (each written atomically at the end of every epoch):

- ``last.ckpt``: ``state_dict`` (``model.encoder.*``, ``model.decoder.*``),
  ``optimizer`` (AdamW state: tensors, numbers, lists), ``epoch``, ``global_step``,
  ``history`` and ``hyper_parameters``; plain types only, read back with the safe loader.
  A re-run with the same options continues after its last epoch (``kill -9`` loses at
  most the epoch in progress); ``--epochs`` may be raised to train longer.
- ``encoder.ckpt``: the Lightning layout ``geofm embed --checkpoint`` reads
  (``model.encoder.*`` plus the ignored ``model.decoder.*``), ``hyper_parameters``
  naming the sizes (``model_size``, ``dim`` ... ``patch_size``), the decoder's sizes and
  the training provenance (``pretrain_*`` strings and numbers).
- ``metrics.json``: ``{"epochs": [{"epoch", "train_loss", "val_loss", "seconds",
  "train_chips", "val_chips", "skipped_chips", "lr"}...], "options": {...}}``.

A NaN or infinite loss stops the run with :class:`~geofm.exceptions.TrainingError`
before the optimiser step; the files of the last finished epoch are left as they were.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from geofm.exceptions import (
    GeofmFileExistsError,
    GeofmValueError,
    SensorError,
    TrainingError,
)
from geofm.layout import RunRoot
from geofm.manifest import StageRecord, call_config, stage_entry
from geofm.model.chips import DEFAULT_MAX_INVALID, ChipTask, iter_tasks, read_scene_plan
from geofm.model.presets import PRESETS
from geofm.pretrain.mae import DEFAULT_MASK_RATIO, DecoderConfig, check_mask_ratio

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
TIME_LOCATION = ("encode", "zero")
#: Steps of linear learning-rate warm-up.
WARMUP_STEPS = 20
WEIGHT_DECAY = 0.05
BETAS = (0.9, 0.95)
GRAD_CLIP = 1.0
#: Output file names inside ``out``.
LAST_CKPT = "last.ckpt"
ENCODER_CKPT = "encoder.ckpt"
METRICS_JSON = "metrics.json"
#: Options that must match for a re-run to continue a run (the rest may change).
RESUME_KEYS = ("model_size", "dim", "depth", "heads", "dim_head", "mlp_ratio", "patch_size",
               "decoder_dim", "decoder_depth", "decoder_heads", "decoder_dim_head",
               "decoder_mlp_ratio", "pretrain_mask_ratio", "pretrain_batch_size",
               "pretrain_lr", "pretrain_seed", "pretrain_val_fraction",
               "pretrain_time_location", "pretrain_init_sha256")
#: Epoch number that seeds the validation order and masks (training epochs start at 1).
_VAL_EPOCH = 0


def _generator(*keys: int):  # type: ignore[no-untyped-def]
    """A CPU torch generator seeded by integers (seed, epoch, step)."""
    import torch

    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def epoch_batches(tasks: Sequence[ChipTask], *, batch_size: int, seed: int,
                  epoch: int) -> list[list[int]]:
    """Seeded shuffle of one epoch's chips into batches of one (sensor, bands) group.

    Args:
        tasks: the chips.
        batch_size: largest batch.
        seed: run seed.
        epoch: 1-based epoch (``0`` keeps the order: validation).

    Returns:
        Lists of indices into ``tasks``.
    """
    rng = np.random.default_rng([seed, epoch])
    groups: dict[Any, list[int]] = {}
    for i, task in enumerate(tasks):
        groups.setdefault(task.group, []).append(i)
    batches: list[list[int]] = []
    for members in groups.values():
        order = list(rng.permutation(members)) if epoch else members
        batches += [[int(i) for i in order[j:j + batch_size]]
                    for j in range(0, len(order), batch_size)]
    if epoch:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _hparams(*, config: Any, decoder: DecoderConfig, mask_ratio: float, batch_size: int,
             lr: float, seed: int, val_fraction: float, time_location: str,
             init: str | None, init_sha256: str | None, root: RunRoot) -> dict[str, Any]:
    """Plain-type hyper-parameters: sizes (read by the loader) and provenance."""
    from geofm import __version__

    return {
        "model_size": config.name, "dim": config.dim, "depth": config.depth,
        "heads": config.heads, "dim_head": config.dim_head,
        "mlp_ratio": float(config.mlp_ratio), "patch_size": config.patch_size,
        "decoder_dim": decoder.dim, "decoder_depth": decoder.depth,
        "decoder_heads": decoder.heads, "decoder_dim_head": decoder.dim_head,
        "decoder_mlp_ratio": float(decoder.mlp_ratio),
        "pretrain_objective": "masked-autoencoder (MSE on hidden patches' normalised pixels)",
        "pretrain_mask_ratio": mask_ratio, "pretrain_batch_size": batch_size,
        "pretrain_lr": lr, "pretrain_seed": seed, "pretrain_val_fraction": val_fraction,
        "pretrain_time_location": time_location, "pretrain_root": str(root.path),
        "pretrain_init": init or "random", "pretrain_init_sha256": init_sha256 or "",
        "geofm_version": __version__,
    }


def _decoder_from(path: Path | None) -> tuple[DecoderConfig, dict[str, Any]]:
    """Decoder sizes and weights kept in a checkpoint written by this stage, if any."""
    if path is None:
        return DecoderConfig(), {}
    from geofm.model.loading import read_checkpoint

    state, found = read_checkpoint(path)
    weights = {k[len("model.decoder."):]: v for k, v in state.items()
               if k.startswith("model.decoder.")}
    if not weights or "pretrain_objective" not in found:  # e.g. Clay's own decoder: not ours
        return DecoderConfig(), {}
    try:
        cfg = DecoderConfig(dim=int(found["decoder_dim"]), depth=int(found["decoder_depth"]),
                            heads=int(found["decoder_heads"]),
                            dim_head=int(found["decoder_dim_head"]),
                            mlp_ratio=float(found["decoder_mlp_ratio"]))
    except (KeyError, TypeError, ValueError):
        log.warning("%s: decoder sizes unreadable; starting a fresh decoder", path)
        return DecoderConfig(), {}
    return cfg, weights


def _save(path: Path, obj: dict[str, Any]) -> None:
    import torch

    from geofm.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _read_last(path: Path) -> dict[str, Any]:
    from geofm.model.safe_load import load_torch_file

    obj = load_torch_file(path, what="pretraining checkpoint",
                          fix_refused="It was not written by geofm pretrain; remove it or "
                                      "use another --out.",
                          fix_unreadable="Remove it (the run restarts) or pass --overwrite.")
    if not isinstance(obj, dict) or not {"state_dict", "optimizer", "epoch",
                                         "hyper_parameters", "history"} <= set(obj):
        raise GeofmValueError(f"{path} is not a geofm pretraining checkpoint (it lacks "
                              "state_dict/optimizer/epoch/history); remove it, use another "
                              "--out, or pass --overwrite")
    return obj


def _check_groups(tasks: Sequence[ChipTask]) -> None:
    from geofm.sensors import get_sensor

    for sensor, bands in {t.group for t in tasks}:
        try:
            get_sensor(sensor).normalisation(bands)
        except SensorError as exc:
            raise GeofmValueError(f"cannot pretrain on chips of sensor {sensor!r} with bands "
                                  f"{','.join(bands)}: {exc}. Re-chip with --bands from the "
                                  "sensor's Clay bands") from None


@stage_entry("pretrain")
def pretrain(
    root: str | os.PathLike[str] | RunRoot,
    *,
    out: str | os.PathLike[str],
    model: str | Any | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    epochs: int = 10,
    mask_ratio: float = DEFAULT_MASK_RATIO,
    batch_size: int = 16,
    lr: float = 3e-4,
    val_fraction: float = 0.2,
    device: str = "auto",
    precision: str | None = None,
    time_location: str = "encode",
    workers: int = 0,
    max_invalid: float = DEFAULT_MAX_INVALID,
    decoder: DecoderConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
    seed: int = 0,
) -> StageRecord:
    """Train a Clay encoder with the masked-autoencoder objective on a run root's chips.

    Args:
        root: run root written by ``chip`` (read only; its ``run.json`` gets a
            ``pretrain`` entry).
        out: output folder (``last.ckpt``, ``encoder.ckpt``, ``metrics.json``).
        model: preset ``tiny|small|base|large`` (or an
            :class:`~geofm.model.presets.EncoderConfig`) to start from seeded random
            weights; exclusive with ``checkpoint``.
        checkpoint: Clay checkpoint to continue (domain-adaptive pretraining); a
            checkpoint written by this stage also brings its decoder.
        epochs: total epochs; a re-run continues up to this number.
        mask_ratio: share of hidden patches per chip, in (0, 1).
        batch_size: chips per optimiser step.
        lr: peak AdamW learning rate.
        val_fraction: share of chip locations held out for validation.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32`` or ``bf16`` autocast (default bf16 on CUDA, fp32 on CPU).
        time_location: ``encode`` acquisition time and chip centre into Clay's 8 metadata
            channels (as Clay was trained), or ``zero`` them.
        workers: DataLoader reader processes (0 = read in this process).
        max_invalid: largest nodata/NaN pixel fraction filled with the band mean (as in
            ``embed``); chips above it are skipped.
        decoder: decoder sizes (default :class:`DecoderConfig`).
        overwrite: start again even if ``out`` holds a run with other options.
        progress: show a progress bar (steps, loss).
        seed: seed of the random weights, the split, the chip order and the masks.

    Returns:
        The stage record (counts ``epochs``, ``train_chips``, ``val_chips``;
        ``extra["pretrain"]``: output paths and the last epoch's losses).

    Raises:
        GeofmValueError: bad options, no valid chips, fewer than 2 chip locations, or a
            ``last.ckpt`` in ``out`` made with other options (without ``overwrite``).
        TrainingError: the loss became NaN or infinite (the last good files are kept).
    """
    import torch

    from geofm.model import load_encoder, resolve_device
    from geofm.model.encoder import ClayEncoder
    from geofm.pretrain.mae import ClayMAE, MaeDecoder
    from geofm.splits import split_locations

    root = RunRoot.of(root)
    mask_ratio = check_mask_ratio(mask_ratio)
    if (model is None) == (checkpoint is None):
        raise GeofmValueError("pretrain needs exactly one of --model "
                              f"{'|'.join(PRESETS)} (start from random weights) or "
                              "--checkpoint PATH (continue a Clay checkpoint)")
    if isinstance(model, str) and model not in PRESETS:
        raise GeofmValueError(f"unknown model preset {model!r}; use one of {', '.join(PRESETS)}")
    if epochs < 1 or batch_size < 1 or workers < 0:
        raise GeofmValueError(f"epochs and batch_size must be >= 1 and workers >= 0, got "
                              f"{epochs}, {batch_size} and {workers}")
    if not (np.isfinite(lr) and lr > 0):
        raise GeofmValueError(f"learning rate must be a positive number, got {lr}")
    if time_location not in TIME_LOCATION:
        raise GeofmValueError(f"unknown time_location {time_location!r}; use one of "
                              f"{', '.join(TIME_LOCATION)}")
    root.require_chips()
    dev = str(resolve_device(device))
    prec = precision or ("bf16" if dev.startswith("cuda") else "fp32")
    if prec not in PRECISIONS:
        raise GeofmValueError(f"unknown precision {prec!r} for pretraining; use one of "
                              f"{', '.join(PRECISIONS)} (fp16 needs loss scaling; use bf16)")
    out_dir = Path(out)
    tasks = list(iter_tasks([read_scene_plan(root, s) for s in root.scene_ids(root.meta_dir)]))
    if not tasks:
        raise GeofmValueError(f"run root {root.path} has no valid chips to pretrain on (meta "
                              f"in {root.meta_dir}); run `geofm chip` with a larger area or a "
                              "looser --max-cloud")
    _check_groups(tasks)
    train_ids, val_ids = split_locations([t.chip_id for t in tasks],
                                         val_fraction=val_fraction, seed=seed)
    val_set = set(val_ids)
    train_tasks = [t for t in tasks if t.chip_id not in val_set]
    val_tasks = [t for t in tasks if t.chip_id in val_set]

    # ---- model: from a checkpoint or seeded random weights; decoder beside it
    import warnings

    from geofm.exceptions import GeofmWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeofmWarning)  # random start: that is the point here
        encoder: ClayEncoder = load_encoder(checkpoint, preset=model if checkpoint is None
                                            else None, device="cpu", seed=seed)
    init_id = encoder.identity
    dec_cfg, dec_weights = _decoder_from(None if checkpoint is None else Path(checkpoint))
    if decoder is not None and decoder != dec_cfg:
        dec_cfg, dec_weights = decoder, {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        dec = MaeDecoder(encoder_dim=encoder.dim, patch_size=encoder.patch_size, config=dec_cfg)
    if dec_weights:
        try:
            dec.load_state_dict({k: v.float() for k, v in dec_weights.items()}, strict=True)
        except RuntimeError as exc:  # keys or shapes of another decoder: train a fresh one
            log.warning("%s: its decoder does not fit (%s); starting a fresh decoder",
                        checkpoint, str(exc).splitlines()[0])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1)
                dec.reset_parameters()
    mae = ClayMAE(encoder, dec).to(dev)
    hparams = _hparams(config=encoder.config, decoder=dec_cfg, mask_ratio=mask_ratio,
                       batch_size=batch_size, lr=lr, seed=seed, val_fraction=val_fraction,
                       time_location=time_location,
                       init=None if checkpoint is None else os.fspath(checkpoint),
                       init_sha256=init_id.sha256, root=root)
    optimizer = torch.optim.AdamW(mae.parameters(), lr=lr, betas=BETAS,
                                  weight_decay=WEIGHT_DECAY)

    # ---- resume
    last_path, enc_path = out_dir / LAST_CKPT, out_dir / ENCODER_CKPT
    start_epoch, global_step, history = 0, 0, []
    if last_path.exists() and not overwrite:
        saved = _read_last(last_path)
        diffs = {k: (saved["hyper_parameters"].get(k), hparams[k]) for k in RESUME_KEYS
                 if saved["hyper_parameters"].get(k) != hparams[k]}
        if diffs:
            listed = ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in diffs.items())
            raise GeofmFileExistsError(
                f"{last_path} holds a run with other options (saved vs now: {listed}); "
                "re-run with the same options to continue it, use another --out, or pass "
                "--overwrite to start again")
        mae.load_state_dict({k[len("model."):]: v for k, v in saved["state_dict"].items()},
                            strict=True)
        optimizer.load_state_dict(saved["optimizer"])
        start_epoch, global_step = int(saved["epoch"]), int(saved["global_step"])
        history = list(saved["history"])
        log.info("pretrain: continuing %s after epoch %d", last_path, start_epoch)

    config = call_config(
        out=os.fspath(out_dir), model=model if isinstance(model, str | None) else "custom",
        device=dev, precision=prec, decoder=dec_cfg.as_dict())
    with StageRecord(root, "pretrain", config=config) as record:
        record.counts.update(train_chips=len(train_tasks), val_chips=len(val_tasks),
                             train_locations=len(train_ids), val_locations=len(val_ids),
                             epochs=start_epoch)
        trainer = _Trainer(mae, optimizer, device=dev, precision=prec, mask_ratio=mask_ratio,
                           lr=lr, seed=seed, time_location=time_location == "encode",
                           workers=workers, max_invalid=max_invalid, batch_size=batch_size)
        if start_epoch >= epochs:
            log.info("pretrain: %s already holds %d epoch(s); nothing to do (raise --epochs "
                     "to train longer)", out_dir, start_epoch)
        for epoch in range(start_epoch + 1, epochs + 1):
            t0 = time.perf_counter()
            train_loss, n_train, skipped, global_step = trainer.train_epoch(
                train_tasks, epoch=epoch, epochs=epochs, global_step=global_step,
                progress=progress, last_good=last_path if history else None)
            val_loss, n_val, val_skipped = trainer.evaluate(val_tasks)
            if not np.isfinite(val_loss):
                raise TrainingError(
                    f"pretrain: validation loss is {val_loss} after epoch {epoch}; the "
                    f"weights diverged. Last good checkpoint: "
                    f"{last_path if history else 'none'}; lower --lr and re-run",
                    epoch=epoch, step=-1, loss=float(val_loss),
                    checkpoint=str(last_path) if history else None)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                            "seconds": round(time.perf_counter() - t0, 3),
                            "train_chips": n_train, "val_chips": n_val,
                            "skipped_chips": skipped + val_skipped,
                            "lr": trainer.lr_at(global_step - 1)})
            log.info("pretrain epoch %d/%d: train loss %.4f, validation loss %.4f (%.1f s)",
                     epoch, epochs, train_loss, val_loss, history[-1]["seconds"])
            _write_outputs(out_dir, mae, optimizer, epoch=epoch, global_step=global_step,
                           history=history, hparams=hparams, options=config)
            record.counts["epochs"] = epoch
        if not enc_path.exists() and history:
            _write_outputs(out_dir, mae, optimizer, epoch=len(history), global_step=global_step,
                           history=history, hparams=hparams, options=config)
        record.extra["pretrain"] = {
            "out": os.fspath(out_dir), "encoder": os.fspath(enc_path),
            "first_val_loss": history[0]["val_loss"] if history else None,
            "last_val_loss": history[-1]["val_loss"] if history else None,
            "init": init_id.to_dict()}
    return record


def _write_outputs(out_dir: Path, mae: Any, optimizer: Any, *, epoch: int, global_step: int,
                   history: list[dict[str, Any]], hparams: dict[str, Any],
                   options: dict[str, Any]) -> None:
    """last.ckpt, then encoder.ckpt, then metrics.json, each atomically."""
    from geofm.io import write_json_atomic

    state = {f"model.{k}": v.detach().cpu().clone() for k, v in mae.state_dict().items()}
    hp = {**hparams, "pretrain_epochs": epoch,
          "pretrain_val_loss": history[-1]["val_loss"],
          "pretrain_train_loss": history[-1]["train_loss"],
          "pretrain_finished_at": datetime.now(UTC).isoformat(timespec="seconds")}
    _save(out_dir / LAST_CKPT, {"state_dict": state, "optimizer": _cpu(optimizer.state_dict()),
                                "epoch": epoch, "global_step": global_step,
                                "history": history, "hyper_parameters": hp})
    _save(out_dir / ENCODER_CKPT, {"state_dict": state, "hyper_parameters": hp})
    write_json_atomic(out_dir / METRICS_JSON, {"epochs": history, "options": options,
                                               "hyper_parameters": hp})


def _cpu(obj: Any) -> Any:
    """Optimiser state with every tensor on the CPU (so a CPU run can resume a GPU one)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu(v) for v in obj)
    return obj


class _Trainer:
    """One epoch of masked-autoencoder steps, and the validation loss."""

    def __init__(self, mae: Any, optimizer: Any, *, device: str, precision: str,
                 mask_ratio: float, lr: float, seed: int, time_location: bool, workers: int,
                 max_invalid: float, batch_size: int) -> None:
        self.mae = mae
        self.optimizer = optimizer
        self.device = device
        self.precision = precision
        self.mask_ratio = mask_ratio
        self.lr = lr
        self.seed = seed
        self.time_location = time_location
        self.workers = workers
        self.max_invalid = max_invalid
        self.batch_size = batch_size

    def lr_at(self, step: int) -> float:
        """Learning rate of global step ``step`` (0-based): warm-up, then constant."""
        return self.lr * min(1.0, (step + 1) / WARMUP_STEPS)

    def _batches(self, tasks: Sequence[ChipTask], *, epoch: int) -> Any:
        from torch.utils.data import DataLoader

        from geofm.model.chips import ChipDataset, collate

        batches = epoch_batches(tasks, batch_size=self.batch_size, seed=self.seed, epoch=epoch)
        return DataLoader(ChipDataset(tasks, max_invalid=self.max_invalid),  # type: ignore[arg-type]
                          batch_sampler=batches, num_workers=self.workers, collate_fn=collate,
                          pin_memory=self.device.startswith("cuda")), len(batches)

    def _loss(self, batch: dict[str, Any], tasks: Sequence[ChipTask], *, epoch: int,
              step: int) -> Any:

        from geofm.model import make_datacube
        from geofm.model.chips import task_inputs
        from geofm.model.embedder import autocast
        from geofm.pretrain.mae import random_masking

        group = [tasks[i] for i in batch["indices"]]
        cube = make_datacube(batch["pixels"], **task_inputs(group), device=self.device,
                             time_location=self.time_location)
        p = self.mae.encoder.patch_size
        h, w = cube["pixels"].shape[2:]
        keep, masked = random_masking(len(group), (h // p) * (w // p), self.mask_ratio,
                                      generator=_generator(self.seed, epoch, step))
        with autocast(self.precision, self.device):
            loss, _ = self.mae(cube, keep.to(self.device), masked.to(self.device))
        return loss

    def train_epoch(self, tasks: Sequence[ChipTask], *, epoch: int, epochs: int,
                    global_step: int, progress: bool, last_good: Path | None
                    ) -> tuple[float, int, int, int]:
        """Train one epoch; return (mean loss per chip, chips, skipped chips, global step)."""
        import torch

        from geofm.log import progress as progress_bar

        self.mae.train()
        loader, n_batches = self._batches(tasks, epoch=epoch)
        total, count, skipped = 0.0, 0, 0
        with progress_bar(total=n_batches, unit="step", desc=f"pretrain {epoch}/{epochs}",
                          disable=not progress) as bar:
            for step, batch in enumerate(loader):
                skipped += len(batch["failed"])
                if batch["pixels"] is None:
                    bar.update(1)
                    continue
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr_at(global_step)
                loss = self._loss(batch, tasks, epoch=epoch, step=step)
                value = float(loss.detach())
                if not np.isfinite(value):
                    raise TrainingError(
                        f"pretrain: the loss is {value} at epoch {epoch}, step {step}; "
                        "training stopped and the files of the last finished epoch are kept "
                        f"({last_good or 'no epoch finished yet'}). Lower --lr (now "
                        f"{self.lr:g}) or use --precision fp32, then re-run",
                        epoch=epoch, step=step, loss=value,
                        checkpoint=None if last_good is None else str(last_good))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.mae.parameters(), GRAD_CLIP)
                self.optimizer.step()
                global_step += 1
                n = len(batch["indices"])
                total += value * n
                count += n
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                bar.update(1)
        if not count:
            raise GeofmValueError("pretrain: no training chip could be read this epoch (all "
                                  "were skipped; see the log); raise --max-invalid or re-chip")
        return total / count, count, skipped, global_step

    def evaluate(self, tasks: Sequence[ChipTask]) -> tuple[float, int, int]:
        """Validation loss (mean per chip) with the fixed validation masks."""
        import torch

        self.mae.eval()
        loader, _ = self._batches(tasks, epoch=_VAL_EPOCH)
        total, count, skipped = 0.0, 0, 0
        with torch.no_grad():
            for step, batch in enumerate(loader):
                skipped += len(batch["failed"])
                if batch["pixels"] is None:
                    continue
                loss = self._loss(batch, tasks, epoch=_VAL_EPOCH, step=step)
                n = len(batch["indices"])
                total += float(loss) * n
                count += n
        return (total / count if count else float("nan")), count, skipped


def cli_options() -> dict[str, Any]:
    """``geofm pretrain``'s options: :func:`pretrain`'s signature plus what it cannot say.

    Returns:
        ``{name: geofm.options.Option}``.
    """
    from geofm.cliargs import positive_int
    from geofm.model.embedder import encoder_cli_options
    from geofm.options import Cli, declare

    return declare(pretrain, {
        **encoder_cli_options(precisions=PRECISIONS, time_location=TIME_LOCATION),
        "root": Cli(required=True, type=Path),
        "out": Cli(required=True, type=Path),
        "epochs": Cli(type=positive_int),
        "mask_ratio": Cli(type=_ratio),
        "batch_size": Cli(type=positive_int),
        "lr": Cli(type=_positive_float),
        "decoder": Cli(cli=False),
    })


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``geofm pretrain`` options to ``parser`` (from :func:`cli_options`)."""
    from geofm.options import add_arguments as add_options

    add_options(parser, cli_options().values())


def _ratio(text: str) -> float:
    from geofm.cliargs import library_value

    return library_value(check_mask_ratio, text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def run_cli(args: argparse.Namespace) -> int:
    """Run ``geofm pretrain`` from parsed arguments; return the exit code."""
    from geofm.options import library_kwargs

    pretrain(**library_kwargs(args, cli_options().values()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point ``python -m geofm.pretrain``: same options as ``geofm pretrain``."""
    from geofm.cli import stage_main

    return stage_main("pretrain", argv)
