"""Land cover of the synthetic scene: one dominant class per chip cell, with inclusions.

Classes (codes as in ``truth.json`` and the label raster; 0 is nodata)::

    1 forest   2 pasture   3 cropland   4 bare   5 water   6 urban
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geofm.synth.grid import Canvas
from geofm.synth.noise import fractal_noise, rng_for, smooth_noise

CLASSES: dict[int, str] = {1: "forest", 2: "pasture", 3: "cropland", 4: "bare", 5: "water",
                           6: "urban"}
FOREST, PASTURE, CROPLAND, BARE, WATER, URBAN = range(1, 7)
#: Share of each class when cells are filled at random (forest is also forced, below).
FILL_WEIGHTS = np.array([0.16, 0.24, 0.24, 0.08, 0.11, 0.17])
#: Minimum share of a cell's pixels that are its dominant class.
MIN_DOMINANT = 0.85
#: Target share of inclusion pixels (other classes) inside cells.
INCLUSION_SHARE = 0.07

_KEY_CELLS, _KEY_INCLUSIONS = 11, 12


@dataclass(frozen=True)
class LandCover:
    """Land cover on the canvas.

    Attributes:
        cell_class: uint8 [cell_rows, cell_cols], dominant class code per cell.
        class_map: uint8 [rows, cols], class code per 10 m canvas pixel (codes 1..6).
    """

    cell_class: np.ndarray
    class_map: np.ndarray


def min_forest_cells(n_events: int) -> int:
    """Forest cells the first tile needs: one per event plus one that never changes."""
    return n_events + 1 if n_events else 0


def assign_cells(canvas: Canvas, *, seed: int, n_events: int) -> np.ndarray:
    """Pick each cell's dominant class.

    Cells of the first tile get every class at least twice when there are >= 16 cells
    (once when >= 8), at least ``n_events + 1`` forest cells, and random classes for the
    rest; cells outside it are random.

    Returns:
        uint8 [cell_rows, cell_cols] class codes.
    """
    rng = rng_for(seed, _KEY_CELLS)
    n_rows, n_cols = canvas.cells
    out = rng.choice(np.arange(1, 7), size=(n_rows, n_cols), p=FILL_WEIGHTS).astype(np.uint8)
    first = canvas.tiles[0]
    t_rows = t_cols = first.size // canvas.chip_size
    n = t_rows * t_cols
    each = 2 if n >= 16 else 1 if n >= 8 else 0
    required = [FOREST] * max(min_forest_cells(n_events), round(0.25 * n) if each else 0)
    for code in CLASSES:
        required += [code] * max(0, each - required.count(code))
    required = required[:n]
    fill = rng.choice(np.arange(1, 7), size=n - len(required), p=FILL_WEIGHTS).tolist()
    classes = np.array(required + fill, dtype=np.uint8)
    rng.shuffle(classes)
    out[:t_rows, :t_cols] = classes.reshape(t_rows, t_cols)
    return out


def make_landcover(canvas: Canvas, *, seed: int, n_events: int) -> LandCover:
    """Cell classes plus a 10 m class map with small irregular inclusions.

    Inclusions are blobs of thresholded smooth noise (about 7 % of pixels) given another
    class; a cell whose dominant share would fall below 85 % keeps no inclusions.
    """
    cells = assign_cells(canvas, seed=seed, n_events=n_events)
    size = canvas.chip_size
    base = np.repeat(np.repeat(cells, size, axis=0), size, axis=1)
    rng = rng_for(seed, _KEY_INCLUSIONS)
    shape = base.shape
    blobs = fractal_noise(rng, shape, max(3.0, size / 6), octaves=3, persistence=0.6)
    mask = blobs > np.quantile(blobs, 1 - INCLUSION_SHARE)
    shift = np.clip((smooth_noise(rng, shape, size / 4) * 1.2 + 2.5).astype(np.int64), 0, 4) + 1
    other = ((base.astype(np.int64) - 1 + shift) % 6 + 1).astype(np.uint8)
    class_map = np.where(mask, other, base).astype(np.uint8)
    same = (class_map == base).reshape(cells.shape[0], size, cells.shape[1], size)
    share = same.mean(axis=(1, 3))
    bad = np.repeat(np.repeat(share < MIN_DOMINANT, size, axis=0), size, axis=1)
    class_map[bad] = base[bad]
    return LandCover(cell_class=cells, class_map=class_map[:canvas.rows, :canvas.cols])
