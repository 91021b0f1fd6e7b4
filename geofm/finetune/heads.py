"""Light heads trained on top of the frozen encoder's tokens.

Every head takes the encoder output ``tokens`` float32 [B, 1+L, D] (CLS first, then
``L = (H/p) * (W/p)`` patch tokens in row-major order) and returns logits over the
``n_classes`` label codes ``1..n_classes`` (logit ``k`` is code ``k + 1``; code 0 means
"no label" and is never predicted). Heads with ``uses_pixels = True``
(:class:`UNetHead`, and :class:`ClassificationHead` with ``pixel_stats``) also take the
chip's bands ``pixels`` float32 [B, C, H, W] in DN (harmonised L2A: reflectance x 10000),
normalised inside the head by a fixed :class:`PixelNorm` fitted on the training split.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from geofm.exceptions import GeofmValueError, ShapeError

TASKS = ("segmentation", "classification")
#: Segmentation decoders: ``unet`` (:class:`UNetHead`, tokens + full-resolution bands,
#: the default of ``geofm finetune``) and ``shuffle`` (:class:`SegmentationHead`, tokens
#: only; heads written before the option was added).
DECODERS = ("unet", "shuffle")
#: Ridge added to the token covariance before whitening, relative to its largest
#: eigenvalue: directions weaker than this are scaled up at most ``1/sqrt(eps)`` = 100x.
#: Chosen on the fine-tuning benchmark (1e-3: 0.78, 1e-4: 0.80, 1e-5: 0.75 mean IoU;
#: ``benchmarks/results/finetune.md``).
WHITEN_EPS = 1e-4


def _conv_block(c_in: int, c_out: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def log_reflectance(pixels: torch.Tensor) -> torch.Tensor:
    """Natural log of reflectance from DN (``DN / 10000``, DN clipped to >= 1): same shape."""
    return torch.log(pixels.clamp(min=1.0) / 10000.0)


class PixelNorm(nn.Module):
    """Fixed per-band standardisation of log reflectance, fitted once on training chips.

    ``forward(DN [B, C, H, W]) -> (log(DN / 10000) - mean) / std`` per band. The mean and
    std are buffers (saved with the head, never trained); until :meth:`fit` runs they are
    0 and 1.

    Args:
        bands: number of bands C.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, bands: int) -> None:
        super().__init__()
        self.bands = bands
        self.register_buffer("mean", torch.zeros(bands))
        self.register_buffer("std", torch.ones(bands))

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor]) -> PixelNorm:
        """Set mean/std from DN batches [B, C, H, W] (float64 sums, streamed).

        Raises:
            ShapeError: a batch is not [B, C, H, W] with C = ``bands``, or no pixel.
        """
        total = torch.zeros(self.bands, dtype=torch.float64)
        square = torch.zeros(self.bands, dtype=torch.float64)
        count = 0
        for pixels in batches:
            if pixels.ndim != 4 or pixels.shape[1] != self.bands:
                raise ShapeError(f"pixels must be [B, C={self.bands}, H, W], "
                                 f"got {tuple(pixels.shape)}")
            logs = log_reflectance(pixels.detach().to("cpu", torch.float64))
            total += logs.sum(dim=(0, 2, 3))
            square += (logs**2).sum(dim=(0, 2, 3))
            count += logs.shape[0] * logs.shape[2] * logs.shape[3]
        if count < 2:
            raise ShapeError(f"pixel normalisation needs at least 2 pixels, got {count}")
        mean = total / count
        var = (square / count - mean**2).clamp(min=1e-12)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(var.sqrt().to(self.std.dtype))
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Standardised log reflectance float32 [B, C, H, W] of DN [B, C, H, W]."""
        if pixels.ndim != 4 or pixels.shape[1] != self.bands:
            raise ShapeError(f"pixels must be [B, C={self.bands}, H, W], "
                             f"got {tuple(pixels.shape)}")
        shape = (1, self.bands, 1, 1)
        return (log_reflectance(pixels) - self.mean.view(shape)) / self.std.view(shape)


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

    #: whether ``forward`` takes the chip's bands (``forward(tokens, pixels)``).
    uses_pixels = False

    def __init__(self, dim: int, *, whiten: bool) -> None:
        super().__init__()
        self.whitening = TokenWhitening(dim) if whiten else None
        self.pixel_norm: PixelNorm | None = None

    def fit_pixels(self, pixel_batches: Iterable[torch.Tensor]) -> None:
        """Fit the :class:`PixelNorm` on training chips, DN batches [B, C, H, W].

        Raises:
            GeofmValueError: the head does not use the bands.
        """
        if self.pixel_norm is None:
            raise GeofmValueError("this head does not use the bands (uses_pixels is False)")
        self.pixel_norm.fit(pixel_batches)

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

    Pooled vector [B, D] -> (fixed whitening, :class:`TokenWhitening`) -> (with
    ``pixel_stats``: concatenated with the per-band mean and standard deviation of the
    chip's normalised log reflectance, [B, 2C]) -> LayerNorm -> Linear -> GELU ->
    Dropout -> Linear to ``n_classes`` logits.

    Args:
        dim: encoder token width D.
        n_classes: number of label codes (1..n_classes).
        pool: ``"cls"`` (token 0) or ``"mean"`` (mean of the patch tokens).
        hidden: width of the hidden layer.
        dropout: dropout before the last layer.
        whiten: whiten the pooled vector first; call :meth:`fit_whitening` on training
            tokens before training (it is the identity until then).
        pixel_stats: number of bands C whose statistics join the pooled vector (0: none,
            the head takes tokens only); call :meth:`fit_pixels` before training.
    """

    def __init__(self, dim: int, n_classes: int, *, pool: str = "mean", hidden: int = 256,
                 dropout: float = 0.1, whiten: bool = True, pixel_stats: int = 0) -> None:
        if pool not in ("cls", "mean"):
            raise GeofmValueError(f"pool must be 'cls' or 'mean', got {pool!r}", name="pool",
                                  value=pool, allowed=("cls", "mean"))
        super().__init__(dim, whiten=whiten)
        self.dim, self.n_classes, self.pool = dim, n_classes, pool
        self.uses_pixels = pixel_stats > 0
        self.pixel_norm = PixelNorm(pixel_stats) if pixel_stats else None
        width = dim + 2 * pixel_stats
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, tokens: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits float32 [B, n_classes] from tokens [B, 1+L, D] (and DN [B, C, H, W])."""
        pooled = self.whiten(self.whitening_inputs(tokens))
        if self.pixel_norm is not None:
            if pixels is None:
                raise GeofmValueError("this classification head needs the chip's bands "
                                      "(built with pixel_stats); pass pixels")
            logs = self.pixel_norm(pixels)
            pooled = torch.cat([pooled, logs.mean(dim=(2, 3)), logs.std(dim=(2, 3))], dim=1)
        return self.mlp(pooled)

    def whitening_inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """The pooled vectors [B, D] (CLS token or mean patch token)."""
        if tokens.ndim != 3 or tokens.shape[-1] != self.dim:
            raise ShapeError(f"tokens must be [B, 1+L, D={self.dim}], got {tuple(tokens.shape)}")
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)


class UNetHead(WhitenedHead):
    """Light U-Net-style decoder: frozen tokens for context, the bands for boundaries.

    Token path (patch grid, h = H/p): patch tokens [B, D, h, w] -> (fixed whitening,
    :class:`TokenWhitening`) -> BatchNorm -> 1x1 conv + BN + ReLU to ``hidden`` -> 3x3
    conv block -> 1x1 conv to ``out_channels`` -> bilinear upsampling by ``p`` to
    [B, out_channels, H, W] (``align_corners=False``: token ``(i, j)`` sits at the centre of
    its patch, pixel ``(i*p + p/2, j*p + p/2)``).

    Skip path (full resolution, 10 m): bands DN [B, C, H, W] -> :class:`PixelNorm`
    (standardised log reflectance) -> two 3x3 conv blocks of ``out_channels``.

    Fusion: concatenation -> 3x3 conv block -> Dropout2d -> 1x1 conv to ``n_classes``
    logits [B, n_classes, H, W]. Every full-resolution layer sees 10 m pixels, so class
    boundaries follow the bands, not the patch grid.

    Per-pixel branch (``pixel_branch > 0``): 1x1 convolutions on the normalised bands,
    logits added to the fused (*context*) ones. With ``context_dropout`` p the context
    logits of a chip are dropped in training with probability p (so the branch must
    classify on its own) and scaled by ``1 - p`` in evaluation (their expectation in
    training): ``logits = branch + (1 - p) * context``.

    Args:
        dim: encoder token width D (times the number of layers fed).
        patch_size: encoder patch size p in pixels.
        n_classes: number of label codes (1..n_classes).
        bands: number of bands C of the skip path.
        hidden: channels of the token path.
        out_channels: channels of the full-resolution layers.
        dropout: Dropout2d before the classifier.
        input_norm: BatchNorm of the token channels.
        whiten: whiten the token channels first (call :meth:`fit_whitening`).
        token_dropout: in training, drop the whole token path of a chip with this
            probability (inverted-dropout scaling), so the skip path must classify on its
            own and the tokens cannot memorise the few labelled places.
        pixel_branch: width of a per-pixel classifier on the normalised bands (1x1
            convolutions: an MLP applied to every 10 m pixel on its own) whose logits are
            added to the fused ones; 0: none. It sees what the per-pixel baseline sees,
            so the head can match the baseline and the tokens only add context.
        context_dropout: with a pixel branch, probability of dropping a chip's context
            logits (token and 3x3 paths) in training; they are scaled by
            ``1 - context_dropout`` in evaluation. With a few labelled places the context
            paths fit the texture of the training blocks (``benchmarks/results/
            finetune.md``, issue 21); 0: always on, unscaled.
    """

    uses_pixels = True

    def __init__(self, dim: int, patch_size: int, n_classes: int, *, bands: int,
                 hidden: int = 128, out_channels: int = 16, dropout: float = 0.1,
                 input_norm: bool = True, whiten: bool = True,
                 token_dropout: float = 0.0, pixel_branch: int = 0,
                 context_dropout: float = 0.0) -> None:
        super().__init__(dim, whiten=whiten)
        if not 0.0 <= context_dropout < 1.0:
            raise GeofmValueError(f"context_dropout must be in [0, 1), got {context_dropout}; "
                                  "use e.g. 0.8 (the finetune default), or 0 to keep the "
                                  "context at full weight", name="context_dropout",
                                  value=context_dropout)
        if context_dropout > 0 and pixel_branch <= 0:
            raise GeofmValueError(f"context_dropout={context_dropout} needs a pixel branch "
                                  "(without it a dropped chip has no logits); pass "
                                  "pixel_branch > 0 (e.g. 32) or context_dropout=0",
                                  name="context_dropout", value=context_dropout)
        self.token_dropout = float(token_dropout)
        self.context_dropout = float(context_dropout)
        self.dim, self.patch_size, self.n_classes = dim, patch_size, n_classes
        self.pixel_norm = PixelNorm(bands)
        self.input_norm = nn.BatchNorm2d(dim) if input_norm else nn.Identity()
        self.tokens_in = _conv_block(dim, hidden, kernel=1)
        self.context = _conv_block(hidden, hidden)
        self.tokens_out = nn.Conv2d(hidden, out_channels, 1)
        self.skip = nn.Sequential(_conv_block(bands, out_channels),
                                  _conv_block(out_channels, out_channels))
        self.fuse = _conv_block(2 * out_channels, out_channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classify = nn.Conv2d(out_channels, n_classes, 1)
        self.pixel_branch = None if pixel_branch <= 0 else nn.Sequential(
            _conv_block(bands, pixel_branch, kernel=1),
            _conv_block(pixel_branch, pixel_branch, kernel=1),
            nn.Conv2d(pixel_branch, n_classes, 1))

    def forward(self, tokens: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits float32 [B, n_classes, H, W] from tokens [B, 1+L, D] and DN [B, C, H, W].

        Raises:
            ShapeError: the pixels are not ``p`` times the token grid.
            GeofmValueError: no pixels given.
        """
        from torch.nn import functional as F

        if pixels is None:
            raise GeofmValueError("the unet head needs the chip's bands; pass pixels")
        grid = self.input_norm(self.whiten(tokens_to_grid(tokens, self.dim)))
        h, w = grid.shape[-2:]
        if tuple(pixels.shape[-2:]) != (h * self.patch_size, w * self.patch_size):
            raise ShapeError(f"pixels are {tuple(pixels.shape[-2:])}, the tokens a {h}x{w} grid "
                             f"of {self.patch_size} px patches: expected "
                             f"{(h * self.patch_size, w * self.patch_size)}")
        # the 1x1 conv commutes with the (per-channel, linear) bilinear upsampling: apply
        # it on the patch grid, upsample only ``out_channels``
        context = self.tokens_out(self.context(self.tokens_in(grid)))
        context_px = F.interpolate(context, scale_factor=self.patch_size, mode="bilinear",
                                   align_corners=False)
        if self.training and self.token_dropout > 0:
            keep = (torch.rand(context_px.shape[0], 1, 1, 1, device=context_px.device)
                    >= self.token_dropout).to(context_px.dtype)
            context_px = context_px * keep / (1.0 - self.token_dropout)
        assert self.pixel_norm is not None
        bands = self.pixel_norm(pixels)
        fused = torch.cat([context_px, self.skip(bands)], dim=1)
        logits = self.classify(self.dropout(self.fuse(fused)))
        if self.pixel_branch is None:
            return logits
        if self.context_dropout > 0:
            if self.training:
                keep = (torch.rand(logits.shape[0], 1, 1, 1, device=logits.device)
                        >= self.context_dropout).to(logits.dtype)
                logits = logits * keep
            else:
                logits = logits * (1.0 - self.context_dropout)
        return logits + self.pixel_branch(bands)

    def whitening_inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """The patch tokens [B * L, D] (CLS left out: the head never sees it)."""
        return tokens_to_grid(tokens, self.dim).permute(0, 2, 3, 1).reshape(-1, self.dim)


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
    """Make the head for ``task`` (``segmentation`` or ``classification``).

    Segmentation options may name ``decoder`` (:data:`DECODERS`; default ``shuffle``,
    so head configs written before the option rebuild the head they were trained as);
    the ``unet`` decoder needs ``bands``.
    """
    if task == "segmentation":
        options = dict(options)
        decoder = options.pop("decoder", "shuffle")
        if decoder == "unet":
            return UNetHead(dim, patch_size, n_classes, **options)
        if decoder != "shuffle":
            raise GeofmValueError(f"unknown decoder {decoder!r}; use one of "
                                  f"{', '.join(DECODERS)}", name="decoder", value=decoder,
                                  allowed=tuple(DECODERS))
        return SegmentationHead(dim, patch_size, n_classes, **options)
    if task == "classification":
        return ClassificationHead(dim, n_classes, **options)
    raise GeofmValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}", name="task",
                          value=task, allowed=tuple(TASKS))
