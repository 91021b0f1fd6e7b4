"""RGB PNG thumbnails with one fixed linear stretch for the whole run, so dates compare."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geofm.io import atomic_path

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
            *, nodata_mask: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W, 3] from DN [C, H, W] with a fixed linear stretch; nodata is black."""
    lo, hi = stretch
    rgb = pixels[list(indices)].astype(np.float32)
    rgb = np.clip((rgb - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    if nodata_mask is not None:
        rgb[:, nodata_mask] = 0
    return np.ascontiguousarray(rgb.transpose(1, 2, 0))


def write_png(path: str | os.PathLike[str], rgb: np.ndarray) -> Path:
    """Write uint8 [H, W, 3] as PNG atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb, mode="RGB").save(tmp, format="PNG", compress_level=3)
    return Path(path)
