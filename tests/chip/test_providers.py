"""Items in each provider's STAC dialect, and local COGs on their real grids.

The builders write the fields geofm reads exactly as each provider publishes them
(asset keys, ``eo:bands`` / STAC 1.1 ``bands``, ``raster:bands`` / ``raster:offset``,
``proj:epsg`` / ``proj:code``, per-asset ``proj:transform``, the baseline fields, the
Earth Search flag); hrefs are the providers' remote ones. :func:`localise` then points
the assets a test needs at small COGs written on the item's own CRS and grid origin, in
a copy of the item. ``tests/data/stac_items/README.md`` lists the real published items
these dialects follow and how to run the same tests on them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

#: One acquisition: Sentinel-2C over MGRS 33UWP on 2025-03-30, baseline 05.11.
EPSG, X0, Y0 = 32633, 499980.0, 5400000.0
DATE = "2025-03-30T10:00:51.025000Z"
GEOMETRY = {"type": "Polygon", "coordinates": [[[15.0, 48.75], [16.49, 48.74],
                                                [16.46, 47.76], [15.0, 47.88], [15.0, 48.75]]]}
BBOX = [14.9997, 47.7558, 16.4933, 48.7530]
S2_BANDS = {  # geofm name: (ESA name, resolution m, common name as Earth Search writes it)
    "coastal": ("B01", 60, "coastal"), "blue": ("B02", 10, "blue"),
    "green": ("B03", 10, "green"), "red": ("B04", 10, "red"),
    "rededge1": ("B05", 20, "rededge"), "rededge2": ("B06", 20, "rededge"),
    "rededge3": ("B07", 20, "rededge"), "nir": ("B08", 10, "nir"),
    "nir08": ("B8A", 20, "nir08"), "nir09": ("B09", 60, "nir09"),
    "swir16": ("B11", 20, "swir16"), "swir22": ("B12", 20, "swir22"),
}


def _transform(res: float, x0: float = X0, y0: float = Y0) -> list[float]:
    return [res, 0, x0, 0, -res, y0]


def _feature(item_id: str, collection: str, props: dict[str, Any], assets: dict[str, Any],
             stac_version: str = "1.0.0") -> dict[str, Any]:
    return {"type": "Feature", "stac_version": stac_version, "id": item_id,
            "collection": collection, "geometry": GEOMETRY, "bbox": BBOX,
            "properties": {"datetime": DATE, **props}, "assets": assets, "links": []}


def earth_search(*, c1: bool = False, flag: bool | None = True) -> dict[str, Any]:
    """Earth Search v1 ``sentinel-2-l2a`` (``flag``: ``earthsearch:boa_offset_applied``)
    or, with ``c1``, ``sentinel-2-c1-l2a`` (no flag; DNs as ESA publishes them)."""
    base = ("https://e84-earth-search-sentinel-data.s3.us-west-2.amazonaws.com/"
            "sentinel-2-c1-l2a/33/U/WP/2025/3/S2C_T33UWP_20250330T100051_L2A" if c1 else
            "https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/33/U/WP/"
            "2025/3/S2C_33UWP_20250330_0_L2A")
    assets: dict[str, Any] = {}
    for key, (esa, res, common) in S2_BANDS.items():
        asset = {"href": f"{base}/{esa if c1 else key.upper()}.tif",
                 "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                 "roles": ["data", "reflectance"], "gsd": res,
                 "eo:bands": [{"name": esa, "common_name": common}],
                 "proj:shape": [10980 * 10 // res] * 2, "proj:transform": _transform(res),
                 "raster:bands": [{"nodata": 0, "data_type": "uint16", "spatial_resolution": res,
                                   "scale": 0.0001, "offset": -0.1}]}
        assets[key] = asset
        if not c1:  # Earth Search v1 also lists ESA's JPEG 2000 of every band
            assets[f"{key}-jp2"] = {**copy.deepcopy(asset), "type": "image/jp2",
                                    "href": f"s3://sentinel-s2-l2a/tiles/33/U/WP/2025/3/30/0/"
                                            f"R{res}m/{esa}.jp2"}
    assets["scl"] = {"href": f"{base}/SCL.tif", "roles": ["data"], "gsd": 20,
                     "proj:transform": _transform(20),
                     "raster:bands": [{"nodata": 0, "data_type": "uint8",
                                       "spatial_resolution": 20}]}
    assets["visual"] = {"href": f"{base}/TCI.tif", "roles": ["visual"],
                        "eo:bands": [{"name": "B04", "common_name": "red"},
                                     {"name": "B03", "common_name": "green"},
                                     {"name": "B02", "common_name": "blue"}]}
    props: dict[str, Any] = {
        "platform": "sentinel-2c", "proj:epsg": EPSG, "grid:code": "MGRS-33UWP",
        "mgrs:utm_zone": 33, "mgrs:latitude_band": "U", "mgrs:grid_square": "WP",
        "eo:cloud_cover": 12.5, "s2:processing_baseline": "05.11",
        "s2:product_uri": "S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914.SAFE"}
    if flag is not None:
        props["earthsearch:boa_offset_applied"] = flag
    if c1:
        return _feature("S2C_T33UWP_20250330T100051_L2A", "sentinel-2-c1-l2a", props, assets)
    return _feature("S2C_33UWP_20250330_0_L2A", "sentinel-2-l2a", props, assets)


def planetary_computer(*, baseline: bool = True) -> dict[str, Any]:
    """Planetary Computer ``sentinel-2-l2a``: ESA keys, no ``raster:bands``, unsigned
    blob hrefs; without ``baseline`` only ``s2:product_uri`` names it."""
    base = ("https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/33/U/WP/2025/03/30/"
            "S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914.SAFE/GRANULE/"
            "L2A_T33UWP_A002952_20250330T100435/IMG_DATA")
    assets: dict[str, Any] = {}
    for esa, res, common in S2_BANDS.values():
        assets[esa] = {"href": f"{base}/R{res}m/T33UWP_20250330T100051_{esa}_{res}m.tif",
                       "roles": ["data"], "gsd": res, "proj:shape": [10980 * 10 // res] * 2,
                       "proj:transform": _transform(res),
                       "eo:bands": [{"name": esa, "common_name":
                                     "rededge" if esa == "B8A" else common}]}
    assets["SCL"] = {"href": f"{base}/R20m/T33UWP_20250330T100051_SCL_20m.tif",
                     "roles": ["data"], "gsd": 20, "proj:transform": _transform(20)}
    assets["visual"] = {"href": f"{base}/R10m/T33UWP_20250330T100051_TCI_10m.tif",
                        "roles": ["data"], "eo:bands": [{"name": "B04", "common_name": "red"},
                                                        {"name": "B03", "common_name": "green"},
                                                        {"name": "B02", "common_name": "blue"}]}
    props: dict[str, Any] = {
        "platform": "Sentinel-2C", "proj:epsg": EPSG, "s2:mgrs_tile": "33UWP",
        "eo:cloud_cover": 12.5,
        "s2:product_uri": "S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914.SAFE"}
    if baseline:
        props["s2:processing_baseline"] = "05.11"
    return _feature("S2C_MSIL2A_20250330T100051_R122_T33UWP_20250330T145914",
                    "sentinel-2-l2a", props, assets)


def copernicus() -> dict[str, Any]:
    """Copernicus Data Space ``sentinel-2-l2a`` (STAC 1.1): ``B02_10m`` .. ``SCL_20m``,
    every band at several resolutions, ``bands`` with ``eo:common_name``,
    ``raster:offset`` on the asset, ``processing:version``, ``proj:code``."""
    base = ("s3://eodata/Sentinel-2/MSI/L2A/2025/03/30/"
            "S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914.SAFE/GRANULE/"
            "L2A_T33UWP_A002952_20250330T100435/IMG_DATA")
    assets: dict[str, Any] = {}
    for key, (esa, native, common) in S2_BANDS.items():
        for res in {10: (10, 20, 60), 20: (20, 60), 60: (60,)}[native]:
            assets[f"{esa}_{res}m"] = {
                "href": f"{base}/R{res}m/T33UWP_20250330T100051_{esa}_{res}m.jp2",
                "type": "image/jp2", "gsd": res, "proj:code": f"EPSG:{EPSG}",
                "proj:shape": [10980 * 10 // res] * 2, "proj:transform": _transform(res),
                "roles": ["data", "reflectance",
                          "sampling:original" if res == native else "sampling:downsampled"],
                "bands": [{"name": esa, "eo:common_name":
                           {"rededge1": "rededge071", "rededge2": "rededge075",
                            "rededge3": "rededge078"}.get(key, common)}],
                "nodata": 0, "data_type": "uint16", "raster:scale": 0.0001,
                "raster:offset": -0.1}
    for res in (20, 60):
        assets[f"SCL_{res}m"] = {"href": f"{base}/R{res}m/T33UWP_20250330T100051_SCL_{res}m.jp2",
                                 "type": "image/jp2", "gsd": res, "proj:code": f"EPSG:{EPSG}",
                                 "proj:transform": _transform(res), "nodata": 0,
                                 "data_type": "uint8", "roles": ["data"]}
    assets["TCI_10m"] = {"href": f"{base}/R10m/TCI.jp2", "roles": ["visual"],
                         "bands": [{"name": "B04", "eo:common_name": "red"}]}
    props = {"platform": "sentinel-2c", "grid:code": "MGRS-33UWP", "eo:cloud_cover": 12.5,
             "processing:version": "05.11", "product:type": "S2MSI2A",
             "start_datetime": DATE, "end_datetime": DATE}
    return _feature("S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914",
                    "sentinel-2-l2a", props, assets, stac_version="1.1.0")


#: Landsat 8, WRS-2 path 028 row 030 (EPSG:32615), as USGS publishes it.
LS_EPSG, LS_X0, LS_Y0 = 32615, 173085.0, 4904715.0
LS_BANDS = {"coastal": "B1", "blue": "B2", "green": "B3", "red": "B4", "nir08": "B5",
            "swir16": "B6", "swir22": "B7"}


def usgs_landsat(*, planetary: bool = False) -> dict[str, Any]:
    """USGS ``landsat-c2l2-sr`` (keys = common names, ``eo:bands`` name ``B2``, no
    raster metadata) or, with ``planetary``, Planetary Computer ``landsat-c2-l2``
    (``OLI_B2`` names, ``raster:bands`` scale 2.75e-05 offset -0.2, qa_pixel nodata 1)."""
    base = ("https://landsatlook.usgs.gov/data/collection02/level-2/standard/oli-tirs/2020/"
            "028/030/LC08_L2SP_028030_20200114_20200824_02_T1/"
            "LC08_L2SP_028030_20200114_20200824_02_T1")
    assets: dict[str, Any] = {}
    for key, b in LS_BANDS.items():
        asset: dict[str, Any] = {"href": f"{base}_SR_{b}.TIF", "roles": ["data"],
                                 "eo:bands": [{"name": f"OLI_{b}" if planetary else b,
                                               "common_name": key, "gsd": 30}]}
        if planetary:
            asset["raster:bands"] = [{"scale": 2.75e-05, "nodata": 0, "offset": -0.2,
                                      "data_type": "uint16", "spatial_resolution": 30}]
        assets[key] = asset
    assets["qa_pixel"] = {"href": f"{base}_QA_PIXEL.TIF",
                          "roles": ["cloud", "cloud-shadow", "snow-ice", "water-mask"]}
    if planetary:
        assets["qa_pixel"]["raster:bands"] = [{"unit": "bit index", "nodata": 1,
                                               "data_type": "uint16", "spatial_resolution": 30}]
    props = {"datetime": "2020-01-14T17:05:46.732651Z", "platform": "LANDSAT_8",
             "proj:epsg": LS_EPSG, "proj:shape": [8041, 7931],
             "proj:transform": [30, 0, LS_X0, 0, -30, LS_Y0], "eo:cloud_cover": 8.18,
             "landsat:wrs_path": "028", "landsat:wrs_row": "030"}
    item = _feature("LC08_L2SP_028030_20200114_20200824_02_T1" + ("" if planetary else "_SR"),
                    "landsat-c2-l2" if planetary else "landsat-c2l2-sr", props, assets)
    item["geometry"] = {"type": "Polygon", "coordinates": [[[-97.0, 44.2], [-94.2, 44.2],
                                                            [-94.2, 42.1], [-97.0, 42.1],
                                                            [-97.0, 44.2]]]}
    item["bbox"] = [-97.0, 42.1, -94.2, 44.2]
    return item


def naip() -> dict[str, Any]:
    """Planetary Computer ``naip``: one 4-band ``image`` asset (``eo:bands`` Red, Green,
    Blue, NIR), ``proj:epsg`` of the UTM zone, no tile grid."""
    base = "https://naipeuwest.blob.core.windows.net/naip/v002/mt/2023/mt_060cm_2023/49116"
    item = _feature("mt_m_4911664_se_11_060_20231117_20240103", "naip",
                    {"gsd": 0.6, "naip:year": "2023", "naip:state": "mt", "proj:epsg": 26911,
                     "proj:shape": [12350, 8430],
                     "proj:transform": [0.6, 0.0, 568284.0, 0.0, -0.6, 5435088.0]},
                    {"image": {"href": f"{base}/m_4911664_se_11_060_20231117.tif",
                               "roles": ["data"],
                               "eo:bands": [{"name": "Red", "common_name": "red"},
                                            {"name": "Green", "common_name": "green"},
                                            {"name": "Blue", "common_name": "blue"},
                                            {"name": "NIR", "common_name": "nir"}]},
                     "thumbnail": {"href": f"{base}/m_4911664_se_11_060_20231117.200.jpg",
                                   "roles": ["thumbnail"]}})
    item["properties"]["datetime"] = "2023-11-17T16:00:00Z"
    return item


def sentinel1_rtc() -> dict[str, Any]:
    """Planetary Computer ``sentinel-1-rtc``: ``vv`` / ``vh`` float32 linear gamma0."""
    base = "https://sentinel1euwestrtc.blob.core.windows.net/sentinel1-grd-rtc/GRD/2023/6/1/IW"
    assets = {pol: {"href": f"{base}/measurement/iw-{pol}.rtc.tiff", "roles": ["data"],
                    "raster:bands": [{"nodata": -32768, "data_type": "float32",
                                      "spatial_resolution": 10}]} for pol in ("vv", "vh")}
    return _feature("S1A_IW_GRDH_1SDV_20230601T050000_20230601T050025_048800_05DE3A_rtc",
                    "sentinel-1-rtc", {"platform": "SENTINEL-1A", "constellation":
                                       "Sentinel-1", "proj:epsg": EPSG,
                                       "sar:polarizations": ["VV", "VH"],
                                       "sar:instrument_mode": "IW"}, assets)


def grid_of(item: dict[str, Any], key: str) -> tuple[int, float, float, float]:
    """``(epsg, x0, y0, res)`` of an asset: its own ``proj:*`` fields, else the item's."""
    asset, props = item["assets"][key], item["properties"]
    code = asset.get("proj:code") or props.get("proj:code")
    epsg = int(asset.get("proj:epsg") or props.get("proj:epsg") or str(code).split(":")[1])
    transform = asset.get("proj:transform") or props.get("proj:transform")
    res = float(transform[0]) if transform else float(asset.get("gsd", 30))
    return epsg, float(transform[2]), float(transform[5]), res


