"""Clay's masked-autoencoder objective: random patch masking, a light decoder, the loss.

Shapes (B chips, C bands, H x W pixels, P patch side, L = (H/P)(W/P) patches, K visible
patches, D encoder width, E decoder width):

- :func:`random_masking`: ``keep`` int64 [B, K] and ``masked`` int64 [B, L - K], each
  sorted, disjoint, together every patch index of the row-major grid.
- :func:`patchify`: normalised pixels float [B, C, H, W] -> float [B, L, C, P*P] (patch
  rows in the grid order of the encoder's tokens, pixels row-major in a patch).
- :class:`MaeDecoder`: encoder tokens [B, 1 + K, D] -> predicted normalised pixels
  float32 [B, L, C, P*P] for every patch. The visible tokens are projected to E, mask
  tokens fill the hidden places, a GSD-scaled 2-D sin/cos position code is added and a
  small pre-norm transformer (the encoder's own block) mixes them. Its output layer is
  wavelength-conditioned: the bands' centre wavelengths (um), sin/cos coded like the
  encoder's dynamic embedding, give each band its own linear map E -> P*P, so one
  decoder serves any band set and sees the same wavelengths as the encoder.
- :func:`masked_loss`: mean squared error over the masked patches only (every band and
  pixel of each hidden patch counts once); visible patches are not part of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from geofm.exceptions import GeofmValueError, ShapeError
from geofm.model.encoder import (
    WAVE_DIM,
    ClayEncoder,
    FCBlock,
    Transformer,
    sincos_1d,
    sincos_2d_gsd,
)

#: Clay's default share of hidden patches.
DEFAULT_MASK_RATIO = 0.75


@dataclass(frozen=True)
class DecoderConfig:
    """Sizes of the light decoder.

    Attributes:
        dim: token width E (a multiple of 4: the position code).
        depth: transformer blocks.
        heads: attention heads.
        dim_head: width of one head.
        mlp_ratio: feed-forward width as a multiple of ``dim``.
    """

    dim: int = 128
    depth: int = 2
    heads: int = 4
    dim_head: int = 32
    mlp_ratio: float = 2.0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (``decoder_`` names are added by the checkpoint writer)."""
        return asdict(self)


def check_mask_ratio(mask_ratio: float | str) -> float:
    """Validate a mask ratio: a share of hidden patches strictly between 0 and 1.

    Raises:
        GeofmValueError: outside (0, 1) or not a number.
    """
    try:
        value = float(mask_ratio)
    except (TypeError, ValueError):
        raise GeofmValueError(f"mask ratio {mask_ratio!r} is not a number; give a share "
                              "of hidden patches in (0, 1), e.g. 0.75") from None
    if not 0.0 < value < 1.0:
        raise GeofmValueError(f"mask ratio {value:g} is outside (0, 1): some patches must "
                              "be hidden and some visible; use e.g. --mask-ratio 0.75")
    return value


def visible_count(n_patches: int, mask_ratio: float) -> int:
    """Visible patches per chip: ``round(L * (1 - ratio))``, at least 1 and at most L - 1.

    Raises:
        ShapeError: a chip of a single patch (nothing to hide and see at once).
    """
    if n_patches < 2:
        raise ShapeError(f"a chip of {n_patches} patch(es) cannot be masked; pretraining "
                         "needs chips of at least 2 patches (chip size >= 2 x patch size)")
    k = int(round(n_patches * (1.0 - mask_ratio)))
    return min(n_patches - 1, max(1, k))


def random_masking(batch: int, n_patches: int, mask_ratio: float, *,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick each chip's visible and hidden patches uniformly at random.

    Args:
        batch: B.
        n_patches: L.
        mask_ratio: share of hidden patches, in (0, 1).
        generator: CPU generator (the only source of randomness).

    Returns:
        ``(keep, masked)``: int64 [B, K] and [B, L - K] on the CPU, each row sorted.
    """
    k = visible_count(n_patches, check_mask_ratio(mask_ratio))
    order = torch.rand(batch, n_patches, generator=generator).argsort(dim=1)
    keep = order[:, :k].sort(dim=1).values
    masked = order[:, k:].sort(dim=1).values
    return keep, masked


def patchify(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut chips into patches: [B, C, H, W] -> [B, L, C, P*P] (row-major grid).

    Raises:
        ShapeError: H or W is not a multiple of ``patch_size``.
    """
    b, c, h, w = pixels.shape
    p = patch_size
    if h % p or w % p:
        raise ShapeError(f"chip size y={h}, x={w} is not a multiple of the patch size {p}")
    x = pixels.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c, p * p)


