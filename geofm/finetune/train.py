"""The training loop of a head on frozen-encoder tokens, its checkpoint and its curves.

Only the head's parameters are optimised (AdamW, cosine learning-rate schedule per
step). Every epoch is validated on held-out locations; the best epoch by validation
mean IoU is kept (``keep="best"``), and training stops early after ``patience`` epochs
without a gain; or the last epoch is kept (``keep="last"``: a fixed schedule, for
validation splits too small to choose an epoch).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geofm.exceptions import CheckpointError, GeofmFileNotFoundError, GeofmValueError
from geofm.finetune.metrics import confusion_matrix, scores
from geofm.io import atomic_path
from geofm.log import progress as progress_bar

#: ``source(indices) -> (tokens float32 [B, 1+L, D] torch, valid bool [B, H, W])``
TokenSource = Callable[[Any], tuple[Any, np.ndarray]]
#: ``targets(indices, valid) -> int64 codes [B, H, W] (segmentation) or [B] (classification)``
TargetSource = Callable[[Any, np.ndarray], np.ndarray]
#: ``pixels(indices) -> DN float32 [B, C, H, W] torch`` (for heads with ``uses_pixels``)
PixelSource = Callable[[Any], Any]


def run_head(head: Any, tokens: Any, pixels: Any = None) -> Any:
    """``head(tokens, pixels)`` for heads that use the bands, else ``head(tokens)``."""
    if getattr(head, "uses_pixels", False):
        return head(tokens, pixels)
    return head(tokens)


def dihedral(tokens: Any, pixels: Any, codes: np.ndarray, *, k: int,
             flip: bool) -> tuple[Any, Any, np.ndarray]:
    """Rotate by ``k`` quarter turns (and mirror) the patch grid, the bands and the labels.

    Augmentation of frozen features: the patch tokens [B, 1+L, D] are moved as a square
    grid (CLS kept first), the bands [B, C, H, W] and pixel codes [B, H, W] the same way,
    so every token stays over its own pixels. Chip codes [B] are unchanged.
    """
    import torch

    b, n, d = tokens.shape
    side = int(round((n - 1) ** 0.5))
    grid = tokens[:, 1:].reshape(b, side, side, d)

    def move(x: Any, dims: tuple[int, int]) -> Any:
        x = torch.rot90(x, k, dims) if k else x
        return torch.flip(x, (dims[1],)) if flip else x

    grid = move(grid, (1, 2))
    tokens = torch.cat([tokens[:, :1], grid.reshape(b, side * side, d)], dim=1)
    if pixels is not None:
        pixels = move(pixels, (2, 3))
    if codes.ndim == 3:
        moved = move(torch.from_numpy(np.ascontiguousarray(codes)), (1, 2))
        codes = moved.contiguous().numpy()
    return tokens, pixels, codes


@dataclass
class TrainResult:
    """What :func:`train_head` found.

    Attributes:
        history: a dict per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``lr``,
            ``seconds`` and the validation scores of :func:`geofm.finetune.metrics.scores`.
        best_epoch: 1-based epoch kept: the best validation mean IoU (``keep="best"``)
            or the last one (``keep="last"``).
        best_state: the head's state dict at that epoch (CPU tensors).
        stopped_early: True if patience ran out before ``epochs``.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False

    @property
    def best(self) -> dict[str, Any]:
        """The history entry of the best epoch."""
        return self.history[self.best_epoch - 1]