def localise(item: dict[str, Any], folder: Path, arrays: dict[str, np.ndarray]) -> dict:
    """A copy of ``item`` whose assets ``arrays`` names point at local COGs.

    Each array is written as a tiled GeoTIFF on the asset's own CRS, pixel size and grid
    origin (from ``proj:code``/``proj:epsg`` and ``proj:transform``), nodata 0 (1 for
    ``qa_pixel``); the other assets keep their remote hrefs.
    """
    import rasterio
    from affine import Affine

    item = copy.deepcopy(item)
    for key, array in arrays.items():
        epsg, x0, y0, res = grid_of(item, key)
        path = folder / item["id"] / f"{key}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", height=array.shape[0],
                           width=array.shape[1], count=1, dtype=array.dtype,
                           crs=f"EPSG:{epsg}", nodata=1 if key.lower().startswith("qa_pixel")
                           else 0, tiled=True, blockxsize=16, blockysize=16,
                           transform=Affine(res, 0, x0, 0, -res, y0)) as dst:
            dst.write(array, 1)
        item["assets"][key]["href"] = str(path)
    return item


# --- tests ----------------------------------------------------------------------------
import json  # noqa: E402
import os  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from geofm.chip import chip  # noqa: E402
from geofm.chip.items import load_scenes, scene_from_dict  # noqa: E402
from geofm.chipfile import open_chip, read_chip_array  # noqa: E402
from geofm.exceptions import ItemError  # noqa: E402
from geofm.layout import RunRoot  # noqa: E402

