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
    from geofm.exceptions import GeofmWarning

    root = tmp_path_factory.mktemp("run") / "root"
    shutil.copytree(chipped_root, root)
    with warnings.catch_warnings():
        # only the random-weights warning of the tiny encoder is expected here
        warnings.filterwarnings("ignore", message="RANDOM WEIGHTS", category=GeofmWarning)
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


@pytest.fixture(scope="session")
def make_embedded_root():  # type: ignore[no-untyped-def]
    """Return ``make(root, **options) -> {chip_id: class}``: a hand-made embedded run root.

    Writes ``meta/<scene_id>.parquet`` and ``embeddings/<scene_id>.parquet`` following
    docs/contracts.md without running chip/embed: ``n_classes`` classes of ``per_class``
    chips (class = column block of a one-row-per-class grid on tile 33UUP, 64 px chips),
    one scene per date in ``dates``; vectors (float32 [dim]) = ``offset`` * a shared unit
    direction + a class centroid + N(0, ``noise``); cloud fraction = (row*per_class+col)
    mod 10 / 100. One extra chip per scene is invalid (not embedded). Seeded.
    """
    import json as _json

    import geopandas as gpd
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely
    from pyproj import Transformer

    def make(root: Path, *, n_classes: int = 3, per_class: int = 8,
             dates: tuple[str, ...] = ("2021-06-01", "2021-07-01", "2021-08-01"),
             dim: int = 16, seed: int = 0, offset: float = 0.0, noise: float = 0.3,
             model: str = "tiny") -> dict[str, int]:
        rng = np.random.default_rng(seed)
        centroids = rng.normal(size=(n_classes, dim))
        shared = rng.normal(size=dim)
        shared /= np.linalg.norm(shared)
        to_wgs = Transformer.from_crs(32633, 4326, always_xy=True)
        x0, y0, size = 399960.0, 5800020.0, 640.0
        identity = {"preset": model, "checkpoint": None, "sha256": None,
                    "random_init": True, "dim": dim, "bands": "blue,green,red,nir"}
        truth = {}
        for d, date in enumerate(dates):
            scene = f"S2A_33UUP_{date.replace('-', '')}_0_L2A"
            rows = []
            for r in range(n_classes):
                for c in range(per_class + (1 if r == 0 else 0)):
                    chip_id = f"33UUP_64_{r:04d}_{c:04d}"
                    valid = not (r == 0 and c == per_class)
                    minx, maxy = x0 + c * size, y0 - r * size
                    maxx, miny = minx + size, maxy - size
                    poly = shapely.transform(shapely.box(minx, miny, maxx, maxy),
                                             lambda xy: np.column_stack(
                                                 to_wgs.transform(xy[:, 0], xy[:, 1])))
                    rows.append(dict(
                        chip_id=chip_id, scene_id=scene, tile="33UUP", sensor="sentinel-2-l2a",
                        date=pd.Timestamp(date, tz="UTC"), row=r, col=c, epsg=32633,
                        minx=minx, miny=miny, maxx=maxx, maxy=maxy,
                        cloud_fraction=np.float32(((r * per_class + c) % 10) / 100),
                        nodata_fraction=np.float32(0), valid=valid,
                        chip_path=f"chips/{scene}/{chip_id}.nc" if valid else None,
                        thumbnail_path=f"thumbnails/{scene}/{chip_id}.png" if valid else None,
                        bands="blue,green,red,nir", geometry=poly))
                    if valid and d == 0:
                        truth[chip_id] = r
            meta = gpd.GeoDataFrame(rows, geometry="geometry", crs=4326)
            (root / "meta").mkdir(parents=True, exist_ok=True)
            meta.to_parquet(root / "meta" / f"{scene}.parquet", index=False)
            valid = meta[meta["valid"]]
            cls = np.array([offset * shared + centroids[r] + rng.normal(scale=noise, size=dim)
                            for r in valid["row"]], dtype=np.float32)
            mean = cls + rng.normal(scale=noise, size=cls.shape).astype(np.float32)
            table = pa.table({
                "chip_id": valid["chip_id"].tolist(), "scene_id": valid["scene_id"].tolist(),
                "date": pa.array(valid["date"], pa.timestamp("us", tz="UTC")),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(cls.ravel()), dim),
                "embedding_mean": pa.FixedSizeListArray.from_arrays(pa.array(mean.ravel()),
                                                                    dim),
            }).replace_schema_metadata({"geofm": _json.dumps(identity)})
            (root / "embeddings").mkdir(parents=True, exist_ok=True)
            pq.write_table(table, root / "embeddings" / f"{scene}.parquet")
        return truth

    return make


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Folder with the Clay reference checkpoint, cases and manifest.

    Looked up in ``$GEOFM_CLAY_REFERENCE``, then ``<repo>/../shared/reference`` (optional
    overrides), then the copies vendored in ``tests/data/clay_reference`` (see its
    README), so a clone that stands alone passes. Missing files fail the tests that need
    them: the encoder's exactness is not optional.
    """
    import os

    candidates = [os.environ.get("GEOFM_CLAY_REFERENCE", ""),
                  str(Path(__file__).resolve().parents[2] / "shared" / "reference"),
                  str(Path(__file__).resolve().parent / "data" / "clay_reference")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "clay_tiny.ckpt").is_file():
            return Path(candidate)
    pytest.fail("Clay reference files (clay_tiny.ckpt, clay_tiny_cases.pt, manifest) not "
                f"found in {candidates}; restore tests/data/clay_reference from git")


class CodePayload:
    """Unpickling this runs code: ``exec`` writes ``sentinel`` (what every loader must stop)."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({str(self.sentinel)!r}, 'w').write('pwned')",))


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    """File a malicious checkpoint would create if geofm ever ran its code."""
    return tmp_path / "SENTINEL"


@pytest.fixture
def payload(sentinel: Path) -> CodePayload:
    """An object whose unpickling writes ``sentinel``."""
    return CodePayload(sentinel)


@pytest.fixture
def geofm_log(caplog: pytest.LogCaptureFixture):  # type: ignore[no-untyped-def]
    """``caplog`` that also sees the ``geofm`` logger (the CLI turns its propagation off)."""
    import logging

    logger = logging.getLogger("geofm")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)

