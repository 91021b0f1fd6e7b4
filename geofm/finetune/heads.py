"""Light heads trained on top of the frozen encoder's tokens.

Both heads take the encoder output ``tokens`` float32 [B, 1+L, D] (CLS first, then
``L = (H/p) * (W/p)`` patch tokens in row-major order) and return logits over the
``n_classes`` label codes ``1..n_classes`` (logit ``k`` is code ``k + 1``; code 0 means
"no label" and is never predicted).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from geofm.exceptions import GeofmValueError, ShapeError

TASKS = ("segmentation", "classification")
#: Ridge added to the token covariance before whitening, relative to its largest
#: eigenvalue: directions weaker than this are scaled up at most ``1/sqrt(eps)`` = 100x.
#: Chosen on the fine-tuning benchmark (1e-3: 0.78, 1e-4: 0.80, 1e-5: 0.75 mean IoU;
#: ``benchmarks/results/finetune.md``).
WHITEN_EPS = 1e-4


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class TokenWhitening(nn.Module):
    """Fixed ZCA whitening of token features, fitted once on training tokens.

    Frozen-encoder tokens can carry most of their class information in directions whose
    variance is orders of magnitude below the dominant ones (a random-weight Clay encoder
    gives all bands nearly the same patch kernel, so band ratios survive only in such
    weak directions); per-channel normalisation cannot lift them, and gradient descent on
    so ill-conditioned inputs barely moves along them. Whitening decorrelates the
    channels and scales each principal direction to unit variance, with a ridge of
    ``eps`` times the largest eigenvalue so noise-level directions stay bounded.

    The mean and matrix are buffers (saved with the head, never trained). Until
    :meth:`fit` runs the module is the identity.

    Args:
        dim: feature width D.
        eps: ridge relative to the largest eigenvalue of the feature covariance.
    """

    mean: torch.Tensor
    matrix: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, dim: int, *, eps: float = WHITEN_EPS) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("matrix", torch.eye(dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor]) -> TokenWhitening:
        """Set the mean and whitening matrix from feature batches, each [N, D].

        Sums are accumulated in float64, so the batches can be streamed.

        Raises:
            ShapeError: a batch is not [N, D] or there are fewer than 2 feature vectors.
        """
        total = torch.zeros(self.dim, dtype=torch.float64)
        outer = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        count = 0
        for features in batches:
            if features.ndim != 2 or features.shape[-1] != self.dim:
                raise ShapeError(f"whitening features must be [N, D={self.dim}], "
                                 f"got {tuple(features.shape)}")
            rows = features.detach().to("cpu", torch.float64)
            total += rows.sum(dim=0)
            outer += rows.T @ rows
            count += rows.shape[0]
        if count < 2:
            raise ShapeError(f"whitening needs at least 2 feature vectors, got {count}")
        mean = total / count
        cov = (outer - count * torch.outer(mean, mean)) / (count - 1)
        values, vectors = torch.linalg.eigh(cov)
        values = values.clamp(min=0.0)
        ridge = self.eps * float(values.max()) or self.eps
        matrix = vectors @ torch.diag((values + ridge).rsqrt()) @ vectors.T
        self.mean.copy_(mean.to(self.mean.dtype))
        self.matrix.copy_(matrix.to(self.matrix.dtype))
        self.fitted.fill_(True)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whitened features, channels on axis 1: [B, D] or [B, D, h, w] -> same shape."""
        shape = (1, self.dim) + (1,) * (x.ndim - 2)
        centred = x - self.mean.view(shape)
        return torch.einsum("bd...,de->be...", centred, self.matrix)