S2_USED = ("blue", "green", "red", "nir", "rededge1")
RNG = np.random.default_rng(7)
#: Harmonised reflectance DN of the acquisition (dark visible bands, bright NIR).
TRUTH = {b: RNG.integers(200, 900, (64, 64)).astype(np.uint16) for b in ("blue", "green",
                                                                       "red")}
TRUTH["nir"] = RNG.integers(2000, 3500, (64, 64)).astype(np.uint16)
TRUTH["rededge1"] = RNG.integers(600, 1400, (32, 32)).astype(np.uint16)
SCL = np.full((32, 32), 4, np.uint8)
SCL[:16, :16] = 9           # chip (0, 0) cloudy
SCL[16:, 16:][:4] = 3       # chip (1, 1): 4 of 16 rows cloud shadow
SCL[16:, :16][0, 0] = 0     # chip (1, 0): one 20 m nodata pixel

#: key of each band's asset, per dialect (what the resolver must choose).
KEYS = {
    "earth-search": {"blue": "blue", "green": "green", "red": "red", "nir": "nir",
                     "rededge1": "rededge1", "scl": "scl"},
    "planetary-computer": {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08",
                           "rededge1": "B05", "nir08": "B8A", "scl": "SCL"},
    "copernicus": {"blue": "B02_10m", "green": "B03_10m", "red": "B04_10m", "nir": "B08_10m",
                   "rededge1": "B05_20m", "nir08": "B8A_20m", "scl": "SCL_20m"},
}
KEYS["earth-search-c1"] = KEYS["earth-search"]


