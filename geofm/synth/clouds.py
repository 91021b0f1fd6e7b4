"""Clouds, cloud shadows, thin cirrus and partial-swath nodata for each acquisition.

Per date, on the 10 m canvas: a cloud opacity field (thresholded low-pass noise, so
clouds are smooth blobs), a shadow field (the cloud field displaced towards the
north-west, away from the late-morning sun), and sometimes thin cirrus. The SCL layer
is derived from the same fields aggregated to 20 m.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geofm.sensors import SCL_CIRRUS, SCL_CLOUD_HIGH, SCL_CLOUD_MEDIUM, SCL_CLOUD_SHADOW
from geofm.synth.noise import fractal_noise, rng_for

#: Share of dates that are fully overcast / clear or almost clear.
P_OVERCAST, P_CLEAR = 0.1, 0.42
#: Share of dates with a partial swath (a diagonal nodata edge) and with thin cirrus.
P_SWATH, P_CIRRUS = 0.15, 0.2
#: SCL thresholds on the 20 m mean opacity.
HIGH_OPACITY, MEDIUM_OPACITY, CIRRUS_OPACITY, SHADOW_STRENGTH = 0.7, 0.3, 0.3, 0.5
#: Largest cloud opacity under which a shaded pixel is classed as shadow.
SHADOW_MAX_OPACITY = 0.05
#: Shadow darkening at full shadow strength (multiplies the surface).
SHADOW_DARKENING = 0.65

_KEY_SCHEDULE, _KEY_FIELD, _KEY_SWATH = 21, 22, 23


@dataclass(frozen=True)
class DateSky:
    """Sky state of one acquisition.

    Attributes:
        amount: target cloud share (0..1) of the canvas.
        cirrus: whether thin cirrus is present.
        swath: nodata share of the canvas beyond a diagonal edge (0: full swath).
    """

    amount: float
    cirrus: bool
    swath: float


def schedule(seed: int, n_dates: int) -> list[DateSky]:
    """Draw the sky of every date: clear, partly cloudy or overcast; swath; cirrus."""
    rng = rng_for(seed, _KEY_SCHEDULE)
    out = []
    for _ in range(n_dates):
        u = rng.random()
        if u < P_OVERCAST:
            amount = 1.0
        elif u < P_OVERCAST + P_CLEAR:
            amount = 0.0 if rng.random() < 0.6 else float(rng.uniform(0.005, 0.03))
        else:
            amount = float(rng.uniform(0.05, 0.8))
        cirrus = bool(rng.random() < P_CIRRUS) and amount < 1.0
        swath = float(rng.uniform(0.2, 0.6)) if rng.random() < P_SWATH else 0.0
        out.append(DateSky(amount=amount, cirrus=cirrus, swath=swath))
    return out


@dataclass(frozen=True)
class SkyFields:
    """Per-pixel sky fields on the 10 m canvas, each float32 [rows, cols] in [0, 1].

    Attributes:
        opacity: cloud opacity (1 = thick cloud).
        shadow: shadow strength on the ground.
        cirrus: thin-cirrus opacity.
        brightness: relative brightness of the cloud tops (around 1).
    """

    opacity: np.ndarray
    shadow: np.ndarray
    cirrus: np.ndarray
    brightness: np.ndarray


def sky_fields(sky: DateSky, shape: tuple[int, int], *, seed: int, index: int,
               chip_size: int) -> SkyFields:
    """Cloud, shadow and cirrus fields of date ``index`` on a canvas of ``shape``."""
    rows, cols = shape
    zeros = np.zeros(shape, np.float32)
    if sky.amount <= 0 and not sky.cirrus:
        return SkyFields(zeros, zeros, zeros, zeros + 1)
    rng = rng_for(seed, _KEY_FIELD, index)
    scale = max(16.0, 1.5 * chip_size)
    dy, dx = (int(v) for v in rng.integers(max(3, chip_size // 8), max(6, chip_size // 3), 2))
    big = fractal_noise(rng, (rows + dy, cols + dx), scale, octaves=4)
    brightness = (1.0 + 0.06 * big[:rows, :cols]).astype(np.float32)
    if sky.amount >= 1.0:
        opacity = np.clip(0.93 + 0.07 * big, 0.0, 1.0)
    elif sky.amount > 0:
        threshold = np.quantile(big[:rows, :cols], 1.0 - sky.amount)
        opacity = np.clip(0.5 + (big - threshold) / 0.6, 0.0, 1.0)
    else:
        opacity = np.zeros_like(big)
    cloud = opacity[:rows, :cols].astype(np.float32)
    # The ground at p is shaded by the cloud at p + (dy, dx) (south-east of it).
    shadow = (opacity[dy:dy + rows, dx:dx + cols] * (1.0 - cloud)).astype(np.float32)
    cirrus = zeros
    if sky.cirrus:
        c = fractal_noise(rng, shape, 2 * scale, octaves=2)
        cirrus = np.clip((c - 0.2) / 1.5, 0.0, 0.6).astype(np.float32)
    return SkyFields(opacity=cloud, shadow=shadow, cirrus=cirrus, brightness=brightness)


def swath_mask(sky: DateSky, shape: tuple[int, int], factor: int, *, seed: int,
               index: int) -> np.ndarray | None:
    """Nodata mask of a partial swath on the canvas grid of block ``factor`` (1, 2, 6).

    The edge is one straight diagonal line in canvas coordinates, identical for every
    resolution (tested on pixel centres), so all bands lose the same ground.

    Returns:
        bool [rows / factor, cols / factor] (True = nodata), or None for a full swath.
    """
    if sky.swath <= 0:
        return None
    rng = rng_for(seed, _KEY_SWATH, index)
    angle = rng.uniform(np.pi / 9, 4 * np.pi / 9) + np.pi / 2 * rng.integers(4)
    ny, nx = np.sin(angle), np.cos(angle)
    rows, cols = shape

    def projection(f: int) -> np.ndarray:
        y = (np.arange(rows // f) + 0.5) * f
        x = (np.arange(cols // f) + 0.5) * f
        return ny * y[:, None] + nx * x[None, :]

    cut = np.quantile(projection(1), 1.0 - sky.swath)
    return projection(factor) > cut


def scl_clouds(opacity20: np.ndarray, shadow20: np.ndarray, cirrus20: np.ndarray,
               clear: np.ndarray) -> np.ndarray:
    """SCL codes on the 20 m grid from 20 m mean sky fields and the clear-sky codes.

    Order of precedence: high cloud (9), medium cloud (8), cirrus (10), shadow (3),
    else the clear code. Nodata is applied by the caller.
    """
    scl = clear.copy()
    scl[(shadow20 > SHADOW_STRENGTH) & (opacity20 < SHADOW_MAX_OPACITY)] = SCL_CLOUD_SHADOW
    scl[cirrus20 > CIRRUS_OPACITY] = SCL_CIRRUS
    scl[opacity20 > MEDIUM_OPACITY] = SCL_CLOUD_MEDIUM
    scl[opacity20 > HIGH_OPACITY] = SCL_CLOUD_HIGH
    return scl
