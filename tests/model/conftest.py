"""Fixtures for the encoder tests: where the Clay reference files live.

The reference files (``clay_tiny.ckpt``, ``clay_tiny_cases.pt``,
``clay_encoder_state_dict_manifest.json``) are looked up in ``$GEOFM_CLAY_REFERENCE``,
then ``/work/shared/reference``, then ``<repo>/../shared/reference``; tests that need
them are skipped (with the reason) when none is found.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_CANDIDATES = [
    os.environ.get("GEOFM_CLAY_REFERENCE", ""),
    "/work/shared/reference",
    str(Path(__file__).resolve().parents[3] / "shared" / "reference"),
]


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Folder with the Clay reference checkpoint, cases and manifest."""
    for candidate in _CANDIDATES:
        if candidate and (Path(candidate) / "clay_tiny.ckpt").is_file():
            return Path(candidate)
    pytest.skip("Clay reference files not found; set GEOFM_CLAY_REFERENCE")