def _dialect(name: str) -> dict:
    return {"earth-search": lambda: earth_search(flag=True),
            "earth-search-c1": lambda: earth_search(c1=True, flag=None),
            "planetary-computer": planetary_computer, "copernicus": copernicus}[name]()


def _arrays(item_keys: dict[str, str], offset: int) -> dict[str, np.ndarray]:
    arrays = {item_keys[b]: np.where(TRUTH[b] > 0, TRUTH[b] + offset, 0).astype(np.uint16)
              for b in S2_USED}
    arrays[item_keys["scl"]] = SCL
    return arrays


@pytest.mark.parametrize("name", list(KEYS))
def test_each_dialect_finds_its_bands_by_metadata(name):
    scene = scene_from_dict(_dialect(name), base=None, source=name)
    assert {b: scene.bands[b].key for b in KEYS[name]} == KEYS[name]
    assert scene.sensor == "sentinel-2-l2a" and scene.tile == "33UWP" and scene.epsg == EPSG
    assert scene.bands["blue"].scale == pytest.approx(1e-4) and scene.bands["blue"].nodata == 0


@pytest.mark.parametrize(("item", "offset", "rule", "source"), [
    (lambda: earth_search(flag=True), 0, "2", "properties.s2:processing_baseline"),
    (lambda: earth_search(flag=False), 1000, "2", "properties.s2:processing_baseline"),
    (lambda: earth_search(c1=True, flag=None), 1000, "3", "properties.s2:processing_baseline"),
    (planetary_computer, 1000, "4", "properties.s2:processing_baseline"),
    (lambda: planetary_computer(baseline=False), 1000, "4",
     "properties.s2:product_uri (_N0511_)"),
    (copernicus, 1000, "3", "properties.processing:version"),
])
def test_offset_decision_per_dialect(item, offset, rule, source):
    h = scene_from_dict(item(), base=None, source="t").harmonisation
    assert (h.offset_dn, h.rule, h.baseline, h.baseline_source) == (offset, rule, "05.11", source)


def test_earth_search_stale_raster_offset_is_noted_not_followed():
    h = scene_from_dict(earth_search(flag=True), base=None, source="t").harmonisation
    assert h.offset_dn == 0 and h.declared_offset == pytest.approx(-0.1)
    assert any("disagrees with earthsearch:boa_offset_applied true" in c
               for c in h.contradictions)


def test_old_baseline_ignores_a_true_flag_and_a_declared_offset():
    item = earth_search(flag=True)
    item["properties"]["s2:processing_baseline"] = "02.14"
    h = scene_from_dict(item, base=None, source="t").harmonisation
    assert (h.offset_dn, h.rule) == (0, "1")
    assert len(h.contradictions) == 2


def test_no_baseline_anywhere_falls_back_to_the_date():
    item = planetary_computer(baseline=False)
    del item["properties"]["s2:product_uri"]
    h = scene_from_dict(item, base=None, source="t").harmonisation
    assert h.offset_dn == 1000 and h.baseline_source.startswith("date (assumed")
    item["properties"]["datetime"] = "2021-06-01T10:00:00Z"
    assert scene_from_dict(item, base=None, source="t").harmonisation.offset_dn == 0


def _chip_one(item: dict, tmp_path, name: str, **kw):
    items = tmp_path / f"{name}.json"
    items.write_text(json.dumps(item))
    root = tmp_path / f"root-{name}"
    rec = chip(items, root, chip_size=32, bands=kw.pop("bands", ",".join(S2_USED)),
               max_nodata=1.0, max_cloud=1.0, progress=False, **kw)
    assert rec.failures == [], rec.failures
    return root, rec


def _meta(root):
    import geopandas as gpd

    run = RunRoot.of(root)
    (scene,) = run.scene_ids(run.meta_dir)
    return scene, gpd.read_parquet(run.meta_path(scene)).set_index("chip_id")


# (dialect, DN offset present in the rasters, rule expected in run.json)
ACQUISITION = [("earth-search", 0, "2"), ("earth-search-c1", 1000, "3"),
               ("planetary-computer", 1000, "4"), ("copernicus", 1000, "3")]


def test_one_acquisition_from_every_provider_gives_equal_harmonised_chips(tmp_path):
    chips = {}
    for name, offset, rule in ACQUISITION:
        item = localise(_dialect(name), tmp_path / "cogs", _arrays(KEYS[name], offset))
        root, rec = _chip_one(item, tmp_path, name)
        scene, meta = _meta(root)
        detail = rec.extra["harmonisation_detail"][scene]
        assert (detail["offset_dn"], detail["rule"]) == (offset, rule), name
        assert detail["assets"]["blue"].startswith(KEYS[name]["blue"] + " ")
        assert meta.loc["33UWP_32_0000_0000", "cloud_fraction"] == 1.0
        assert meta.loc["33UWP_32_0001_0001", "cloud_fraction"] == 0.25
        assert meta.loc["33UWP_32_0001_0000", "nodata_fraction"] == pytest.approx(4 / 1024)
        assert list(meta.index) == ["33UWP_32_0000_0000", "33UWP_32_0000_0001",
                                    "33UWP_32_0001_0000", "33UWP_32_0001_0001"]
        path = RunRoot.of(root).chip_path(scene, "33UWP_32_0000_0001")
        chips[name], _ = read_chip_array(path, list(S2_USED))
    reference = chips["earth-search"]
    np.testing.assert_array_equal(reference[0], TRUTH["blue"][:32, 32:])
    np.testing.assert_array_equal(reference[3], TRUTH["nir"][:32, 32:])
    for name, array in chips.items():
        np.testing.assert_array_equal(array, reference, err_msg=name)


def _acquired(item: dict, when: str, baseline: str) -> dict:
    """``item`` as the provider would publish an acquisition of ``when`` processed with
    ``baseline``: the date, id and every baseline field of its dialect changed."""
    item = copy.deepcopy(item)
    code = "N" + baseline.replace(".", "")
    item["id"] = item["id"].replace("20250330", when[:10].replace("-", "")).replace(
        "N0511", code)
    props = item["properties"]
    for key in ("datetime", "start_datetime", "end_datetime"):
        if key in props:
            props[key] = when
    for key in ("s2:processing_baseline", "processing:version"):
        if key in props:
            props[key] = baseline
    if "s2:product_uri" in props:
        props["s2:product_uri"] = props["s2:product_uri"].replace("N0511", code)
    if props.get("earthsearch:boa_offset_applied") is not None and baseline < "04.00":
        props["earthsearch:boa_offset_applied"] = False  # what v1 wrote before 2022
    return item