def class_weights_from_counts(counts: np.ndarray, *, power: float = 1.0) -> np.ndarray:
    """Inverse-frequency weights [K] for code counts [K], mean 1 over present classes.

    Absent classes get weight 0 (they contribute no loss anyway); weights are clipped to
    at most 10x the mean so a handful of pixels cannot dominate.

    Args:
        counts: labelled pixels (or samples) per code.
        power: weights are ``(1 / frequency) ** power``: 1 is inverse frequency, 0.5 its
            square root (a milder correction: with a few labelled places a class of
            small inclusions would otherwise get 100x the weight of the classes around
            it and be predicted everywhere).
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = (counts[present].sum() / (present.sum() * counts[present])) ** power
    weights[present] /= weights[present].mean()
    return np.minimum(weights, 10.0)


def train_head(head: Any, source: TokenSource, targets: TargetSource, *,
               train_idx: Sequence[int] | np.ndarray, val_idx: Sequence[int] | np.ndarray,
               n_classes: int,
               epochs: int = 10, batch_size: int = 16, lr: float = 1e-3,
               weight_decay: float = 1e-2, class_weights: np.ndarray | None = None,
               patience: int | None = 3, seed: int = 0, device: str = "cpu",
               progress: bool = True, pixels: PixelSource | None = None,
               augment: bool = False,
               sample_weights: np.ndarray | None = None,
               epoch_samples: int | None = None, keep: str = "best") -> TrainResult:
    """Train ``head`` on tokens of ``train_idx`` samples, validating on ``val_idx``.

    Args:
        head: a :mod:`geofm.finetune.heads` module; logits over codes ``1..n_classes``.
        source: gives the (frozen) encoder tokens of a batch of sample indices.
        targets: gives the label codes of a batch (0 = ignore).
        train_idx: sample indices to train on.
        val_idx: sample indices to validate on (other locations).
        n_classes: number of codes.
        epochs: maximum number of epochs.
        batch_size: samples per step.
        lr: peak learning rate (AdamW), decayed by a cosine to 0 over all steps.
        weight_decay: AdamW weight decay.
        class_weights: float [n_classes] loss weight per code, or ``None``.
        patience: stop after this many epochs without a better validation mean IoU
            (``None``: never).
        seed: seeds the head's shuffling.
        device: torch device.
        progress: show progress bars.
        pixels: gives the bands (DN) of a batch; needed by heads with ``uses_pixels``.
        augment: apply a random rotation/mirror (:func:`dihedral`) to each training batch.
        sample_weights: float [len(train_idx)] drawing weight per training sample: each
            epoch draws ``len(train_idx)`` samples with replacement in proportion
            (class-balanced sampling); ``None`` visits every sample once, shuffled.
        epoch_samples: samples per epoch (default ``len(train_idx)``); more than the
            training set draws with replacement, so a few labelled chips still get enough
            optimisation steps (``epoch_samples / batch_size`` per epoch).
        keep: ``best`` (the epoch of the best validation mean IoU, with early stopping)
            or ``last`` (every epoch runs and the last is kept; ``patience`` is ignored).

    Returns:
        The :class:`TrainResult`.

    Raises:
        GeofmValueError: ``keep`` is neither ``best`` nor ``last``.
    """
    import torch
    from torch.nn import functional as F

    if keep not in ("best", "last"):
        raise GeofmValueError(f"keep must be 'best' or 'last', got {keep!r}")
    generator = torch.Generator().manual_seed(seed)
    head.to(device)
    train_arr, val_arr = np.asarray(train_idx), np.asarray(val_idx)
    per_epoch = max(len(train_arr), int(epoch_samples or 0))
    steps_per_epoch = max(1, int(np.ceil(per_epoch / batch_size)))
    optimiser = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser,
                                                          T_max=epochs * steps_per_epoch)
    weight = None if class_weights is None else torch.as_tensor(
        class_weights, dtype=torch.float32, device=device)

    def loss_of(logits: Any, codes: np.ndarray) -> Any:
        target = torch.from_numpy(codes.astype(np.int64) - 1).to(device)  # code 0 -> -1
        return F.cross_entropy(logits, target, weight=weight, ignore_index=-1)

    result = TrainResult()
    best_miou, stale = -1.0, 0
    epoch_bar = progress_bar(range(1, epochs + 1), desc="finetune", unit="epoch",
                             disable=not progress)
    if sample_weights is None and per_epoch > len(train_arr):
        sample_weights = np.ones(len(train_arr))
    draw = None if sample_weights is None else torch.as_tensor(
        np.asarray(sample_weights, dtype=np.float64))
    for epoch in epoch_bar:
        started = time.perf_counter()
        head.train()
        if draw is None:
            order = train_arr[torch.randperm(len(train_arr), generator=generator).numpy()]
        else:
            order = train_arr[torch.multinomial(draw, per_epoch, replacement=True,
                                                generator=generator).numpy()]
        total, seen = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2 and len(order) > 1:  # BatchNorm needs 2+ samples
                continue
            tokens, valid = source(idx)
            codes = targets(idx, valid)
            if not (codes != 0).any():
                continue
            bands = None if pixels is None else pixels(idx)
            if augment:
                turn = torch.randint(0, 8, (1,), generator=generator).item()
                tokens, bands, codes = dihedral(tokens, bands, codes, k=int(turn) % 4,
                                                flip=turn >= 4)
            loss = loss_of(run_head(head, tokens.to(device),
                                    None if bands is None else bands.to(device)), codes)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        val = evaluate(head, source, targets, val_arr, n_classes=n_classes,
                       batch_size=batch_size, device=device, loss_fn=loss_of, pixels=pixels)
        entry = {"epoch": epoch, "train_loss": total / max(seen, 1),
                 "lr": float(optimiser.param_groups[0]["lr"]),
                 "seconds": round(time.perf_counter() - started, 4), **val}
        result.history.append(entry)
        epoch_bar.set_postfix(loss=f"{entry['train_loss']:.3f}", miou=f"{val['mean_iou']:.3f}")
        if (val["mean_iou"] > best_miou) if keep == "best" else epoch == epochs:
            best_miou, stale = val["mean_iou"], 0
            result.best_epoch = epoch
            result.best_state = {k: v.detach().cpu().clone()
                                 for k, v in copy.deepcopy(head.state_dict()).items()}
        else:
            stale += 1
            if (keep == "best" and patience is not None and stale >= patience
                    and epoch < epochs):
                result.stopped_early = True
                break
    epoch_bar.close()
    return result


def predict_codes(head: Any, tokens: Any, pixels: Any = None) -> np.ndarray:
    """Predicted codes (argmax + 1): int64 [B, H, W] or [B] from tokens [B, 1+L, D].

    ``pixels`` (DN [B, C, H, W], torch) is passed to heads that use the bands.
    """
    import torch

    head.eval()
    with torch.inference_mode():
        return (run_head(head, tokens, pixels).argmax(dim=1) + 1).cpu().numpy()


def evaluate(head: Any, source: TokenSource, targets: TargetSource,
             indices: Sequence[int] | np.ndarray, *,
             n_classes: int, batch_size: int = 16, device: str = "cpu",
             loss_fn: Callable[[Any, np.ndarray], Any] | None = None,
             pixels: PixelSource | None = None) -> dict[str, Any]:
    """Validation scores (and mean loss) of ``head`` on samples ``indices``."""
    import torch

    head.eval()
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    total, seen = 0.0, 0
    index_arr = np.asarray(indices)
    with torch.inference_mode():
        for start in range(0, len(index_arr), batch_size):
            idx = index_arr[start:start + batch_size]
            tokens, valid = source(idx)
            codes = targets(idx, valid)
            bands = None if pixels is None else pixels(idx).to(device)
            logits = run_head(head, tokens.to(device), bands)
            cm += confusion_matrix((logits.argmax(dim=1) + 1).cpu().numpy(), codes, n_classes)
            if loss_fn is not None and (codes != 0).any():
                total += float(loss_fn(logits, codes)) * len(idx)
                seen += len(idx)
    out = scores(cm)
    out["val_loss"] = total / seen if seen else None
    out["confusion"] = cm.tolist()
    return out


def save_head(path: str | os.PathLike[str], state: dict[str, Any], config: dict[str, Any]) -> Path:
    """Write a head checkpoint ``{"state_dict", "config"}`` atomically (``torch.save``)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "config": config}, tmp)
    return Path(path)


