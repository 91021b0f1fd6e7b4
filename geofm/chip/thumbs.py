"""RGB PNG thumbnails with one fixed linear stretch for the whole run, so dates compare.

Chips larger than :data:`THUMBNAIL_MAX_PX` are shrunk by a whole factor (block mean),
e.g. a 256 px chip gives a 128 px thumbnail: PNG encoding is otherwise the chip stage's
slowest step.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geofm.io import atomic_path

#: Longest thumbnail edge, pixels (chips are shrunk by a whole factor to fit).
THUMBNAIL_MAX_PX = 128

#: Harmonised Sentinel-2 L2A DN mapped to 0..255 (reflectance 0..0.3).
DEFAULT_STRETCH: dict[str, tuple[float, float]] = {"sentinel-2-l2a": (0.0, 3000.0),
                                                   "landsat-c2-l2": (7273.0, 18182.0),
                                                   "naip": (0.0, 255.0)}


def rgb_indices(bands: Sequence[str]) -> list[int]:
    """Indices of ``red, green, blue`` in ``bands``; falls back to the first band(s)."""
    if all(b in bands for b in ("red", "green", "blue")):
        return [list(bands).index(b) for b in ("red", "green", "blue")]
    return [0, 0, 0] if len(bands) < 3 else [0, 1, 2]


def to_rgb8(pixels: np.ndarray, indices: Sequence[int], stretch: tuple[float, float],
            *, nodata_mask: np.ndarray | None = None,
            max_px: int = THUMBNAIL_MAX_PX) -> np.ndarray:
    """Thumbnail uint8 [h, w, 3] from DN [C, H, W]: fixed linear stretch, nodata black.

    ``h = ceil(H / k)``, ``w = ceil(W / k)`` with ``k = ceil(max(H, W) / max_px)``: a
    block mean over k x k pixels (edge blocks use what they have).
    """
    lo, hi = stretch
    rgb = pixels[list(indices)].astype(np.float32)
    if nodata_mask is not None:
        rgb[:, nodata_mask] = lo
    factor = -(-max(rgb.shape[1:]) // max_px)
    if factor > 1:
        _, h, w = rgb.shape
        ph, pw = -h % factor, -w % factor
        if ph or pw:
            rgb = np.pad(rgb, ((0, 0), (0, ph), (0, pw)), mode="edge")
        rgb = rgb.reshape(3, rgb.shape[1] // factor, factor, rgb.shape[2] // factor,
                          factor).mean(axis=(2, 4))
    rgb8 = np.clip((rgb - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb8.transpose(1, 2, 0))


def write_png(path: str | os.PathLike[str], rgb: np.ndarray) -> Path:
    """Write uint8 [H, W, 3] as PNG atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb, mode="RGB").save(tmp, format="PNG", compress_level=1)
    return Path(path)
