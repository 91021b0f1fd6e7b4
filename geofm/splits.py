"""Held-out splits by chip location, shared by ``finetune`` and ``pretrain``.

A location is a chip id (one place of the chip grid); every acquisition of a location
falls on the same side of the split, so validation measures generalisation to places the
model never saw, not to other dates of the same place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geofm.exceptions import GeofmValueError


def split_locations(locations: Sequence[str], *, val_fraction: float = 0.25,
                    seed: int = 0) -> tuple[list[str], list[str]]:
    """Seeded split of chip locations into train and validation (disjoint).

    Args:
        locations: chip ids (duplicates are collapsed).
        val_fraction: share of locations for validation (at least one, and at least one
            left for training).
        seed: random seed.

    Returns:
        ``(train_ids, val_ids)``, each sorted.
    """
    unique = sorted(set(locations))
    if not 0 < val_fraction < 1:
        raise GeofmValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(unique) < 2:
        raise GeofmValueError(f"need at least 2 chip locations to split train/validation, "
                              f"got {len(unique)}; chip a larger area")
    n_val = min(len(unique) - 1, max(1, int(round(val_fraction * len(unique)))))
    order = np.random.default_rng(seed).permutation(len(unique))
    val = sorted(unique[i] for i in order[:n_val])
    train = sorted(unique[i] for i in order[n_val:])
    return train, val
