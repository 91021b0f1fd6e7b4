"""STAC Items in the Earth Search v1 ``sentinel-2-l2a`` shape, as plain dicts."""

from __future__ import annotations

import datetime as dt
from typing import Any

from geofm import __version__
from geofm.sensors import get_sensor
from geofm.synth.grid import EPSG, LATITUDE_BAND, UTM_ZONE, Tile

EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
#: Sentinel-2 band numbers and full widths at half maximum (um) per asset key.
_S2_BAND = {
    "coastal": ("B01", 0.027), "blue": ("B02", 0.098), "green": ("B03", 0.045),
    "red": ("B04", 0.038), "rededge1": ("B05", 0.019), "rededge2": ("B06", 0.018),
    "rededge3": ("B07", 0.028), "nir": ("B08", 0.145), "nir08": ("B8A", 0.033),
    "nir09": ("B09", 0.026), "swir16": ("B11", 0.143), "swir22": ("B12", 0.242),
}


def item_id(tile: Tile, date: dt.date, platform: str) -> str:
    """Earth Search style id, e.g. ``S2B_33UUP_20210105_0_L2A``."""
    return f"S2{platform[-1].upper()}_{tile.code}_{date:%Y%m%d}_0_L2A"


def asset_href(item: str, key: str) -> str:
    """Relative href of an asset from the item JSON in ``items/``."""
    return f"../assets/{item}/{key}.tif"


def _asset(item: str, key: str, tile: Tile, *, baseline_offset: int) -> dict[str, Any]:
    band = get_sensor("sentinel-2-l2a").band(key)
    res = int(band.resolution)
    rows, cols = tile.shape(res)
    asset: dict[str, Any] = {
        "href": asset_href(item, key),
        "type": COG_TYPE,
        "gsd": res,
        "proj:shape": [rows, cols],
        "proj:transform": tile.transform(res),
    }
    if band.is_mask:
        asset.update({
            "title": "Scene classification map (SCL)",
            "roles": ["data"],
            "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": res,
                              "unit": "1"}],
        })
        return asset
    code, fwhm = _S2_BAND[key]
    title = f"{key.capitalize()} ({code}) - {res}m"
    asset.update({
        "title": title,
        "roles": ["data", "reflectance"],
        "eo:bands": [{
            "name": key,
            "common_name": "rededge" if key.startswith("rededge") else key,
            "description": f"{key} (band {code[1:].lstrip('0')})",
            "center_wavelength": band.wavelength, "full_width_half_max": fwhm}],
        "raster:bands": [{"nodata": 0, "data_type": "uint16", "bits_per_sample": 15,
                          "spatial_resolution": res, "scale": band.scale,
                          "offset": round(-baseline_offset * band.scale, 6) + 0.0}],
    })
    return asset


def make_item(*, tile: Tile, date: dt.date, time: str, platform: str, baseline: str,
              baseline_offset: int, cloud_cover: float, nodata_percentage: float,
              ) -> dict[str, Any]:
    """Build one STAC Item (a JSON-ready dict) for ``tile`` on ``date``.

    Args:
        tile: the tile (grid, footprint).
        date: acquisition day.
        time: UTC time of day, ``HH:MM:SS.ffffffZ``.
        platform: ``"sentinel-2a"`` or ``"sentinel-2b"``.
        baseline: processing baseline, e.g. ``"04.00"``.
        baseline_offset: DN offset present in the rasters (1000 from 04.00, else 0).
        cloud_cover: SCL cloud share of the valid pixels, percent.
        nodata_percentage: nodata share of the tile, percent.

    Returns:
        The item as a dict (GeoJSON Feature, STAC 1.0.0).
    """
    ident = item_id(tile, date, platform)
    ring, bbox = tile.footprint
    keys = [b.name for b in get_sensor("sentinel-2-l2a").bands]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": EXTENSIONS,
        "id": ident,
        "collection": "sentinel-2-l2a",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": bbox,
        "properties": {
            "datetime": f"{date.isoformat()}T{time}",
            "platform": platform,
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "eo:cloud_cover": cloud_cover,
            "proj:epsg": EPSG,
            "proj:code": f"EPSG:{EPSG}",
            "mgrs:utm_zone": UTM_ZONE,
            "mgrs:latitude_band": LATITUDE_BAND,
            "mgrs:grid_square": tile.grid_square,
            "grid:code": f"MGRS-{tile.code}",
            "s2:processing_baseline": baseline,
            "s2:product_type": "S2MSI2A",
            "s2:nodata_pixel_percentage": nodata_percentage,
            "processing:software": {"geofm.synth": __version__},
            "earthsearch:boa_offset_applied": False,
        },
        "links": [],
        "assets": {key: _asset(ident, key, tile, baseline_offset=baseline_offset)
                   for key in keys},
    }