#: dialect -> (baseline of a 2021 acquisition, DN offset it carries). Earth Search C1 is
#: ESA's Collection 1 reprocessing: old acquisitions too are baseline 05.00, with +1000.
BEFORE_SWITCH = {"earth-search": ("03.01", 0), "earth-search-c1": ("05.00", 1000),
                 "planetary-computer": ("03.01", 0), "copernicus": ("03.01", 0)}


@pytest.mark.parametrize(("name", "offset", "rule"), ACQUISITION)
def test_stable_surface_does_not_jump_at_the_baseline_switch_on_any_provider(
        name, offset, rule, tmp_path):
    """The same unchanging DNs acquired in 2021 (old baseline, or C1's reprocessing) and
    in 2025 (baseline 05.11), each as the provider publishes it: equal harmonised chips."""
    baseline, old_offset = BEFORE_SWITCH[name]
    before = _acquired(_dialect(name), "2021-06-01T10:00:51.025000Z", baseline)
    items = [localise(before, tmp_path / "cogs", _arrays(KEYS[name], old_offset)),
             localise(_dialect(name), tmp_path / "cogs", _arrays(KEYS[name], offset))]
    assert items[0]["id"] != items[1]["id"]
    (tmp_path / "items.json").write_text(json.dumps({"type": "FeatureCollection",
                                                     "features": items}))
    rec = chip(tmp_path / "items.json", tmp_path / "root", chip_size=32, bands="blue,nir",
               max_cloud=1.0, max_nodata=1.0, progress=False)
    assert rec.failures == []
    run = RunRoot.of(tmp_path / "root")
    detail = rec.extra["harmonisation_detail"]
    assert (detail[items[0]["id"]]["offset_dn"], detail[items[1]["id"]]["offset_dn"]) == \
        (old_offset, offset)
    assert detail[items[1]["id"]]["rule"] == rule
    for item in items:
        array, _ = read_chip_array(run.chip_path(item["id"], "33UWP_32_0000_0001"),
                                   ["blue", "nir"])
        np.testing.assert_array_equal(array[0], TRUTH["blue"][:32, 32:], err_msg=item["id"])
        np.testing.assert_array_equal(array[1], TRUTH["nir"][:32, 32:], err_msg=item["id"])


def test_a_wrong_earth_search_flag_is_caught_by_the_data(tmp_path):
    """Flag false (and raster offset -0.1) on DNs that are already harmonised
    (Element84/earth-search#71): the data check subtracts nothing and says why."""
    item = localise(earth_search(flag=False), tmp_path / "cogs",
                    _arrays(KEYS["earth-search"], 0))
    root, rec = _chip_one(item, tmp_path, "wrong-flag")
    scene, _ = _meta(root)
    detail = rec.extra["harmonisation_detail"][scene]
    assert (detail["offset_dn"], detail["rule"]) == (0, "5")
    assert "the offset is not in the data" in detail["contradictions"][-1]
    chip_path = RunRoot.of(root).chip_path(scene, "33UWP_32_0000_0001")
    array, _ = read_chip_array(chip_path, ["blue"])
    np.testing.assert_array_equal(array[0], TRUTH["blue"][:32, 32:])
    assert "contradictions" in open_chip(chip_path).attrs["harmonisation"]


def test_bands_named_by_the_provider(tmp_path):
    item = localise(planetary_computer(), tmp_path / "cogs",
                    _arrays(KEYS["planetary-computer"], 1000))
    root, rec = _chip_one(item, tmp_path, "pc", bands="B02,B03,B04,B08")
    assert rec.config["bands"] == ["blue", "green", "red", "nir"]
    scene, meta = _meta(root)
    assert set(meta["bands"]) == {"blue,green,red,nir"}


def test_pystac_item_collection_is_read_offline(tmp_path):
    import pystac

    item = localise(planetary_computer(), tmp_path / "cogs",
                    _arrays(KEYS["planetary-computer"], 1000))
    item["links"] = [
        {"rel": "root", "href": "https://planetarycomputer.invalid/api/stac/v1/"},
        {"rel": "collection", "href": "https://planetarycomputer.invalid/collections/s2"},
        {"rel": "self", "href": "https://planetarycomputer.invalid/collections/s2/items/x"}]
    path = tmp_path / "collection.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    collection = pystac.ItemCollection.from_file(str(path))
    rec = chip(collection, tmp_path / "root", chip_size=32, max_nodata=1.0, max_cloud=1.0,
               progress=False)
    assert rec.failures == [] and rec.counts["chips"] == 4


def test_landsat_qa_pixel_clouds_fill_and_scale(tmp_path):
    clear, cloud, fill = 1 << 6, (1 << 6) | (1 << 3), 1
    qa = np.full((32, 32), clear, np.uint16)
    qa[:16, :16] = cloud
    qa[16:, 16:][:, :8] = fill
    dn = {k: RNG.integers(7000, 20000, (32, 32)).astype(np.uint16) for k in LS_BANDS}
    for planetary in (False, True):
        item = localise(usgs_landsat(planetary=planetary), tmp_path / "cogs",
                        {**dn, "qa_pixel": qa})
        name = "pc-landsat" if planetary else "usgs-landsat"
        items = tmp_path / f"{name}.json"
        items.write_text(json.dumps(item))
        rec = chip(items, tmp_path / name, chip_size=16, max_cloud=1.0, max_nodata=1.0,
                   progress=False)
        assert rec.failures == []
        scene, meta = _meta(tmp_path / name)
        tile = meta["tile"].iloc[0]
        assert meta["sensor"].iloc[0] == "landsat-c2-l2" and tile == "WRS2-028030"
        assert meta.loc[f"{tile}_16_0000_0000", "cloud_fraction"] == 1.0
        assert meta.loc[f"{tile}_16_0001_0001", "nodata_fraction"] == 0.5
        assert meta.loc[f"{tile}_16_0000_0001", "cloud_fraction"] == 0.0
        path = RunRoot.of(tmp_path / name).chip_path(scene, f"{tile}_16_0000_0001")
        array, _ = read_chip_array(path, ["blue", "green", "red", "nir08"])
        np.testing.assert_array_equal(array[0], dn["blue"][:16, 16:])  # DN kept as published
        ds = open_chip(path)
        assert float(ds["blue"].attrs.get("scale_factor", ds.attrs.get("scale", 0))) \
            == pytest.approx(2.75e-5)
        assert rec.extra["harmonisation"][scene].startswith("none (not Sentinel-2")


