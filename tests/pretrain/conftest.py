"""Fixtures for the pretrain tests: a writable chipped root and tiny model sizes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from geofm.model.presets import EncoderConfig
from geofm.pretrain.mae import DecoderConfig

#: A depth-1 encoder and decoder: the mechanics, fast on a CPU.
SMALL_ENCODER = EncoderConfig(dim=32, depth=1, heads=2, dim_head=16, mlp_ratio=2, name="custom")
SMALL_DECODER = DecoderConfig(dim=32, depth=1, heads=2, dim_head=16, mlp_ratio=2)


@pytest.fixture
def root(chipped_root: Path, tmp_path: Path) -> Path:
    """A private copy of the session's chipped synthetic root (4 chip locations)."""
    dst = tmp_path / "root"
    shutil.copytree(chipped_root, dst)
    return dst


@pytest.fixture
def small() -> dict:
    """Keyword arguments of a fast :func:`geofm.pretrain.pretrain` run."""
    return dict(model=SMALL_ENCODER, decoder=SMALL_DECODER, batch_size=8, progress=False,
                lr=1e-3, seed=0)