class WhitenedHead(nn.Module):
    """A head whose input features may pass a :class:`TokenWhitening` first.

    Args:
        dim: width D of the features the whitening sees.
        whiten: build the whitening (else the features pass unchanged).
    """

    def __init__(self, dim: int, *, whiten: bool) -> None:
        super().__init__()
        self.whitening = TokenWhitening(dim) if whiten else None

    def whiten(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` through the whitening, if the head has one (channels on axis 1)."""
        return features if self.whitening is None else self.whitening(features)

    def whitening_inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """The features [N, D] the whitening sees for encoder tokens [B, 1+L, D]."""
        raise NotImplementedError

    def fit_whitening(self, token_batches: Iterable[torch.Tensor]) -> None:
        """Fit the whitening on training tokens, batches of [B, 1+L, D].

        Raises:
            GeofmValueError: the head was built with ``whiten=False``.
        """
        if self.whitening is None:
            raise GeofmValueError("this head has no whitening (built with whiten=False)")
        self.whitening.fit(self.whitening_inputs(t) for t in token_batches)


class SegmentationHead(WhitenedHead):
    """Per-pixel classifier on the patch-token grid (the shape of Clay's segmentor).

    Patch tokens [B, L, D] -> grid [B, D, H/p, W/p] -> (fixed whitening of the token
    channels, :class:`TokenWhitening`) -> (BatchNorm of the token channels) -> two 3x3
    conv + BatchNorm + ReLU blocks -> 1x1 conv to ``out_channels * p**2`` ->
    ``PixelShuffle(p)`` back to full resolution [B, out_channels, H, W] -> 3x3 conv to
    ``n_classes`` logits.

    Args:
        dim: encoder token width D.
        patch_size: encoder patch size p in pixels.
        n_classes: number of label codes (1..n_classes).
        hidden: channels of the two conv blocks.
        out_channels: channels per pixel after the pixel shuffle.
        input_norm: standardise the token channels (BatchNorm2d over D).
        whiten: whiten the token channels first; call :meth:`fit_whitening` on training
            tokens before training (it is the identity until then).
    """

    def __init__(self, dim: int, patch_size: int, n_classes: int, *, hidden: int = 128,
                 out_channels: int = 16, input_norm: bool = True, whiten: bool = True) -> None:
        super().__init__(dim, whiten=whiten)
        self.dim, self.patch_size, self.n_classes = dim, patch_size, n_classes
        self.input_norm = nn.BatchNorm2d(dim) if input_norm else nn.Identity()
        self.blocks = nn.Sequential(_conv_block(dim, hidden), _conv_block(hidden, hidden))
        self.expand = nn.Conv2d(hidden, out_channels * patch_size**2, 1)
        self.shuffle = nn.PixelShuffle(patch_size)
        self.classify = nn.Conv2d(out_channels, n_classes, 3, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits float32 [B, n_classes, H, W] from tokens [B, 1+L, D] (CLS dropped)."""
        grid = self.input_norm(self.whiten(tokens_to_grid(tokens, self.dim)))
        features = self.shuffle(self.expand(self.blocks(grid)))
        return self.classify(torch.relu(features))

    def whitening_inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """The patch tokens [B * L, D] (CLS left out: the head never sees it)."""
        return tokens_to_grid(tokens, self.dim).permute(0, 2, 3, 1).reshape(-1, self.dim)


class ClassificationHead(WhitenedHead):
    """Chip-level classifier: a small MLP on the CLS token or the mean patch token.

    Pooled vector [B, D] -> (fixed whitening, :class:`TokenWhitening`) -> LayerNorm ->
    Linear -> GELU -> Dropout -> Linear to ``n_classes`` logits.

    Args:
        dim: encoder token width D.
        n_classes: number of label codes (1..n_classes).
        pool: ``"cls"`` (token 0) or ``"mean"`` (mean of the patch tokens).
        hidden: width of the hidden layer.
        dropout: dropout before the last layer.
        whiten: whiten the pooled vector first; call :meth:`fit_whitening` on training
            tokens before training (it is the identity until then).
    """

    def __init__(self, dim: int, n_classes: int, *, pool: str = "mean", hidden: int = 256,
                 dropout: float = 0.1, whiten: bool = True) -> None:
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        super().__init__(dim, whiten=whiten)
        self.dim, self.n_classes, self.pool = dim, n_classes, pool
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits float32 [B, n_classes] from tokens [B, 1+L, D]."""
        return self.mlp(self.whiten(self.whitening_inputs(tokens)))

    def whitening_inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """The pooled vectors [B, D] (CLS token or mean patch token)."""
        if tokens.ndim != 3 or tokens.shape[-1] != self.dim:
            raise ShapeError(f"tokens must be [B, 1+L, D={self.dim}], got {tuple(tokens.shape)}")
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)


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
               **options: Any) -> WhitenedHead:
    """Make the head for ``task`` (``segmentation`` or ``classification``)."""
    if task == "segmentation":
        return SegmentationHead(dim, patch_size, n_classes, **options)
    if task == "classification":
        return ClassificationHead(dim, n_classes, **options)
    raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
