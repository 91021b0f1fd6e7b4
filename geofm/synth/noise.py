"""Seeded random streams and smooth (low-pass) noise fields for the synthetic scenes."""

from __future__ import annotations

import numpy as np


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """An independent random generator for one component of the scene.

    Each component (land cover, clouds of date ``i``, ...) gets its own stream keyed by
    ``(seed, *keys)``, so its values do not depend on what else was drawn before.

    Args:
        seed: the user's seed (>= 0).
        keys: non-negative integers naming the component.

    Returns:
        A ``numpy.random.Generator``.
    """
    return np.random.default_rng([seed, *keys])


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """A smooth random field, about zero mean and unit variance.

    White noise on a coarse lattice (one node every ``scale`` pixels) interpolated to
    ``shape`` with smoothstep weights (separable, so cheap).

    Args:
        rng: random generator.
        shape: output (rows, cols), pixels.
        scale: correlation length in pixels (>= 1).

    Returns:
        float32 [rows, cols].
    """
    rows, cols = shape
    scale = max(float(scale), 1.0)
    coarse = rng.standard_normal((int(np.ceil(rows / scale)) + 2,
                                  int(np.ceil(cols / scale)) + 2)).astype(np.float32)
    # A random sub-node phase avoids a visible lattice aligned with the raster.
    oy, ox = rng.random(2)
    y = np.arange(rows, dtype=np.float32) / scale + oy
    x = np.arange(cols, dtype=np.float32) / scale + ox
    iy, ix = y.astype(np.int64), x.astype(np.int64)
    wy = _smoothstep(y - iy.astype(np.float32))[:, None]
    wx = _smoothstep(x - ix.astype(np.float32))[None, :]
    along_y = coarse[iy] * (1 - wy) + coarse[iy + 1] * wy
    field = along_y[:, ix] * (1 - wx) + along_y[:, ix + 1] * wx
    # Smoothstep interpolation of unit-variance nodes has variance ~0.5 in the middle.
    field *= np.float32(1.0 / 0.72)
    return field.astype(np.float32, copy=False)


def fractal_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float,
                  *, octaves: int = 3, persistence: float = 0.5) -> np.ndarray:
    """Sum of :func:`smooth_noise` octaves (scale halves, weight times ``persistence``).

    Args:
        rng: random generator.
        shape: output (rows, cols), pixels.
        scale: correlation length of the coarsest octave, pixels.
        octaves: number of octaves.
        persistence: weight ratio between successive octaves.

    Returns:
        float32 [rows, cols], standardised to zero mean, unit standard deviation.
    """
    total = np.zeros(shape, np.float32)
    weight = 1.0
    for k in range(octaves):
        total += np.float32(weight) * smooth_noise(rng, shape, scale / 2**k)
        weight *= persistence
    total -= total.mean()
    std = float(total.std())
    if std > 0:
        total /= np.float32(std)
    return total


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Average non-overlapping ``factor`` x ``factor`` blocks of the last two axes.

    Args:
        array: [..., rows, cols] with rows and cols divisible by ``factor``.
        factor: block size in pixels (1 returns the input).

    Returns:
        float32 [..., rows / factor, cols / factor].
    """
    if factor == 1:
        return array.astype(np.float32, copy=False)
    *lead, rows, cols = array.shape
    blocks = array.reshape(*lead, rows // factor, factor, cols // factor, factor)
    return blocks.mean(axis=(-3, -1), dtype=np.float32)