def test_unusable_items_are_clear_errors(tmp_path):
    item = earth_search()
    item["collection"] = "cop-dem-glo-30"
    for key in [k for k in item["properties"] if k.startswith(("s2:", "earthsearch:"))]:
        del item["properties"][key]
    item["properties"]["platform"] = "tandem-x"
    with pytest.raises(ItemError, match="collection 'cop-dem-glo-30' is not one geofm") as err:
        scene_from_dict(item, base=None, source="t")
    assert err.value.field == "collection"
    bare = planetary_computer()
    bare["assets"] = {"data": {"href": "x.tif", "roles": ["data"]}}
    (scene,) = load_scenes([bare])
    with pytest.raises(ItemError, match="has no asset 'blue' .*B02.*it has data"):
        scene.href("blue")


@pytest.mark.parametrize(("item", "message"), [
    (naip, "collection 'naip' is not one geofm can chip yet: NAIP items hold all four "
           "bands in one multi-band 'image' asset"),
    (sentinel1_rtc, "collection 'sentinel-1-rtc' is not one geofm can chip yet: Sentinel-1 "
                    "RTC items hold linear backscatter"),
    (lambda: {**earth_search(), "collection": "sentinel-1-grd"} | {"properties": {
        "datetime": DATE, "platform": "sentinel-1a", "constellation": "sentinel-1"}},
     "collection 'sentinel-1-grd' is not one geofm can chip (Sentinel-2 L2A or Landsat"),
])
def test_collections_geofm_does_not_chip_exit_1_naming_them(item, message, tmp_path,
                                                            geofm_log):
    """A Clay sensor geofm knows but cannot chip honestly (NAIP, Sentinel-1 RTC), or any
    other collection: exit 1 (bad data) before any work, naming the collection, the
    reason and the collections it does chip."""
    from geofm.cli import main

    (tmp_path / "item.json").write_text(json.dumps(item()))
    root = tmp_path / "root"
    assert main(["chip", "--items", str(tmp_path / "item.json"), "--out", str(root),
                 "--no-progress"]) == 1
    assert message in geofm_log.text
    # the collections it does chip, and only those
    assert "landsat-c2-l2, landsat-c2l2-sr, sentinel-2-c1-l2a, sentinel-2-l2a, " \
           "sentinel-s2-l2a-cogs)" in geofm_log.text
    assert not (root / "chips").exists()


def test_item_with_no_usable_band_metadata_fails_its_scene_exit_1(tmp_path, geofm_log):
    """An item whose assets say nothing geofm can match (no band names, common names or
    known keys): its scene fails naming the band, what was looked for and the assets the
    item has; exit 1, the failure in run.json."""
    from geofm.cli import main

    bare = planetary_computer()
    bare["assets"] = {"data": {"href": "x.tif", "roles": ["data"]},
                      "visual": {"href": "tci.tif", "roles": ["visual"],
                                 "eo:bands": [{"name": "B02", "common_name": "blue"}]}}
    (tmp_path / "item.json").write_text(json.dumps(bare))
    root = tmp_path / "root"
    assert main(["chip", "--items", str(tmp_path / "item.json"), "--out", str(root),
                 "--no-progress"]) == 1
    assert "has no asset 'blue' (looked for band names / common names / asset keys blue, " \
           "B02); it has data, visual" in geofm_log.text
    (failure,) = json.loads((root / "run.json").read_text())["stages"]["chip"]["failures"]
    assert failure["unit"] == bare["id"]


def test_unsigned_planetary_computer_hrefs_name_the_extra(tmp_path):
    import importlib.util

    if importlib.util.find_spec("planetary_computer") is not None:
        pytest.skip("planetary-computer is installed: hrefs would be signed (needs network)")
    item = localise(planetary_computer(), tmp_path / "cogs", {"B02": TRUTH["blue"]})
    items = tmp_path / "pc.json"
    items.write_text(json.dumps(item))
    rec = chip(items, tmp_path / "root", chip_size=32, bands="blue,green", progress=False)
    (failure,) = rec.failures
    assert "blob.core.windows.net" in failure.reason  # green: still the provider's href
    assert "needs a SAS signature" in failure.reason
    assert 'pip install "geofm[planetary-computer]"' in failure.reason


# --- the same tests on real published items, when they are at hand --------------------

#: Real published items (tests/data/stac_items/README.md says where each comes from).
REAL = {
    "earth-search/S2B_20EPT_20250731_0_L2A.json": ("earth-search", 0),
    "earth-search-c1/S2B_T20EPT_20250731T131905_L2A.json": ("earth-search-c1", 1000),
    "planetary-computer/S2A_MSIL2A_20190101T000001_R116_T58UFE_20201007T214651.json":
        ("planetary-computer", 0),
    "copernicus/S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914.json":
        ("copernicus", 1000),
}
#: Real Landsat C2 L2 items: file -> (WRS-2 tile, EPSG, bands the item holds). Every
#: provider keys the assets by common name; USGS declares no raster metadata (scale and
#: offset then come from the sensor table), Landsat 7 ETM+ has no coastal band.
LS_ALL = ("coastal", "blue", "green", "red", "nir08", "swir16", "swir22", "qa_pixel")
REAL_LANDSAT = {
    "usgs-landsat/LC08_L2SP_028030_20200114_20200824_02_T1_SR.json":
        ("WRS2-028030", 32615, LS_ALL),
    "usgs-landsat/LE07_L2SP_044033_20210329_20210424_02_T1_SR.json":
        ("WRS2-044033", 32610, LS_ALL[1:]),
    "planetary-computer-landsat/LC09_L2SR_084056_20250722_02_T1.json":
        ("WRS2-084056", 32659, LS_ALL),
    "earth-search-landsat/LC08_L2SP_033032_20231008_02_T1.json":
        ("WRS2-033032", 32613, LS_ALL),
}
REAL_DIR = os.environ.get("GEOFM_STAC_ITEMS")
real = pytest.mark.skipif(not REAL_DIR, reason="set GEOFM_STAC_ITEMS to a folder of the "
                          "real items listed in tests/data/stac_items/README.md")