def load_head(path: str | os.PathLike[str], *, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild a head from a checkpoint written by :func:`save_head`.

    The file is read with the safe loader of :mod:`geofm.model.safe_load` (never runs
    code from the file).

    Returns:
        ``(head in eval mode, config)``.

    Raises:
        GeofmFileNotFoundError: no such file.
        CheckpointError: not a geofm head checkpoint: unreadable, truncated, pickling
            objects the safe loader refuses, or of another layout.
    """
    from geofm.finetune.heads import build_head
    from geofm.model.safe_load import load_torch_file

    path = Path(path)
    if not path.is_file():
        raise GeofmFileNotFoundError(f"head checkpoint {path} does not exist; train one with "
                                     "`geofm finetune --out DIR` (it writes DIR/best.pt)")
    retrain = "Re-run `geofm finetune --out DIR` and pass the DIR/best.pt it writes."
    blob = load_torch_file(path, what="head checkpoint",
                           fix_refused="A head written by `geofm finetune` holds only "
                                       f"tensors, numbers and strings. {retrain}",
                           fix_unreadable=retrain)
    try:
        config, state = blob["config"], blob["state_dict"]
        # heads on several encoder layers take D * n_layers features (``feature_dim``)
        options = dict(config.get("head_options", {}))
        options.setdefault("whiten", any(k.startswith("whitening.") for k in state))
        head = build_head(config["task"], dim=config.get("feature_dim", config["dim"]),
                          patch_size=config["patch_size"],
                          n_classes=config["n_classes"], **options)
        head.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable geofm head checkpoint ({exc}); "
                              "use the best.pt written by `geofm finetune`") from exc
    return head.to(device).eval(), config


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str], *,
                title: str = "") -> Path:
    """Write the training curves (losses; validation mIoU, macro F1, accuracy) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_loss, ax_score = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax_loss.plot(epochs, [np.nan if h["val_loss"] is None else h["val_loss"] for h in history],
                 marker="o", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_loss.legend()
    for key, label in (("mean_iou", "mean IoU"), ("macro_f1", "macro F1"),
                       ("pixel_accuracy", "accuracy")):
        ax_score.plot(epochs, [h[key] for h in history], marker="o", label=label)
    ax_score.set(xlabel="epoch", ylim=(0, 1), title="validation (held-out locations)")
    ax_score.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return Path(path)
