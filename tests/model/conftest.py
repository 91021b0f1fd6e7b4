"""Fixtures of the model tests: the vendored Clay reference checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def ckpt_path(reference_dir: Path) -> Path:
    """The tiny Clay-layout Lightning checkpoint of the reference fixtures."""
    return reference_dir / "clay_tiny.ckpt"


@pytest.fixture(scope="module")
def reference_ckpt(ckpt_path: Path) -> dict:
    """That checkpoint's contents (``state_dict``, ``hyper_parameters``)."""
    return torch.load(ckpt_path, map_location="cpu", weights_only=True)
