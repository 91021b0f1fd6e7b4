"""Light heads trained on top of the frozen encoder's tokens.

Both heads take the encoder output ``tokens`` float32 [B, 1+L, D] (CLS first, then
``L = (H/p) * (W/p)`` patch tokens in row-major order) and return logits over the
``n_classes`` label codes ``1..n_classes`` (logit ``k`` is code ``k + 1``; code 0 means
"no label" and is never predicted).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from geofm.exceptions import ShapeError

TASKS = ("segmentation", "classification")


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SegmentationHead(nn.Module):
    """Per-pixel classifier on the patch-token grid (the shape of Clay's segmentor).

    Patch tokens [B, L, D] -> grid [B, D, H/p, W/p] -> (BatchNorm of the token channels,
    which standardises frozen features whose useful variation is small next to a shared
    offset) -> two 3x3 conv + BatchNorm + ReLU
    blocks -> 1x1 conv to ``out_channels * p**2`` -> ``PixelShuffle(p)`` back to full
    resolution [B, out_channels, H, W] -> 3x3 conv to ``n_classes`` logits.

    Args:
        dim: encoder token width D.
        patch_size: encoder patch size p in pixels.
        n_classes: number of label codes (1..n_classes).
        hidden: channels of the two conv blocks.
        out_channels: channels per pixel after the pixel shuffle.
        input_norm: standardise the token channels first (BatchNorm2d over D).
    """

    def __init__(self, dim: int, patch_size: int, n_classes: int, *, hidden: int = 128,
                 out_channels: int = 16, input_norm: bool = True) -> None:
        super().__init__()
        self.dim, self.patch_size, self.n_classes = dim, patch_size, n_classes
        self.input_norm = nn.BatchNorm2d(dim) if input_norm else nn.Identity()
        self.blocks = nn.Sequential(_conv_block(dim, hidden), _conv_block(hidden, hidden))
        self.expand = nn.Conv2d(hidden, out_channels * patch_size**2, 1)
        self.shuffle = nn.PixelShuffle(patch_size)
        self.classify = nn.Conv2d(out_channels, n_classes, 3, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits float32 [B, n_classes, H, W] from tokens [B, 1+L, D] (CLS dropped)."""
        grid = self.input_norm(tokens_to_grid(tokens, self.dim))
        features = self.shuffle(self.expand(self.blocks(grid)))
        return self.classify(torch.relu(features))


class ClassificationHead(nn.Module):
    """Chip-level classifier: a small MLP on the CLS token or the mean patch token.

    Args:
        dim: encoder token width D.
        n_classes: number of label codes (1..n_classes).
        pool: ``"cls"`` (token 0) or ``"mean"`` (mean of the patch tokens).
        hidden: width of the hidden layer.
        dropout: dropout before the last layer.
    """

    def __init__(self, dim: int, n_classes: int, *, pool: str = "mean", hidden: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.dim, self.n_classes, self.pool = dim, n_classes, pool
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits float32 [B, n_classes] from tokens [B, 1+L, D]."""
        if tokens.ndim != 3 or tokens.shape[-1] != self.dim:
            raise ShapeError(f"tokens must be [B, 1+L, D={self.dim}], got {tuple(tokens.shape)}")
        vector = tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)
        return self.mlp(vector)


def tokens_to_grid(tokens: torch.Tensor, dim: int) -> torch.Tensor:
    """Drop CLS and reshape patch tokens [B, 1+L, D] to a grid [B, D, H/p, W/p].

    Raises:
        ShapeError: the width is not ``dim`` or L is not a square number.
    """
    if tokens.ndim != 3 or tokens.shape[-1] != dim:
        raise ShapeError(f"tokens must be [B, 1+L, D={dim}], got {tuple(tokens.shape)}")
    patches = tokens[:, 1:]
    n = patches.shape[1]
    side = math.isqrt(n)
    if side * side != n:
        raise ShapeError(f"dimension 'L' (patch tokens): {n} is not a square grid; "
                         "the segmentation head needs square chips")
    return patches.transpose(1, 2).reshape(tokens.shape[0], dim, side, side)


def build_head(task: str, *, dim: int, patch_size: int, n_classes: int,
               **options: Any) -> nn.Module:
    """Make the head for ``task`` (``segmentation`` or ``classification``)."""
    if task == "segmentation":
        return SegmentationHead(dim, patch_size, n_classes, **options)
    if task == "classification":
        return ClassificationHead(dim, n_classes, **options)
    raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
