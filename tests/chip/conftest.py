"""Tiny hand-made Sentinel-2-like scenes for the chip tests (written with rasterio)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

EPSG = 32633
X0, Y0 = 500000.0, 5600000.0


def write_tif(path: Path, array: np.ndarray, res: float, *, x0: float = X0, y0: float = Y0,
              crs: str | None = f"EPSG:{EPSG}") -> None:
    import rasterio
    from affine import Affine

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=array.shape[0], width=array.shape[1],
                       count=1, dtype=array.dtype, crs=crs, nodata=0, tiled=True,
                       blockxsize=32, blockysize=32,
                       transform=Affine(res, 0, x0, 0, -res, y0)) as dst:
        dst.write(array, 1)


def footprint(size_m: float = 640.0) -> dict:
    """WGS84 GeoJSON polygon of a ``size_m`` square at the scenes' upper-left corner."""
    from pyproj import Transformer

    to_wgs = Transformer.from_crs(EPSG, 4326, always_xy=True)
    corners = [(X0, Y0), (X0 + size_m, Y0), (X0 + size_m, Y0 - size_m), (X0, Y0 - size_m),
               (X0, Y0)]
    return {"type": "Polygon", "coordinates": [[list(to_wgs.transform(x, y))
                                                for x, y in corners]]}


def item_json(item_id: str, date: str, hrefs: dict[str, str], *, baseline: str = "02.14",
              tile: str = "33UUP", offset_applied: bool = False) -> dict:
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id,
        "collection": "sentinel-2-l2a",
        "geometry": footprint(), "bbox": None, "links": [],
        "properties": {"datetime": date, "proj:epsg": EPSG, "grid:code": f"MGRS-{tile}",
                       "s2:processing_baseline": baseline,
                       "earthsearch:boa_offset_applied": offset_applied},
        "assets": {k: {"href": h} for k, h in hrefs.items()},
    }


@pytest.fixture
def make_scene(tmp_path: Path):
    """Write one scene: 10 m blue/green/red/nir, 20 m rededge1 and SCL; return item path.

    ``values`` maps a band to a [size, size] (10 m) or [size/2, size/2] (20 m) array;
    missing bands get seeded random DN in 500..2500, SCL defaults to 4 (vegetation).
    """

    def _make(item_id: str = "S2A_33UUP_20210601_0_L2A", *, date: str = "2021-06-01T10:00:00Z",
              size: int = 64, values: dict | None = None, baseline: str = "02.14",
              seed: int = 0, folder: Path | None = None, **kwargs) -> Path:
        rng = np.random.default_rng(seed)
        folder = folder or tmp_path / "data"
        values = dict(values or {})
        hrefs = {}
        for key, res in (("blue", 10), ("green", 10), ("red", 10), ("nir", 10),
                         ("rededge1", 20), ("scl", 20)):
            n = size * 10 // res
            if key in values:
                arr = values[key]
            elif key == "scl":
                arr = np.full((n, n), 4, np.uint8)
            else:
                arr = rng.integers(500, 2500, (n, n)).astype(np.uint16)
            rel = f"assets/{item_id}/{key}.tif"
            write_tif(folder / rel, arr, res)
            hrefs[key] = f"../{rel}"
        item_path = folder / "items" / f"{item_id}.json"
        item_path.parent.mkdir(parents=True, exist_ok=True)
        item_path.write_text(json.dumps(item_json(item_id, date, hrefs, baseline=baseline,
                                                  **kwargs)))
        return item_path

    return _make


@pytest.fixture
def tif():
    """The :func:`write_tif` helper (test modules cannot import conftest in importlib mode)."""
    return write_tif


class StacServer:
    """A real STAC API on localhost: ``rustac serve`` (in-memory backend) over item dicts."""

    rustac = shutil.which("rustac") or str(Path(sys.executable).parent / "rustac")

    @staticmethod
    def free_port() -> int:
        """A localhost TCP port nothing listens on (for a server, or an API that is down)."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    @contextlib.contextmanager
    def serve(self, folder: Path, items: list[dict], collections: list[str]) -> Iterator[str]:
        """Serve ``items`` (each ``collection`` one of ``collections``); yield the URL.

        Skips the test when ``rustac`` is not installed (``pip install 'geofm[dev]'``).
        """
        if not Path(self.rustac).exists():
            pytest.skip("rustac is not installed (pip install 'geofm[dev]')")
        import requests

        folder.mkdir(parents=True, exist_ok=True)
        hrefs = []
        for name in collections:
            collection = {"type": "Collection", "stac_version": "1.0.0", "id": name,
                          "description": name, "license": "other", "links": [],
                          "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                                     "temporal": {"interval": [[None, None]]}}}
            (folder / f"{name}.json").write_text(json.dumps(collection))
            hrefs.append(str(folder / f"{name}.json"))
        (folder / "served.json").write_text(json.dumps({"type": "FeatureCollection",
                                                        "features": items}))
        url = f"http://127.0.0.1:{self.free_port()}"
        proc = subprocess.Popen([self.rustac, "serve", "--addr", url.removeprefix("http://"),
                                 *hrefs, str(folder / "served.json")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            for _ in range(100):
                try:
                    if requests.get(f"{url}/collections", timeout=1).ok:
                        break
                except requests.exceptions.ConnectionError:
                    time.sleep(0.1)
            else:
                pytest.fail("rustac serve did not start: "
                            f"{proc.stderr.read() if proc.stderr else ''}")
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def stac_server() -> StacServer:
    """:class:`StacServer` (test modules cannot import conftest in importlib mode)."""
    return StacServer()


def assert_same_chips(a: Path, b: Path, bands: list[str]) -> list[str]:
    """Assert two run roots hold the same scenes, chip metadata and pixels of ``bands``.

    Returns the scene ids (sorted), for further checks.
    """
    import pandas as pd

    from geofm.chipfile import read_chip_array
    from geofm.layout import RunRoot

    ra, rb = RunRoot.of(a), RunRoot.of(b)
    scenes = ra.scene_ids(ra.meta_dir)
    assert scenes == rb.scene_ids(rb.meta_dir)
    for scene in scenes:
        ma, mb = pd.read_parquet(ra.meta_path(scene)), pd.read_parquet(rb.meta_path(scene))
        pd.testing.assert_frame_equal(ma, mb)
        for cid in ma.loc[ma["valid"], "chip_id"]:
            xa, _ = read_chip_array(ra.chip_path(scene, cid), bands)
            xb, _ = read_chip_array(rb.chip_path(scene, cid), bands)
            np.testing.assert_array_equal(xa, xb)
    return scenes


@pytest.fixture
def same_chips():
    """:func:`assert_same_chips` (test modules cannot import conftest in importlib mode)."""
    return assert_same_chips
