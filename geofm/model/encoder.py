"""The Clay v1 / v1.5 encoder, written for inference.

Architecture (Clay-foundation/model ``claymodel/model.py`` ``Encoder``, run with
``mask_ratio=0`` and ``shuffle=False``, so no patch is dropped or reordered):

1. Dynamic patch embedding (DOFA): each band's centre wavelength (um) gets a 1-D sin/cos
   code of width 128, a two-layer residual GELU MLP (``fclayer``), then one post-norm
   transformer layer together with 128 learned weight tokens and a bias token
   (``weight_generator``). Linear heads turn the band tokens into a conv kernel
   [D, C, P, P] (scaled by 0.02) and the bias token into the conv bias [D].
2. Position encoding: 2-D sin/cos over the patch grid, width D - 8, frequencies scaled by
   the ground sampling distance (m); the last 8 channels are ``time`` then ``latlon``.
3. A CLS token is prepended; a pre-norm transformer (no qkv/out bias) with a final
   LayerNorm encodes the sequence.

Parameter names equal the upstream ``state_dict`` keys (without ``model.encoder.``), so
official checkpoints load with a strict key check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from geofm.exceptions import GeofmValueError, ShapeError
from geofm.model.identity import ModelIdentity
from geofm.model.presets import EncoderConfig

#: Width of the wavelength code and of the weight-generator tokens (Clay: 128).
WAVE_DIM = 128
#: Number of learned weight tokens in the weight generator (Clay: 128).
NUM_LATENT_TOKENS = 128
#: Heads and feed-forward width of the weight generator's transformer layer.
WAVE_HEADS = 4
WAVE_FF_DIM = 2048
#: Clay scales the generated conv kernel by this factor.
KERNEL_SCALE = 0.02
#: Datacube keys the encoder reads.
DATACUBE_KEYS = ("pixels", "time", "latlon", "gsd", "waves")


def sincos_1d(values: torch.Tensor, dim: int, *, temperature: float = 10000.0) -> torch.Tensor:
    """1-D sin/cos code of scalar values (Clay's wavelength encoding).

    Args:
        values: float [N], e.g. wavelengths in micrometres.
        dim: code width (even).
        temperature: frequency base.

    Returns:
        float32 [N, dim]: ``sin`` of every frequency, then ``cos``.
    """
    half = dim // 2
    omega = torch.arange(half, device=values.device) / (half - 1)
    omega = 1.0 / (temperature**omega)
    scaled = values.float()[:, None] * omega[None, :]
    return torch.cat((scaled.sin(), scaled.cos()), dim=1)


def sincos_2d_gsd(h: int, w: int, dim: int, gsd: torch.Tensor, *,
                  temperature: float = 10000.0) -> torch.Tensor:
    """2-D sin/cos position code of a patch grid, frequencies scaled by the GSD.

    Args:
        h: patch rows.
        w: patch columns.
        dim: code width (multiple of 4).
        gsd: scalar tensor, ground sampling distance in metres.
        temperature: frequency base.

    Returns:
        float32 [h * w, dim], row-major over the grid: ``sin(x), cos(x), sin(y), cos(y)``
        blocks of width ``dim // 4`` each (x = column index, y = row index).
    """
    if dim % 4:
        raise GeofmValueError(f"position code width {dim} is not a multiple of 4; "
                              "the encoder dim must be 8 plus a multiple of 4")
    device = gsd.device
    y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                          indexing="ij")
    quarter = dim // 4
    omega = torch.arange(quarter, device=device) / (quarter - 1)
    omega = 1.0 / (temperature ** (2 * omega / dim)) * (gsd.float() / 1.0)
    yy = y.flatten()[:, None] * omega[None, :]
    xx = x.flatten()[:, None] * omega[None, :]
    return torch.cat((xx.sin(), xx.cos(), yy.sin(), yy.cos()), dim=1).float()


class _PackedSelfAttention(nn.Module):
    """Multi-head self-attention with packed in-projection (``nn.MultiheadAttention`` names)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, E] (one unbatched sequence) -> [T, E]."""
        t, e = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(t, 3, self.heads, e // self.heads).permute(1, 2, 0, 3)
        out = F.scaled_dot_product_attention(q, k, v)  # [heads, T, d]
        return self.out_proj(out.transpose(0, 1).reshape(t, e))


class _WaveEncoderLayer(nn.Module):
    """Post-norm transformer layer (GELU, no dropout), ``nn.TransformerEncoderLayer`` names."""

    def __init__(self, dim: int, heads: int, ff_dim: int) -> None:
        super().__init__()
        self.self_attn = _PackedSelfAttention(dim, heads)
        self.linear1 = nn.Linear(dim, ff_dim)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, E] -> [T, E]."""
        x = self.norm1(x + self.self_attn(x))
        return self.norm2(x + self.linear2(F.gelu(self.linear1(x))))


