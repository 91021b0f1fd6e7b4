"""Which asset of a STAC item holds a band: by the item's own metadata, not by its key.

The one band resolver of geofm: chipping (and anything else that needs band -> asset)
asks :func:`resolve_bands`. For each band of the sensor (:mod:`geofm.sensors`) it picks
one asset of the item, in this order:

1. **By band metadata.** Assets that hold exactly one band, described by
   ``eo:bands`` (STAC 1.0) or ``bands`` (STAC 1.1), whose ``name`` is the band's name or
   one of its provider names (``B02``, ``SR_B2``, ``OLI_B2``), or, failing that, whose common name
   (``common_name`` / ``eo:common_name``) is the band's name (``blue``). A common name is
   used only when it is unambiguous: Earth Search and Planetary Computer call B05, B06,
   B07 (and PC even B8A) all ``rededge``, so those are found by ``name``.
2. **By key (the documented alias table).** Assets without band metadata whose key is
   the band's name or an alias, in any case, optionally with a resolution suffix:

   ========================  ==========================================================
   provider                  asset keys
   ========================  ==========================================================
   Earth Search v1, C1       ``blue``, ``nir08``, ``scl`` (the band names)
   Planetary Computer        ``B02``, ``B8A``, ``SCL`` (ESA band names)
   Copernicus Data Space     ``B02_10m``, ``B02_20m``, ``SCL_20m`` (name + ``_<res>m``)
   USGS Landsat C2 L2        ``blue``, ``qa_pixel``; older items ``SR_B2.TIF``
   ========================  ==========================================================

Assets with roles ``visual``, ``thumbnail``, ``overview`` or ``metadata`` are never
used. When several assets hold the band (CDSE's ``B02_10m`` / ``B02_20m`` /
``B02_60m``, Earth Search v1's ``blue`` COG and ``blue-jp2``), the finest resolution
wins, then a GeoTIFF over JPEG 2000, then role ``sampling:original``, then the key that
is exactly a band name.

The chosen asset's radiometry comes from its metadata where given: ``raster:bands[0]``
(STAC 1.0: ``scale``, ``offset``, ``nodata``, ``data_type``) or the STAC 1.1 fields on
the asset or its band (``raster:scale``, ``raster:offset``, ``nodata``,
``data_type``); the sensor table fills what is missing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from geofm.sensors import Band, Sensor

#: Asset roles that never hold a band to chip.
SKIP_ROLES = frozenset({"visual", "thumbnail", "overview", "metadata", "tiles"})
_RES_SUFFIX = re.compile(r"^(?P<stem>.+?)[_-](?P<res>\d+)m$", re.IGNORECASE)
_FILE_SUFFIX = re.compile(r"\.(tif|tiff|jp2)$", re.IGNORECASE)


@dataclass(frozen=True)
class AssetBand:
    """The asset that holds one band of a scene, with its radiometry.

    Attributes:
        band: the band's name in geofm (``"blue"``).
        key: the item's asset key (``"B02_10m"``).
        href: resolved path or URI of the asset.
        how: how it was found, for messages and ``run.json`` (``"eo:bands name B02"``,
            ``"common name blue"``, ``"asset key B02_10m"``).
        resolution: ground sampling distance from the metadata, metres (``None``: unknown).
        scale: DN -> reflectance scale (``raster:bands``, else the sensor table).
        offset: DN -> reflectance offset as declared (``raster:bands``), else ``None``.
        nodata: the asset's nodata (metadata, else the sensor table).
        data_type: declared data type (``"uint16"``) or ``None``.
    """

    band: str
    key: str
    href: str
    how: str
    resolution: float | None
    scale: float
    offset: float | None
    nodata: float | None
    data_type: str | None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def band_entries(asset: dict[str, Any]) -> list[dict[str, Any]]:
    """The asset's band descriptions: STAC 1.1 ``bands`` or STAC 1.0 ``eo:bands`` dicts."""
    entries = asset.get("bands")
    if not isinstance(entries, list):
        entries = asset.get("eo:bands")
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _common_name(entry: dict[str, Any]) -> str | None:
    value = entry.get("eo:common_name", entry.get("common_name"))
    return value if isinstance(value, str) else None


def _resolution(key: str, asset: dict[str, Any]) -> float | None:
    """Pixel size, metres: ``gsd``, raster spatial resolution, transform or key suffix."""
    for value in (asset.get("gsd"), asset.get("raster:spatial_resolution")):
        if (number := _number(value)) is not None and number > 0:
            return number
    raster = asset.get("raster:bands")
    if isinstance(raster, list) and raster and isinstance(raster[0], dict):
        if (number := _number(raster[0].get("spatial_resolution"))) is not None and number > 0:
            return number
    transform = asset.get("proj:transform")
    if isinstance(transform, list) and transform and (number := _number(transform[0])):
        return abs(number)
    match = _RES_SUFFIX.match(_FILE_SUFFIX.sub("", key))
    return float(match["res"]) if match else None