def _real_item(rel: str) -> dict[str, Any]:
    """The published item ``rel`` under ``$GEOFM_STAC_ITEMS``, parsed, unchanged."""
    path = Path(str(REAL_DIR)) / rel
    if not path.is_file():
        pytest.skip(f"{path} is not there")
    return json.loads(path.read_text())


@real
@pytest.mark.parametrize("rel", list(REAL))
def test_real_published_items_chip_unchanged(rel, tmp_path):
    name, offset = REAL[rel]
    original = _real_item(rel)
    scene = scene_from_dict(original, base=None, source=rel)
    assert {b: scene.bands[b].key for b in S2_USED + ("scl",)} == \
        {b: KEYS[name][b] for b in S2_USED + ("scl",)}
    assert scene.harmonisation.offset_dn == offset
    item = localise(original, tmp_path / "cogs", _arrays(KEYS[name], offset))
    root, _ = _chip_one(item, tmp_path, name)
    scene_id, meta = _meta(root)
    first = meta.index[1]
    array, _ = read_chip_array(RunRoot.of(root).chip_path(scene_id, first), ["blue"])
    np.testing.assert_array_equal(array[0], TRUTH["blue"][:32, 32:])


@real
def test_real_earth_search_v1_and_c1_of_one_acquisition_give_equal_chips(tmp_path):
    """S2B 20EPT 2025-07-31, published twice by Earth Search: v1 with the +1000 already
    removed (its flag true), C1 as ESA wrote it. Same chip ids, footprints, clouds and
    harmonised DNs, equal to what was written."""
    pair = ["earth-search/S2B_20EPT_20250731_0_L2A.json",
            "earth-search-c1/S2B_T20EPT_20250731T131905_L2A.json"]
    metas, chips = [], []
    for rel in pair:
        name, offset = REAL[rel]
        item = localise(_real_item(rel), tmp_path / "cogs", _arrays(KEYS[name], offset))
        root, rec = _chip_one(item, tmp_path, name)
        scene, meta = _meta(root)
        assert rec.extra["harmonisation_detail"][scene]["offset_dn"] == offset, name
        metas.append(meta)
        chips.append({cid: read_chip_array(RunRoot.of(root).chip_path(scene, cid),
                                           list(S2_USED))[0] for cid in meta.index})
    v1, c1 = metas
    assert list(v1.index) == list(c1.index) == ["20EPT_32_0000_0000", "20EPT_32_0000_0001",
                                                "20EPT_32_0001_0000", "20EPT_32_0001_0001"]
    columns = ["minx", "miny", "maxx", "maxy", "cloud_fraction", "nodata_fraction"]
    pd.testing.assert_frame_equal(v1[columns], c1[columns])
    assert v1.loc["20EPT_32_0000_0000", "cloud_fraction"] == 1.0
    for cid in v1.index:
        np.testing.assert_array_equal(chips[0][cid], chips[1][cid], err_msg=cid)
    np.testing.assert_array_equal(chips[1]["20EPT_32_0000_0001"][0], TRUTH["blue"][:32, 32:])


@real
@pytest.mark.parametrize("sensor", ["sentinel-2", "landsat"])
def test_real_items_from_a_local_stac_api_give_the_chips_of_items(sensor, tmp_path,
                                                                  stac_server, same_chips):
    """The real items of one sensor served by ``rustac serve``: ``geofm chip --stac``
    gives exactly the chips ``--items`` gives for the items it keeps. Of the Earth Search
    v1 / C1 copies of one acquisition it keeps one (same baseline: the newest
    ``updated``, v1 here)."""
    from geofm.cli import main

    served, kept = [], tmp_path / "kept"
    kept.mkdir()
    for rel in REAL if sensor == "sentinel-2" else REAL_LANDSAT:
        if sensor == "sentinel-2":
            name, offset = REAL[rel]
            arrays = _arrays(KEYS[name], offset)
        else:
            name, arrays = "landsat", _landsat_arrays(REAL_LANDSAT[rel][2])
        item = localise(_real_item(rel), tmp_path / "cogs", arrays)
        served.append(item)
        if name != "earth-search-c1":
            (kept / f"{item['id']}.json").write_text(json.dumps(item))
    collections = sorted({item["collection"] for item in served})
    common = ["--chip-size", "32" if sensor == "sentinel-2" else "16", "--max-cloud", "1",
              "--max-nodata", "1", "--no-progress"]
    with stac_server.serve(tmp_path / "api", served, collections) as url:
        assert main(["chip", "--stac", url, "--collection", ",".join(collections),
                     "--datetime", "2019-01-01/2025-12-31", "--out", str(tmp_path / "stac"),
                     *common]) == 0
    assert main(["chip", "--items", str(kept), "--out", str(tmp_path / "items"), *common]) == 0
    scenes = same_chips(tmp_path / "stac", tmp_path / "items", ["blue", "red"])
    assert scenes == sorted(p.stem for p in kept.iterdir())
    (saved,) = RunRoot.of(tmp_path / "stac").items_dir.glob("search-*.json")
    assert json.loads(saved.read_text())["geofm:search"]["duplicates"] == (
        [{"dropped": "S2B_T20EPT_20250731T131905_L2A", "kept": "S2B_20EPT_20250731_0_L2A"}]
        if sensor == "sentinel-2" else [])


#: Landsat QA_PIXEL words: clear (bit 6), cloud (bits 3 and 6), fill (bit 0).
QA_CLEAR, QA_CLOUD, QA_FILL = 1 << 6, (1 << 6) | (1 << 3), 1


