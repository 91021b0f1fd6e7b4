"""A hand-made tiny run root for the embed tests: NetCDF chips + meta GeoParquet per scene."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

BANDS = ("blue", "green", "red", "nir")


def write_root(root: Path, *, n_scenes: int = 3, n_chips: int = 3, size: int = 64,
               seed: int = 0, invalid_chips: tuple[str, ...] = ()) -> Path:
    """Write ``n_scenes`` scenes of ``n_chips`` chips each (plus one invalid row per scene).

    Chip ``c`` of every scene has footprint lon [10 + c, 10.5 + c], lat [50, 50.4].
    """
    import geopandas as gpd
    import pandas as pd
    from shapely.geometry import box

    from geofm.chipfile import write_chip
    from geofm.layout import RunRoot

    rng = np.random.default_rng(seed)
    rr = RunRoot(root)
    x = 500000 + 10 * np.arange(size) + 5.0
    y = 5600000 - 10 * np.arange(size) - 5.0
    for s in range(n_scenes):
        scene_id = f"S2A_33UUP_2021{s + 1:02d}01_0_L2A"
        date = datetime(2021, s + 1, 1, 10, 30, tzinfo=UTC) + timedelta(minutes=s)
        rows = []
        for c in range(n_chips + 1):
            chip_id = f"33UUP_{size}_0000_{c:04d}"
            valid = c < n_chips
            rel = None
            if valid:
                path = rr.chip_path(scene_id, chip_id)
                pixels = rng.integers(200, 4000, size=(len(BANDS), size, size)).astype(np.uint16)
                write_chip(path, pixels, bands=BANDS, x=x, y=y, epsg=32633, date=date,
                           attrs={"chip_id": chip_id, "scene_id": scene_id,
                                  "sensor": "sentinel-2-l2a"})
                rel = str(path.relative_to(root))
            rows.append(dict(
                chip_id=chip_id, scene_id=scene_id, tile="33UUP", sensor="sentinel-2-l2a",
                date=pd.Timestamp(date), row=np.int32(0), col=np.int32(c), epsg=np.int32(32633),
                minx=500000.0 + 640 * c, miny=5599360.0, maxx=500640.0 + 640 * c,
                maxy=5600000.0, cloud_fraction=np.float32(0), nodata_fraction=np.float32(0),
                valid=valid, chip_path=rel, thumbnail_path=None, bands=",".join(BANDS),
                geometry=box(10 + c, 50, 10.5 + c, 50.4)))
        gdf = gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326")
        # put the invalid row first so "meta order of valid chips" is exercised
        gdf = pd.concat([gdf.iloc[[-1]], gdf.iloc[:-1]]).reset_index(drop=True)
        rr.meta_dir.mkdir(parents=True, exist_ok=True)
        gdf.to_parquet(rr.meta_path(scene_id))
    return root


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """3 scenes x 3 valid 64 px chips (4 bands), fresh for each test."""
    return write_root(tmp_path / "root")


@pytest.fixture
def ckpt(reference_dir: Path) -> Path:
    """The reference Clay-format tiny checkpoint (dim 64, depth 2)."""
    return reference_dir / "clay_tiny.ckpt"


@pytest.fixture
def make_root():  # type: ignore[no-untyped-def]
    """The :func:`write_root` builder, for tests that need other sizes."""
    return write_root