def masked_loss(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hidden patches only.

    Args:
        pred: float [B, L, C, P*P] predicted normalised pixels.
        target: float [B, L, C, P*P] true normalised pixels.
        masked: int64 [B, M] hidden patch indices.

    Returns:
        float32 scalar: mean over the B*M hidden patches, their C bands and P*P pixels.
    """
    if pred.shape != target.shape:
        raise ShapeError(f"prediction has shape {tuple(pred.shape)} but target has "
                         f"{tuple(target.shape)}")
    idx = masked.to(pred.device)[:, :, None, None].expand(-1, -1, *pred.shape[2:])
    diff = torch.gather(pred.float(), 1, idx) - torch.gather(target.float(), 1, idx)
    return diff.pow(2).mean()


class MaeDecoder(nn.Module):
    """Light decoder: visible encoder tokens -> normalised pixels of every patch."""

    def __init__(self, *, encoder_dim: int, patch_size: int,
                 config: DecoderConfig | None = None) -> None:
        super().__init__()
        cfg = config or DecoderConfig()
        if cfg.dim % 4:
            raise GeofmValueError(f"decoder dim {cfg.dim} must be a multiple of 4 (its 2-D "
                                  "position code)")
        self.config = cfg
        self.patch_size = patch_size
        self.embed = nn.Linear(encoder_dim, cfg.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.transformer = Transformer(dim=cfg.dim, depth=cfg.depth, heads=cfg.heads,
                                       dim_head=cfg.dim_head,
                                       mlp_dim=int(cfg.dim * cfg.mlp_ratio))
        self.wave_fc = FCBlock(WAVE_DIM)
        # per band: an E x P*P weight and a P*P bias, generated from its wavelength code
        self.to_pixels = nn.Linear(WAVE_DIM, patch_size * patch_size * (cfg.dim + 1))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random initialisation (global torch RNG)."""
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor, *, grid: tuple[int, int],
                gsd: torch.Tensor, waves: torch.Tensor) -> torch.Tensor:
        """Predict every patch's pixels from the visible tokens.

        Args:
            tokens: float [B, 1 + K, D], :meth:`ClayEncoder.forward_masked`'s output.
            keep: int64 [B, K], the visible patch indices those tokens belong to.
            grid: ``(h, w)`` patch rows and columns (L = h * w).
            gsd: scalar tensor, metres.
            waves: float [C], band centre wavelengths in micrometres.

        Returns:
            float32 [B, L, C, P*P]: predicted normalised pixels.
        """
        b = tokens.shape[0]
        e = self.config.dim
        h, w = grid
        x = self.embed(tokens)
        full = self.mask_token.to(x.dtype).expand(b, h * w, e).clone()
        full = full.scatter(1, keep.to(x.device)[:, :, None].expand(-1, -1, e), x[:, 1:])
        full = full + sincos_2d_gsd(h, w, e, gsd).to(full.dtype)
        out = self.transformer(torch.cat((x[:, :1], full), dim=1))[:, 1:]  # [B, L, E]
        q = self.patch_size * self.patch_size
        codes = self.wave_fc(sincos_1d(waves, WAVE_DIM))  # [C, WAVE_DIM]
        head = self.to_pixels(codes).view(codes.shape[0], q, e + 1)
        pred = torch.einsum("ble,cqe->blcq", out, head[..., :e].to(out.dtype))
        return (pred + head[..., e].to(pred.dtype)).float()


class ClayMAE(nn.Module):
    """The encoder and its decoder; ``state_dict`` keys ``encoder.*`` and ``decoder.*``.

    Saved under ``model.`` this is the Lightning layout the loader reads
    (``model.encoder.*``; ``model.decoder.*`` ignored by ``embed``).
    """

    def __init__(self, encoder: ClayEncoder, decoder: MaeDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, cube: Mapping[str, Any], keep: torch.Tensor,
                masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruct the hidden patches of a datacube.

        Args:
            cube: the encoder's datacube (``pixels`` normalised float [B, C, H, W]).
            keep: int64 [B, K] visible patches.
            masked: int64 [B, L - K] hidden patches.

        Returns:
            ``(loss, pred)``: float32 scalar :func:`masked_loss` and the prediction
            float32 [B, L, C, P*P].
        """
        pixels = cube["pixels"]
        p = self.encoder.patch_size
        grid = (pixels.shape[2] // p, pixels.shape[3] // p)
        tokens = self.encoder.forward_masked(cube, keep)
        gsd = torch.as_tensor(cube["gsd"], dtype=torch.float32, device=pixels.device)
        waves = torch.as_tensor(cube["waves"], dtype=torch.float32, device=pixels.device)
        pred = self.decoder(tokens, keep, grid=grid, gsd=gsd, waves=waves)
        return masked_loss(pred, patchify(pixels, p), masked), pred