def _landsat_arrays(bands: tuple[str, ...]) -> dict[str, np.ndarray]:
    """DN for every reflectance band, and a QA_PIXEL with chip (0, 0) cloudy and half of
    chip (1, 1) fill, for 16-pixel chips."""
    rng = np.random.default_rng(11)
    arrays = {b: rng.integers(7000, 40000, (32, 32)).astype(np.uint16)
              for b in bands if b != "qa_pixel"}
    qa = np.full((32, 32), QA_CLEAR, np.uint16)
    qa[:16, :16] = QA_CLOUD
    qa[16:, 16:][:, :8] = QA_FILL
    arrays["qa_pixel"] = qa
    return arrays


@real
@pytest.mark.parametrize("rel", list(REAL_LANDSAT))
def test_real_landsat_items_chip_unchanged(rel, tmp_path):
    tile, epsg, held = REAL_LANDSAT[rel]
    original = _real_item(rel)
    scene = scene_from_dict(original, base=None, source=rel)
    assert (scene.sensor, scene.tile, scene.epsg) == ("landsat-c2-l2", tile, epsg)
    assert {b: scene.bands[b].key for b in scene.bands} == {b: b for b in held}
    for b in held[:-1]:
        band = scene.bands[b]
        assert (band.scale, band.nodata) == (pytest.approx(2.75e-5), 0), b
        assert band.offset in (None, pytest.approx(-0.2)), b  # declared, or not at all
    assert scene.bands["qa_pixel"].nodata == 1
    assert scene.harmonisation.offset_dn == 0
    arrays = _landsat_arrays(held)
    item = localise(original, tmp_path / "cogs", arrays)
    items = tmp_path / "item.json"
    items.write_text(json.dumps(item))
    rec = chip(items, tmp_path / "root", chip_size=16, bands=",".join(held[:-1]),
               max_cloud=1.0, max_nodata=1.0, progress=False)
    assert rec.failures == [] and rec.counts["valid_chips"] == 4
    scene_id, meta = _meta(tmp_path / "root")
    assert rec.extra["harmonisation"][scene_id].startswith("none (not Sentinel-2")
    assert meta.loc[f"{tile}_16_0000_0000", "cloud_fraction"] == 1.0
    assert meta.loc[f"{tile}_16_0000_0001", "cloud_fraction"] == 0.0
    assert meta.loc[f"{tile}_16_0001_0001", "nodata_fraction"] == 0.5
    assert meta.loc[f"{tile}_16_0001_0000", "nodata_fraction"] == 0.0
    path = RunRoot.of(tmp_path / "root").chip_path(scene_id, f"{tile}_16_0000_0001")
    array, _ = read_chip_array(path, list(held[:-1]))
    for i, b in enumerate(held[:-1]):
        np.testing.assert_array_equal(array[i], arrays[b][:16, 16:], err_msg=b)
    ds = open_chip(path)
    assert float(ds["blue"].attrs["scale_factor"]) == pytest.approx(2.75e-5)
    assert float(ds["blue"].attrs["add_offset"]) == pytest.approx(-0.2)


@real
@pytest.mark.parametrize("rel", list(REAL) + list(REAL_LANDSAT))
def test_real_items_chip_through_the_cli(rel, tmp_path, capsys):
    """``geofm chip --items`` on each original item (hrefs local, in a copy): exit 0 and
    no failed scene in run.json, with the CLI's default bands."""
    from geofm.cli import main

    original = _real_item(rel)
    if rel in REAL:
        name, offset = REAL[rel]
        arrays, size = _arrays(KEYS[name], offset), "32"
    else:
        arrays, size = _landsat_arrays(REAL_LANDSAT[rel][2]), "16"
    item = localise(original, tmp_path / "cogs", arrays)
    (tmp_path / "items").mkdir()
    (tmp_path / "items" / f"{original['id']}.json").write_text(json.dumps(item))
    root = tmp_path / "root"
    assert main(["chip", "--items", str(tmp_path / "items"), "--out", str(root),
                 "--chip-size", size, "--max-cloud", "1", "--max-nodata", "1",
                 "--no-progress"]) == 0, capsys.readouterr()
    run = json.loads((root / "run.json").read_text())["stages"]["chip"]
    assert run["failures"] == [] and run["counts"]["failed_scenes"] == 0
    assert run["counts"]["scenes"] == 1 and run["counts"]["valid_chips"] == 4


@real
def test_real_naip_item_is_refused_with_the_reason():
    original = _real_item("planetary-computer-naip/"
                          "mt_m_4911664_se_11_060_20231117_20240103.json")
    with pytest.raises(ItemError, match="collection 'naip' is not one geofm can chip yet: "
                       "NAIP items hold all four bands in one multi-band 'image'") as err:
        scene_from_dict(original, base=None, source="naip")
    assert err.value.field == "collection"


def test_landsat_fixed_grid_origin_keeps_ids_across_shifted_acquisitions(tmp_path):
    """Landsat rasters of one path/row start at different corners on different dates;
    a --grid-origin on the 30 m lattice (x, y = 15 mod 30) gives one footprint one id."""
    qa = np.full((32, 32), 1 << 6, np.uint16)
    dn = {k: np.full((32, 32), 9000, np.uint16) for k in LS_BANDS}
    ids = []
    for shift in (0, 3):  # the second acquisition starts 3 pixels further east and south
        item = usgs_landsat()
        item["id"] += f"_{shift}"
        t = item["properties"]["proj:transform"]
        item["properties"]["proj:transform"] = [30, 0, t[2] + 30 * shift, 0, -30,
                                                t[5] - 30 * shift]
        item = localise(item, tmp_path / "cogs", {**dn, "qa_pixel": qa})
        (tmp_path / f"i{shift}.json").write_text(json.dumps(item))
        rec = chip(tmp_path / f"i{shift}.json", tmp_path / f"r{shift}", chip_size=8,
                   grid_origin=(15.0, 9300015.0), progress=False)
        assert rec.failures == []
        _, meta = _meta(tmp_path / f"r{shift}")
        ids.append(meta[["minx", "maxy"]].apply(tuple, axis=1).to_dict())
    common = set(ids[0]) & set(ids[1])
    assert len(common) >= 4
    assert all(ids[0][c] == ids[1][c] for c in common)