class _WaveEncoder(nn.Module):
    """Stack of :class:`_WaveEncoderLayer` (``nn.TransformerEncoder`` names)."""

    def __init__(self, dim: int, heads: int, ff_dim: int, num_layers: int = 1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [_WaveEncoderLayer(dim, heads, ff_dim) for _ in range(num_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, E] -> [T, E]."""
        for layer in self.layers:
            x = layer(x)
        return x


class WeightGenerator(nn.Module):
    """Turns band tokens into a conv kernel and bias (DOFA's waves transformer)."""

    def __init__(self, *, wave_dim: int, embed_dim: int, patch_size: int,
                 num_latent_tokens: int) -> None:
        super().__init__()
        self.num_latent_tokens = num_latent_tokens
        self.encoder = _WaveEncoder(wave_dim, WAVE_HEADS, WAVE_FF_DIM)
        self.fc_weight = nn.Linear(wave_dim, patch_size * patch_size * embed_dim)
        self.fc_bias = nn.Linear(wave_dim, embed_dim)
        self.weight_tokens = nn.Parameter(torch.empty(num_latent_tokens, wave_dim))
        self.bias_token = nn.Parameter(torch.empty(1, wave_dim))

    def forward(self, bands: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """bands: [C, wave_dim] -> (weights [C, P*P*D], bias [D])."""
        tokens = torch.cat([self.weight_tokens, bands, self.bias_token], dim=0)
        out = self.encoder(tokens)
        n = self.num_latent_tokens
        weights = self.fc_weight(out[n:-1] + tokens[n:-1])
        bias = self.fc_bias(out[-1])
        return weights, bias


class FCBlock(nn.Module):
    """Residual two-layer GELU MLP applied to the wavelength codes."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(size, size)
        self.l2 = nn.Linear(size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [C, size] -> [C, size]."""
        return x + F.gelu(self.l2(F.gelu(self.l1(x))))


class DynamicEmbedding(nn.Module):
    """Wavelength-conditioned patch embedding: any band set -> [B, L, D] patch tokens."""

    def __init__(self, *, embed_dim: int, patch_size: int, wave_dim: int = WAVE_DIM,
                 num_latent_tokens: int = NUM_LATENT_TOKENS) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.wave_dim = wave_dim
        self.weight_generator = WeightGenerator(
            wave_dim=wave_dim, embed_dim=embed_dim, patch_size=patch_size,
            num_latent_tokens=num_latent_tokens)
        self.fclayer = FCBlock(wave_dim)

    def kernel(self, waves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv kernel and bias for bands with centre wavelengths ``waves``.

        Args:
            waves: float [C], micrometres.

        Returns:
            (kernel float [D, C, P, P] already scaled by 0.02, bias float [D]).
        """
        codes = self.fclayer(sincos_1d(waves, self.wave_dim))
        weights, bias = self.weight_generator(codes)
        p = self.patch_size
        kernel = weights.view(weights.shape[0], self.embed_dim, p, p).transpose(0, 1)
        return kernel * KERNEL_SCALE, bias

    def forward(self, pixels: torch.Tensor, waves: torch.Tensor) -> torch.Tensor:
        """pixels: float [B, C, H, W] normalised, waves: [C] um -> tokens [B, L, D]."""
        kernel, bias = self.kernel(waves)
        out = F.conv2d(pixels, kernel, bias=bias, stride=self.patch_size)  # [B, D, h, w]
        return out.flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention without qkv/out bias."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D] -> [B, N, D] (residual not included)."""
        b, n, _ = x.shape
        qkv = self.to_qkv(self.norm(x)).view(b, n, 3, self.heads, self.dim_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, N, dim_head]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class FeedForward(nn.Module):
    """Pre-norm GELU MLP (``net`` = LayerNorm, Linear, GELU, Linear)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D] -> [B, N, D] (residual not included)."""
        return self.net(x)


class Transformer(nn.Module):
    """Pre-norm transformer: ``layers[i] = [Attention, FeedForward]``, final LayerNorm."""

    def __init__(self, *, dim: int, depth: int, heads: int, dim_head: int,
                 mlp_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            [nn.ModuleList([Attention(dim, heads, dim_head), FeedForward(dim, mlp_dim)])
             for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D] -> [B, N, D]."""
        for block in self.layers:
            attn, ff = cast(nn.ModuleList, block)
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


class ClayEncoder(nn.Module):
    """Clay v1 / v1.5 encoder (:meth:`forward`: no masking, no shuffling).

    :meth:`forward_masked` is the masked-autoencoder form used by ``geofm pretrain``.

    Build one with :func:`geofm.model.load_encoder`; it sets the identity attributes.

    Attributes:
        config: the sizes (:class:`EncoderConfig`).
        dim: token width D.
        patch_size: patch side P, pixels.
        preset: preset name (``"custom"`` for explicit sizes).
        random_init: True when the weights are random (testing only).
        identity: :class:`~geofm.model.identity.ModelIdentity` (checkpoint, sha256, preset,
            random_init, seed and sizes; set by the loader).
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.dim = config.dim
        self.patch_size = config.patch_size
        self.preset = config.name
        self.random_init = False
        self.identity = ModelIdentity.from_config(config, random_init=False)
        if config.dim <= 8 or (config.dim - 8) % 4:
            raise GeofmValueError(f"encoder dim {config.dim} must be 8 plus a multiple of 4 "
                                  "(8 channels carry time and location)")
        self.cls_token = nn.Parameter(torch.empty(1, 1, config.dim))
        self.patch_embedding = DynamicEmbedding(embed_dim=config.dim,
                                                patch_size=config.patch_size)
        self.transformer = Transformer(dim=config.dim, depth=config.depth, heads=config.heads,
                                       dim_head=config.dim_head, mlp_dim=config.mlp_dim)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random initialisation like Clay's (uses the global torch RNG)."""
        nn.init.normal_(self.cls_token, std=0.02)
        wg = self.patch_embedding.weight_generator
        nn.init.normal_(wg.weight_tokens, std=0.02)
        nn.init.normal_(wg.bias_token, std=0.02)
        for module in wg.encoder.modules():
            if isinstance(module, _PackedSelfAttention):
                nn.init.xavier_uniform_(module.in_proj_weight)
                nn.init.zeros_(module.in_proj_bias)
        for module in self.patch_embedding.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        for module in self.transformer.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.reset_parameters()

    def _prepare(self, datacube: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Check the datacube; return its metadata as float32 tensors on the pixels' device."""
        missing = [k for k in DATACUBE_KEYS if k not in datacube]
        if missing:
            raise GeofmValueError(f"datacube lacks key(s) {', '.join(missing)}; it needs "
                                  f"{', '.join(DATACUBE_KEYS)} (see geofm.model.make_datacube)")
        pixels = datacube["pixels"]
        if not isinstance(pixels, torch.Tensor):
            raise GeofmValueError(f"datacube pixels must be a torch.Tensor, got "
                                  f"{type(pixels).__name__}")
        cube = {k: torch.as_tensor(datacube[k], dtype=torch.float32, device=pixels.device)
                for k in ("time", "latlon", "gsd", "waves")}
        cube["pixels"] = pixels
        if pixels.ndim != 4:
            raise ShapeError(f"pixels must be [batch, band, y, x], got shape "
                             f"{tuple(pixels.shape)}")
        b, c, h, w = pixels.shape
        p = self.patch_size
        if h % p or w % p:
            raise ShapeError(f"chip size y={h}, x={w} is not a multiple of the patch size {p}; "
                             "crop or pad the chips")
        if cube["waves"].shape != (c,):
            raise ShapeError(f"waves has shape {tuple(cube['waves'].shape)} but pixels "
                             f"have band={c}; give one wavelength per band")
        if cube["gsd"].ndim != 0:
            raise ShapeError(f"gsd must be a scalar (metres), got shape "
                             f"{tuple(cube['gsd'].shape)}")
        for key in ("time", "latlon"):
            if tuple(cube[key].shape) != (b, 4):
                raise ShapeError(f"{key} has shape {tuple(cube[key].shape)}, expected "
                                 f"[batch={b}, 4]")
        return cube

    def forward(self, datacube: Mapping[str, Any]) -> torch.Tensor:
        """Encode a batch of chips.

        Args:
            datacube: ``pixels`` float32 [B, C, H, W] normalised; ``time`` float [B, 4]
                (sin/cos of week, sin/cos of hour); ``latlon`` float [B, 4] (sin/cos of
                latitude, sin/cos of longitude); ``gsd`` scalar tensor, metres; ``waves``
                float [C], micrometres. H and W are multiples of ``patch_size``.

        Returns:
            float32 [B, 1 + L, D]: the CLS token first, then the L = (H/P)(W/P) patch
            tokens in row-major grid order.
        """
        patches = self.encoded_patches(self._prepare(datacube))
        b = patches.shape[0]
        tokens = torch.cat((self.cls_token.expand(b, -1, -1).to(patches.dtype), patches), dim=1)
        return self.transformer(tokens).float()

    def encoded_patches(self, cube: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Patch tokens plus their position/time/location encoding, before the transformer.

        Args:
            cube: a checked datacube (see :meth:`forward`).

        Returns:
            [B, L, D] in row-major grid order: the dynamic patch embedding plus the
            GSD-scaled 2-D sin/cos position code (first D - 8 channels) and the time and
            latlon codes (last 8 channels).
        """
        pixels = cube["pixels"]
        b, _, h, w = pixels.shape
        patches = self.patch_embedding(pixels, cube["waves"])  # [B, L, D]
        p = self.patch_size
        pos = sincos_2d_gsd(h // p, w // p, self.dim - 8, cube["gsd"])  # [L, D - 8]
        meta = torch.cat((cube["time"], cube["latlon"]), dim=1)  # [B, 8]
        encoding = torch.cat((pos.expand(b, -1, -1),
                              meta[:, None, :].expand(-1, pos.shape[0], -1)), dim=-1)
        return patches + encoding

    def forward_masked(self, datacube: Mapping[str, Any], keep: torch.Tensor) -> torch.Tensor:
        """Encode only the visible patches of each chip (masked-autoencoder training).

        The patches are embedded and position-encoded exactly as in :meth:`forward`,
        then only the ``keep`` ones (and the CLS token) enter the transformer, so the
        masked patches' pixels cannot reach the output. With every patch kept, in grid
        order, the result equals :meth:`forward`.

        Args:
            datacube: as for :meth:`forward`.
            keep: int64 [B, K], indices (row-major, in [0, L)) of the visible patches of
                each chip; the same K for every chip.

        Returns:
            float32 [B, 1 + K, D]: the CLS token, then the visible patches in ``keep``
            order.

        Raises:
            ShapeError: ``keep`` is not [B, K] with indices in [0, L).
        """
        patches = self.encoded_patches(self._prepare(datacube))
        b, n, d = patches.shape
        if keep.ndim != 2 or keep.shape[0] != b:
            raise ShapeError(f"keep has shape {tuple(keep.shape)}, expected [batch={b}, K]")
        if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= n):
            raise ShapeError(f"keep holds patch indices outside [0, {n}); the chips have "
                             f"{n} patches")
        visible = torch.gather(patches, 1, keep.to(patches.device)[:, :, None].expand(-1, -1, d))
        tokens = torch.cat((self.cls_token.expand(b, -1, -1).to(visible.dtype), visible), dim=1)
        return self.transformer(tokens).float()

    def extra_repr(self) -> str:
        """Sizes shown by ``print(module)``."""
        c = self.config
        return (f"preset={c.name}, dim={c.dim}, depth={c.depth}, heads={c.heads}, "
                f"dim_head={c.dim_head}, mlp_ratio={c.mlp_ratio}, patch_size={c.patch_size}")

