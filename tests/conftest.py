"""Shared fixtures: one tiny synthetic run, built lazily and shared by the session.

Each fixture builds on the previous one (synth -> chip -> embed) and is computed once
per test session, so stage tests reuse the same small, seeded data.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

#: Small but complete: 2 x 2 chips of 64 px, 14 dates that straddle the 2022-01-25
#: processing-baseline switch, one planted event.
SMALL_SYNTH = dict(seed=0, size=128, n_dates=14, start="2021-06-01", cadence_days=30,
                   n_events=1, chip_size=64)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic Sentinel-2 L2A time series (read-only: copy before changing)."""
    from geofm.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("synth") / "s2", **SMALL_SYNTH)


@pytest.fixture(scope="session")
def chipped_root(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run root after ``chip`` on :func:`synth_dir` (read-only: copy before changing)."""
    from geofm.chip import chip

    root = tmp_path_factory.mktemp("run") / "root"
    chip(synth_dir / "items", root, chip_size=64, max_cloud=0.05, progress=False)
    return root


@pytest.fixture(scope="session")
def embedded_root(chipped_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run root after ``embed`` with a random-weight tiny encoder (read-only)."""
    import warnings

    from geofm.embed import embed

    root = tmp_path_factory.mktemp("run") / "root"
    shutil.copytree(chipped_root, root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning is expected here
        embed(root, model="tiny", batch_size=16, progress=False)
    return root


@pytest.fixture
def writable_copy(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Return a function that copies a (session) folder into this test's tmp dir."""

    def _copy(src: Path) -> Path:
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst

    return _copy
