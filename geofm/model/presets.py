"""Encoder sizes: Clay's named presets and the config object the encoder is built from."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from geofm.exceptions import GeofmValueError


@dataclass(frozen=True)
class EncoderConfig:
    """Sizes of a Clay encoder.

    Attributes:
        dim: token width D.
        depth: number of transformer blocks.
        heads: attention heads per block.
        dim_head: width of one head (inner attention width is ``heads * dim_head``).
        mlp_ratio: feed-forward hidden width as a multiple of ``dim``.
        patch_size: side of a square patch, pixels.
        name: preset name (``"custom"`` when the sizes came from elsewhere).
    """

    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_ratio: float
    patch_size: int = 8
    name: str = "custom"

    @property
    def mlp_dim(self) -> int:
        """Feed-forward hidden width (Clay: ``int(dim * mlp_ratio)``)."""
        return int(self.dim * self.mlp_ratio)

    def as_dict(self) -> dict[str, object]:
        """The sizes as a plain dict (for manifests)."""
        return asdict(self)


#: Clay's encoder sizes (``claymodel/model.py``: ``clay_mae_tiny`` ... ``clay_mae_large``).
#: ``base`` is Clay v1, ``large`` is Clay v1.5.
PRESETS: dict[str, EncoderConfig] = {
    "tiny": EncoderConfig(dim=192, depth=6, heads=4, dim_head=48, mlp_ratio=2, name="tiny"),
    "small": EncoderConfig(dim=384, depth=6, heads=6, dim_head=64, mlp_ratio=2, name="small"),
    "base": EncoderConfig(dim=768, depth=12, heads=12, dim_head=64, mlp_ratio=4, name="base"),
    "large": EncoderConfig(dim=1024, depth=24, heads=16, dim_head=64, mlp_ratio=4,
                           name="large"),
}


def get_preset(name: str) -> EncoderConfig:
    """Return the preset called ``name``; raise :class:`GeofmValueError` listing valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise GeofmValueError(
            f"unknown encoder preset {name!r}; valid presets: {', '.join(PRESETS)}"
        ) from None