def _radiometry(asset: dict[str, Any], band: Band) -> tuple[float, float | None,
                                                            float | None, str | None]:
    """``(scale, declared offset, nodata, data_type)`` of a single-band asset."""
    raster = asset.get("raster:bands")
    first = raster[0] if isinstance(raster, list) and raster and isinstance(raster[0], dict) \
        else {}
    entries = band_entries(asset)
    entry = entries[0] if len(entries) == 1 else {}

    def pick(*names: str) -> Any:
        for where in (first, entry, asset):
            for name in names:
                if name in where and where[name] is not None:
                    return where[name]
        return None

    scale = _number(pick("scale", "raster:scale"))
    offset = _number(pick("offset", "raster:offset"))
    nodata_value = pick("nodata")
    nodata = _number(nodata_value) if nodata_value is not None else band.nodata
    data_type = pick("data_type")
    return (scale if scale is not None else band.scale, offset, nodata,
            data_type if isinstance(data_type, str) else None)


def _key_matches(key: str, band: Band) -> bool:
    """Alias-table fallback: the key is a band name or alias, maybe ``_<res>m`` / ``.TIF``."""
    stem = _FILE_SUFFIX.sub("", key)
    match = _RES_SUFFIX.match(stem)
    candidates = {stem.lower()} | ({match["stem"].lower()} if match else set())
    return any(n.lower() in candidates for n in band.names)


def _usable(asset: Any) -> bool:
    if not isinstance(asset, dict):
        return False
    roles = asset.get("roles")
    return not (isinstance(roles, list) and SKIP_ROLES.intersection(r for r in roles
                                                                     if isinstance(r, str)))


def _candidates(assets: dict[str, Any], band: Band, sensor: Sensor) -> list[tuple[str, str]]:
    """``(key, how)`` of every asset that holds ``band``, by the first rule that finds any."""
    by_name, by_common, by_key = [], [], []
    common_counts: dict[str, set[str]] = {}
    for key, asset in assets.items():
        if not _usable(asset):
            continue
        entries = band_entries(asset)
        if len(entries) == 1:
            name = entries[0].get("name")
            common = _common_name(entries[0])
            if isinstance(name, str) and name.lower() in {n.lower() for n in band.names}:
                by_name.append((key, f"band name {name}"))
            if common is not None:
                common_counts.setdefault(common, set()).add(
                    str(entries[0].get("name", key)).lower())
                if common == band.name:
                    by_common.append((key, f"common name {common}"))
        elif not entries and _key_matches(key, band):
            by_key.append((key, f"asset key {key}"))
    if by_name:
        return by_name
    # a common name shared by several bands of the item (Earth Search's "rededge") says nothing
    if by_common and len(common_counts.get(band.name, set())) == 1:
        return by_common
    return by_key or [(k, h) for k, h in by_common if _key_matches(k, band)]


def _rank(key: str, asset: dict[str, Any], band: Band) -> tuple[float, int, int, int, str]:
    resolution = _resolution(key, asset)
    media = str(asset.get("type", "")).lower()
    href = str(asset.get("href", "")).lower()
    jp2 = int("jp2" in media or href.endswith(".jp2"))
    roles = asset.get("roles")
    roles = roles if isinstance(roles, list) else []
    original = 0 if "sampling:original" in roles else 1
    exact = 0 if key in band.names else 1
    return (resolution if resolution is not None else math.inf, jp2, original, exact, key)


def resolve_bands(assets: dict[str, Any], hrefs: dict[str, str],
                  sensor: Sensor) -> dict[str, AssetBand]:
    """Find the asset of every band of ``sensor`` that the item has.

    Args:
        assets: the item's ``assets`` (checked: objects with an href).
        hrefs: asset key -> resolved href.
        sensor: the item's sensor.

    Returns:
        band name -> :class:`AssetBand`, for the bands the item holds (a band it does not
        hold is absent; asking for it is an error where it is asked for).
    """
    found: dict[str, AssetBand] = {}
    for band in sensor.bands:
        candidates = _candidates(assets, band, sensor)
        if not candidates:
            continue
        key, how = min(candidates, key=lambda c: _rank(c[0], assets[c[0]], band))
        asset = assets[key]
        scale, offset, nodata, data_type = _radiometry(asset, band)
        found[band.name] = AssetBand(band=band.name, key=key, href=hrefs[key], how=how,
                                     resolution=_resolution(key, asset), scale=scale,
                                     offset=offset, nodata=nodata, data_type=data_type)
    return found
