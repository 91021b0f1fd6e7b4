"""``geofm finetune``: train a segmentation or classification head on the frozen encoder.

Chips of a run root are labelled from a label GeoTIFF (class codes, 0 = no label)
resampled onto each chip's grid, split into train and validation by location, encoded
once by the frozen encoder (tokens cached), and a light head is trained on the tokens.

Outputs in ``OUT``: ``best.pt`` (head state dict + config: task, encoder identity,
bands, classes, patch size), ``metrics.json`` (per-epoch validation scores, best
epoch), ``curves.png`` and ``run.json`` (stage ``finetune``). The run root is only read.

Example::

    finetune("run", ["labels.tif"], "heads/landcover", model="tiny", epochs=10)
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geofm.exceptions import GeofmFileExistsError, GeofmValueError
from geofm.finetune.layers import DEFAULT_LAYERS
from geofm.layout import RunRoot
from geofm.manifest import StageRecord, call_config, stage_entry

log = logging.getLogger(__name__)

#: With fewer validation locations than this, ``keep_epoch="auto"`` keeps the last epoch
#: of a fixed schedule: one or two places score too noisily to pick an epoch or stop
#: early (``benchmarks/results/finetune.md``, issue 21).
MIN_VAL_LOCATIONS = 4
#: ``class_weights`` choices: inverse frequency on the training split (``auto``), its
#: square root (``sqrt``) or none.
CLASS_WEIGHTS = ("auto", "sqrt", "none")
#: ``keep_epoch`` values.
KEEP_EPOCHS = ("auto", "best", "last")

__all__ = ["add_arguments", "balanced_sample_weights", "finetune", "load_encoder_for", "main",
           "run_cli"]


def load_encoder_for(*, checkpoint: str | os.PathLike[str] | None, model: str | None,
                     device: str, encoder: Any = None, stage: str = "finetune") -> Any:
    """The frozen encoder (eval mode, no gradients): :func:`geofm.model.embedder.load_run_encoder`.

    Args:
        checkpoint: encoder checkpoint to load.
        model: preset with seeded random weights (when no checkpoint).
        device: torch device.
        encoder: an already loaded encoder; used as is (moved to ``device``) if given.
        stage: the stage asking (``finetune`` or ``predict``), for messages.
    """
    from geofm.model.embedder import load_run_encoder

    return load_run_encoder(checkpoint=checkpoint, model=model, device=device,
                            encoder=encoder, stage=stage)[0]


def _targets(data: Any, task: str) -> Any:
    """Label function for :func:`geofm.finetune.train.train_head`."""
    locs = data.samples["loc"].to_numpy()
    if task == "classification":
        chip_labels = data.chip_labels()

        def chip_targets(idx: Sequence[int], valid: np.ndarray) -> np.ndarray:
            return chip_labels[locs[np.asarray(idx)]]

        return chip_targets

    def pixel_targets(idx: Sequence[int], valid: np.ndarray) -> np.ndarray:
        codes = data.labels[locs[np.asarray(idx)]].astype(np.int64)
        codes[~valid] = 0
        return codes

    return pixel_targets


def balanced_sample_weights(data: Any, train_idx: np.ndarray) -> np.ndarray:
    """Drawing weight per training sample for class-balanced sampling.

    A sample's class is the majority label of its location
    (:meth:`geofm.finetune.data.LabelledChips.chip_labels`); its weight is one over the
    number of training samples of that class, so every class is drawn equally often.

    Returns:
        float64 [len(train_idx)], summing to 1.
    """
    classes = data.chip_labels()[data.samples["loc"].to_numpy()[np.asarray(train_idx)]]
    counts = np.bincount(classes, minlength=int(classes.max(initial=0)) + 1)
    weights = 1.0 / counts[classes].astype(np.float64)
    return weights / weights.sum()


@stage_entry("finetune", root="out")
def finetune(root: str | os.PathLike[str] | RunRoot,
             labels: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
             out: str | os.PathLike[str], *, task: str = "segmentation",
             checkpoint: str | os.PathLike[str] | None = None, model: str | None = None,
             epochs: int = 10, batch_size: int = 16, lr: float = 3e-3,
             weight_decay: float = 1e-2, class_weights: str = "auto", patience: int | None = 3,
             val_fraction: float = 0.25, date_window_days: float | None = None,
             label_date: str | None = None, n_classes: int | None = None,
             class_names: Sequence[str] | None = None, bands: Sequence[str] | None = None,
             pool: str = "mean", hidden: int = 128, out_channels: int = 16,
             whiten: bool = True, cache: str = "memory", time_location: str = "auto",
             layers: str | Sequence[int | str] | None = None,
             decoder: str = "unet", augment: bool = True, sampling: str = "balanced",
             pixel_stats: bool = True, baseline: bool = True,
             epoch_samples: int | None = 512, token_dropout: float = 0.5,
             pixel_branch: int = 32, context_dropout: float = 0.8,
             keep_epoch: str = "auto",
             baseline_pixels: int | None = None,
             device: str = "auto", seed: int = 0, encoder: Any = None, overwrite: bool = False,
             progress: bool = True) -> StageRecord:
    """Train a head on the frozen encoder and write its best checkpoint and metrics.

    Args:
        root: run root written by ``geofm chip`` (read only).
        labels: label GeoTIFF(s) of class codes ``1..n_classes`` (0 = no label), any CRS.
        out: output folder for ``best.pt``, ``metrics.json``, ``curves.png``, ``run.json``.
        task: ``segmentation`` (per pixel) or ``classification`` (majority code per chip).
        checkpoint: encoder checkpoint (Clay ``.ckpt``, state dict or ``.safetensors``).
        model: preset with seeded random weights when no checkpoint (testing only).
        epochs: maximum epochs.
        batch_size: chips per step.
        lr: peak AdamW learning rate (cosine decay).
        weight_decay: AdamW weight decay.
        class_weights: ``auto`` (inverse frequency on the training split), ``sqrt`` (its
            square root) or ``none``.
        patience: early stopping after this many epochs without a better val mean IoU.
        val_fraction: share of chip locations held out for validation.
        date_window_days: use only acquisitions within this many days of ``label_date``.
        label_date: the date the labels describe (``YYYY-MM-DD``).
        n_classes: number of classes (default: largest code in the labels).
        class_names: a name per code.
        bands: bands fed to the encoder (default: the chips' bands).
        pool: classification head input, ``mean`` of the patch tokens or ``cls``.
        hidden: channels of the segmentation head's conv blocks on the patch grid.
        out_channels: segmentation channels per pixel at full resolution (``shuffle``:
            after the pixel shuffle, the 1x1 conv before it has ``out_channels * p**2``;
            ``unet``: the skip path and the fusion layers).
        whiten: whiten the head's input (segmentation: the token channels;
            classification: the pooled vector) with a fixed ZCA transform fitted on the
            training split's tokens before training
            (:class:`geofm.finetune.heads.TokenWhitening`; kept in ``best.pt``). Costs
            one pass over the training tokens (a second encoding pass with ``cache="none"``).
        cache: where encoder tokens are kept: ``memory``, ``disk`` (float16
            ``out/cache/tokens.npy``) or ``none`` (re-encode every epoch; slow, for benchmarks).
        time_location: ``encode`` acquisition time and chip centre into the encoder's 8
            time/location channels, ``zero`` them, or ``auto`` (the rule of ``geofm embed``:
            zero for random weights, encode for a checkpoint). The resolved value is kept in
            the head's config, so ``geofm predict`` builds its inputs the same way.
        layers: encoder layers whose patch tokens feed the head, concatenated along the
            feature axis (width D * n): ``"last"`` (the encoder output) or block indices
            such as ``"1,3,5"`` (0-based; the residual stream after that block, as Clay's
            segmentor taps intermediate blocks) or ``"embed"`` (block 0's input); default
            :data:`geofm.finetune.layers.DEFAULT_LAYERS`. Kept in the head's config
            (``layers``) so ``geofm predict`` extracts the same features.
        decoder: segmentation head, ``unet`` (:class:`geofm.finetune.heads.UNetHead`:
            upsampled tokens plus a full-resolution path on the normalised bands, so
            boundaries follow 10 m pixels) or ``shuffle`` (tokens only, the head of
            earlier versions, :class:`geofm.finetune.heads.SegmentationHead`).
        augment: random rotations/mirrors of each training batch (tokens, bands and
            labels moved together; :func:`geofm.finetune.train.dihedral`).
        sampling: ``balanced`` (each epoch draws training samples in inverse proportion
            to the number of training samples of their majority class) or ``uniform``
            (every sample once per epoch).
        pixel_stats: classification head: join per-band mean/std of the chip's log
            reflectance to the pooled tokens.
        baseline: also fit the per-pixel baseline
            (:mod:`geofm.finetune.baseline`, gradient boosting on log reflectance) on the
            same split and report it beside the head (segmentation only).
        epoch_samples: training samples drawn per epoch when the training split is
            smaller (with replacement), so a few labelled chips still get
            ``epoch_samples / batch_size`` steps per epoch; ``None``: one pass.
        token_dropout: ``unet`` head: probability of dropping a chip's token path in
            training (:class:`geofm.finetune.heads.UNetHead`).
        pixel_branch: ``unet`` head: width of its per-pixel classifier on the bands,
            whose logits are added to the fused ones (0: none;
            :class:`geofm.finetune.heads.UNetHead`).
        context_dropout: ``unet`` head with a pixel branch: probability of dropping a
            chip's context logits (token and 3x3 paths) in training, so the pixel branch
            classifies on its own; in prediction they are scaled by ``1 - p``. 0: the
            context is always on; ignored without a pixel branch.
        keep_epoch: which epoch's head is saved: ``best`` (best validation mean IoU, with
            early stopping after ``patience``), ``last`` (a fixed schedule of ``epochs``)
            or ``auto`` (``last`` when fewer than :data:`MIN_VAL_LOCATIONS` locations
            validate, whose score cannot tell epochs apart; else ``best``). The choice
            made is in ``metrics.json`` (``keep_epoch``).
        baseline_pixels: training pixels of the baseline (default
            :data:`geofm.finetune.baseline.BASELINE_PIXELS`).
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: seeds the split, the head's initialisation and the shuffling.
        encoder: an already loaded encoder (from :func:`geofm.model.load_encoder`) to use
            instead of ``checkpoint``/``model``; it is put in eval mode and frozen.
        overwrite: replace an existing ``out/best.pt``.
        progress: show progress bars.

    Returns:
        The stage record (written to ``out/run.json``); ``extra`` holds ``best_epoch``,
        ``best`` (validation scores of the best epoch) and ``baseline`` (the per-pixel
        baseline's validation scores, or ``None``).

    Raises:
        GeofmFileNotFoundError: a label file or the chip metadata is missing.
        GeofmValueError: labels do not overlap the chips, codes beyond ``n_classes``, bad
            options.
        GeofmFileExistsError: ``out/best.pt`` exists and ``overwrite`` is False.
    """
    import torch

    from geofm.finetune.baseline import BASELINE_PIXELS, evaluate_baseline, fit_pixel_baseline
    from geofm.finetune.cache import ChipEncoder, build_cache, resolve_time_location
    from geofm.finetune.data import load_labelled_chips
    from geofm.finetune.heads import DECODERS, TASKS, build_head
    from geofm.finetune.layers import layers_to_config, parse_layers
    from geofm.finetune.train import (
        TokenSource,
        class_weights_from_counts,
        plot_curves,
        save_head,
        train_head,
    )
    from geofm.io import write_json_atomic
    from geofm.model import resolve_device
    from geofm.splits import split_locations

    if task not in TASKS:
        raise GeofmValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if class_weights not in CLASS_WEIGHTS:
        raise GeofmValueError(f"class_weights must be one of {', '.join(CLASS_WEIGHTS)}, got "
                              f"{class_weights!r}")
    if cache not in ("memory", "disk", "none"):
        raise GeofmValueError(f"cache must be 'memory', 'disk' or 'none', got {cache!r}")
    if decoder not in DECODERS:
        raise GeofmValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if keep_epoch not in KEEP_EPOCHS:
        raise GeofmValueError(f"keep_epoch must be one of {', '.join(KEEP_EPOCHS)}, got "
                              f"{keep_epoch!r}")
    if sampling not in ("balanced", "uniform"):
        raise GeofmValueError(f"sampling must be 'balanced' or 'uniform', got {sampling!r}")
    out = Path(out)
    best_path = out / "best.pt"
    if best_path.exists() and not overwrite:
        raise GeofmFileExistsError(f"{best_path} exists; pass --overwrite to train again or "
                                   "choose another --out")
    label_list = [labels] if isinstance(labels, str | os.PathLike) else list(labels)
    run = RunRoot.of(root)
    device = str(resolve_device(device))
    config = call_config(root=str(run.path), labels=[str(p) for p in label_list],
                         checkpoint=None if checkpoint is None else str(checkpoint),
                         device=device)
    out.mkdir(parents=True, exist_ok=True)
    with StageRecord(out, "finetune", config=config) as record:
        data = load_labelled_chips(run, label_list, n_classes=n_classes,
                                   class_names=class_names, date_window_days=date_window_days,
                                   label_date=label_date, bands=bands)
        encoder = load_encoder_for(checkpoint=checkpoint, model=model, device=device,
                                   encoder=encoder)
        resolved_tl = resolve_time_location(encoder, time_location)
        layer_sel = parse_layers(layers, depth=len(encoder.transformer.layers))
        record.config["layers"] = layers_to_config(layer_sel)
        feature_dim = int(encoder.dim) * len(layer_sel)
        train_ids, val_ids = split_locations(data.labelled_locations(),
                                             val_fraction=val_fraction, seed=seed)
        chip_ids = data.samples["chip_id"]
        train_idx = np.flatnonzero(chip_ids.isin(train_ids).to_numpy())
        val_idx = np.flatnonzero(chip_ids.isin(val_ids).to_numpy())
        record.counts.update(samples=len(data.samples), locations=len(data.locations),
                             train_locations=len(train_ids), val_locations=len(val_ids),
                             train_samples=len(train_idx), val_samples=len(val_idx))
        log.info("finetune %s: %d samples at %d locations (%d train / %d validation "
                 "locations), %d classes", task, len(data.samples), len(data.locations),
                 len(train_ids), len(val_ids), data.n_classes)

        chip_encoder = ChipEncoder(encoder=encoder, root=run.path, samples=data.samples,
                                   bands=data.bands, device=device,
                                   time_location=resolved_tl, layers=layer_sel)
        use_pixels = ((task == "segmentation" and decoder == "unet") or
                      (task == "classification" and pixel_stats))
        want_baseline = baseline and task == "segmentation"
        source: TokenSource
        pixel_source: Any
        if cache == "none":
            source = chip_encoder

            def pixel_source(idx: Sequence[int]) -> Any:
                return torch.from_numpy(chip_encoder.read(list(idx))[0])
        else:
            # only the samples of the split are encoded (chips without labels are not)
            used = np.concatenate([train_idx, val_idx])
            rows_of = np.full(len(data.samples), -1, dtype=np.int64)
            rows_of[used] = np.arange(len(used))
            tokens = build_cache(
                ChipEncoder(encoder=encoder, root=run.path,
                            samples=data.samples.iloc[used].reset_index(drop=True),
                            bands=data.bands, device=device, time_location=resolved_tl,
                            layers=layer_sel),
                batch_size=batch_size, progress=progress,
                cache_dir=out / "cache" if cache == "disk" else None,
                keep_pixels=use_pixels or want_baseline)

            def cached(idx: Sequence[int]) -> tuple[Any, np.ndarray]:
                rows = rows_of[np.asarray(idx)]
                return tokens.batch(rows, device), tokens.valid[rows]

            def pixel_source(idx: Sequence[int]) -> Any:
                return tokens.pixel_batch(rows_of[np.asarray(idx)], device)

            source = cached

        targets = _targets(data, task)
        weights = None
        if class_weights != "none":
            if task == "classification":
                codes = data.chip_labels()[data.samples["loc"].to_numpy()[train_idx]]
            else:
                codes = data.labels[np.unique(data.samples["loc"].to_numpy()[train_idx])]
            counts = np.bincount(np.asarray(codes).ravel().astype(np.int64),
                                 minlength=data.n_classes + 1)[1:data.n_classes + 1]
            weights = class_weights_from_counts(counts,
                                                power=0.5 if class_weights == "sqrt" else 1.0)
        sample_weights = None
        if sampling == "balanced":
            sample_weights = balanced_sample_weights(data, train_idx)

        torch.manual_seed(seed)
        # widths are stored so a checkpoint rebuilds the same head whatever the defaults
        head_options: dict[str, Any]
        if task == "classification":
            head_options = {"pool": pool, "whiten": whiten}
            if pixel_stats:
                head_options["pixel_stats"] = len(data.bands)
        else:
            head_options = {"hidden": hidden, "out_channels": out_channels, "whiten": whiten}
            if decoder == "unet":
                head_options.update(decoder="unet", bands=len(data.bands),
                                    token_dropout=token_dropout, pixel_branch=pixel_branch,
                                    context_dropout=context_dropout if pixel_branch > 0
                                    else 0.0)
        head = build_head(task, dim=feature_dim, patch_size=int(encoder.patch_size),
                          n_classes=data.n_classes, **head_options)
        batches = [train_idx[i:i + batch_size].tolist()
                   for i in range(0, len(train_idx), batch_size)]
        if whiten:
            log.info("fitting the token whitening on %d training samples", len(train_idx))
            head.fit_whitening(source(b)[0] for b in batches)
        if use_pixels:
            head.fit_pixels(pixel_source(b) for b in batches)
        keep = keep_epoch
        if keep == "auto":
            keep = "last" if len(val_ids) < MIN_VAL_LOCATIONS else "best"
            if keep == "last":
                log.info("%d validation locations (< %d) cannot choose an epoch: training "
                         "all %d epochs and keeping the last", len(val_ids),
                         MIN_VAL_LOCATIONS, epochs)
        result = train_head(head, source, targets, train_idx=train_idx, val_idx=val_idx,
                            n_classes=data.n_classes, epochs=epochs, batch_size=batch_size,
                            lr=lr, weight_decay=weight_decay, class_weights=weights,
                            patience=patience, seed=seed, device=device, progress=progress,
                            pixels=pixel_source if use_pixels else None, augment=augment,
                            sample_weights=sample_weights, epoch_samples=epoch_samples,
                            keep=keep)
        baseline_scores = None
        if want_baseline:
            def codes_of(idx: Sequence[int]) -> np.ndarray:
                valid = (chip_encoder.read(list(idx))[1] if cache == "none"
                         else tokens.valid[rows_of[np.asarray(idx)]])
                return targets(idx, valid)

            fitted = fit_pixel_baseline(pixel_source, codes_of, train_idx,
                                        max_pixels=baseline_pixels or BASELINE_PIXELS,
                                        batch_size=batch_size, seed=seed)
            baseline_scores = evaluate_baseline(fitted, pixel_source, codes_of, val_idx,
                                                n_classes=data.n_classes,
                                                batch_size=batch_size)
        # the one identity type: the encoder's, with how the head's inputs were built
        identity = encoder.identity.replace(time_location=resolved_tl,
                                            bands=tuple(data.bands)).to_dict()
        head_config = {"task": task, "dim": int(encoder.dim),
                       "patch_size": int(encoder.patch_size), "n_classes": data.n_classes,
                       "class_names": data.class_names, "bands": list(data.bands),
                       "sensor": data.sensor, "encoder": identity, "head_options": head_options,
                       "time_location": resolved_tl,
                       "layers": layers_to_config(layer_sel), "feature_dim": feature_dim,
                       "chip_size": [data.grids[0].height, data.grids[0].width],
                       "best_epoch": result.best_epoch, "train_locations": train_ids,
                       "val_locations": val_ids}
        save_head(best_path, result.best_state, head_config)
        best = {k: v for k, v in result.best.items() if k != "confusion"}
        metrics = {"task": task, "class_names": data.class_names, "best_epoch": result.best_epoch,
                   "stopped_early": result.stopped_early, "keep_epoch": keep,
                   "best": result.best,
                   "history": result.history, "encoder": identity, "counts": record.counts,
                   "class_weights": None if weights is None else weights.tolist(),
                   "baseline": baseline_scores}
        write_json_atomic(out / "metrics.json", metrics)
        plot_curves(result.history, out / "curves.png",
                    title=f"{task} head, {identity.get('preset') or 'encoder'}")
        record.extra.update(best_epoch=result.best_epoch, best=best, model=identity,
                            baseline=None if baseline_scores is None else
                            {k: v for k, v in baseline_scores.items() if k != "confusion"})
        log.info("best epoch %d: validation mean IoU %.3f, macro F1 %.3f, accuracy %.3f -> %s",
                 result.best_epoch, best["mean_iou"], best["macro_f1"], best["pixel_accuracy"],
                 best_path)
        if baseline_scores is not None:
            ratio = best["mean_iou"] / max(baseline_scores["mean_iou"], 1e-9)
            log.info("per-pixel baseline (gradient boosting on log reflectance, same split): "
                     "validation mean IoU %.3f; the head reaches %.2fx the baseline",
                     baseline_scores["mean_iou"], ratio)
    return record


def cli_options() -> dict[str, Any]:
    """``geofm finetune``'s options: :func:`finetune`'s signature plus what it cannot say.

    Returns:
        ``{name: geofm.options.Option}``.
    """
    from geofm.model.presets import PRESETS
    from geofm.options import Cli, comma_list, declare

    return declare(finetune, {
        "root": Cli(required=True, help="run root written by `geofm chip`"),
        "labels": Cli(required=True, action="append",
                      help="label GeoTIFF of class codes (0 = no label); repeatable"),
        "out": Cli(required=True, help="output folder for best.pt, metrics.json"),
        "task": Cli(choices=("segmentation", "classification")),
        "checkpoint": Cli(group="encoder", required=True),
        "model": Cli(group="encoder", required=True, choices=tuple(PRESETS)),
        "class_weights": Cli(choices=CLASS_WEIGHTS),
        "keep_epoch": Cli(choices=KEEP_EPOCHS),
        "patience": Cli(type=int, convert=_none_if_zero,
                        help="early stopping after N epochs without gain (0 = never)"),
        "class_names": Cli(convert=comma_list,
                           help="comma list, a name per code 1..n (e.g. forest,water)"),
        "bands": Cli(convert=comma_list, help="comma list (default: the chips' bands)"),
        "pool": Cli(choices=("mean", "cls")),
        "cache": Cli(choices=("memory", "disk", "none")),
        "time_location": Cli(choices=("auto", "encode", "zero")),
        "layers": Cli(help="encoder layers feeding the head, concatenated: 'last' (encoder "
                           "output), 0-based block indices, 'embed' (block 0 input), e.g. "
                           f"0,3,5 (default {DEFAULT_LAYERS}, chosen on validation mIoU; see "
                           "benchmarks/results/finetune.md)"),
        "decoder": Cli(choices=("unet", "shuffle")),
        "sampling": Cli(choices=("balanced", "uniform")),
        "epoch_samples": Cli(type=int, convert=_none_if_zero,
                             help="training chips drawn per epoch when fewer are labelled "
                                  "(with replacement; 0 = one pass over the training split)"),
        "encoder": Cli(cli=False),
    })


def _none_if_zero(value: int | None) -> int | None:
    """``--patience 0`` / ``--epoch-samples 0`` -> None (never / one pass)."""
    return value or None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``geofm finetune`` options to ``parser`` (from :func:`cli_options`)."""
    from geofm.options import add_arguments as add_options

    add_options(parser, cli_options().values())


def run_cli(args: argparse.Namespace) -> int:
    """Run ``geofm finetune`` from parsed arguments; returns the exit code."""
    from geofm.options import library_kwargs

    record = finetune(**library_kwargs(args, cli_options().values()))
    return 1 if record.failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m``-style entry point: ``geofm finetune`` with ``argv``."""
    from geofm.cli import stage_main

    return stage_main("finetune", argv)
