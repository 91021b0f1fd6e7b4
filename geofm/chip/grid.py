"""Chip ids and footprints of the chip grid.

The grid itself (cells of ``chip_size`` pixels counted from a fixed origin, and the
pixel grid of each cell) is :class:`geofm.grid.ChipGrid`; this module names its cells
(:func:`chip_id`: the same footprint gets the same id in every acquisition and every
run), gives their WGS84 footprints and reads the AOI that selects them.
"""

from __future__ import annotations

import numpy as np

from geofm.exceptions import GeofmValueError


def chip_id(tile: str, chip_size: int, row: int, col: int) -> str:
    """The stable chip id ``"{tile}_{chip_size}_{row:04d}_{col:04d}"``."""
    return f"{tile}_{chip_size}_{row:04d}_{col:04d}"


def footprints_wgs84(bounds: np.ndarray, epsg: int, *, densify: int = 4) -> list:  # type: ignore[type-arg]
    """WGS84 footprint polygons of native-CRS boxes.

    Args:
        bounds: float64 [N, 4] ``minx, miny, maxx, maxy`` in EPSG:``epsg``, metres.
        epsg: native CRS.
        densify: points per edge (edges of UTM boxes are slightly curved in lon/lat).

    Returns:
        N shapely polygons, lon/lat (x = longitude).
    """
    from pyproj import Transformer
    from shapely import polygons

    bounds = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    t = np.linspace(0.0, 1.0, densify, endpoint=False)
    minx, miny, maxx, maxy = (bounds[:, i : i + 1] for i in range(4))
    xs = np.concatenate([minx + (maxx - minx) * t, np.broadcast_to(maxx, (len(bounds), densify)),
                         maxx - (maxx - minx) * t, np.broadcast_to(minx, (len(bounds), densify))],
                        axis=1)
    ys = np.concatenate([np.broadcast_to(maxy, (len(bounds), densify)), maxy - (maxy - miny) * t,
                         np.broadcast_to(miny, (len(bounds), densify)), miny + (maxy - miny) * t],
                        axis=1)
    transformer = Transformer.from_crs(epsg, 4326, always_xy=True)
    lon, lat = transformer.transform(xs, ys)
    return list(polygons(np.stack([lon, lat], axis=-1)))


def load_aoi(path: str, epsg: int):  # type: ignore[no-untyped-def]
    """Union of the polygons of a GeoJSON AOI, reprojected to EPSG:``epsg``.

    A file without a CRS is read as WGS84 (the GeoJSON default).

    Raises:
        GeofmValueError: the file is unreadable or holds no polygon.
    """
    import geopandas as gpd

    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # pyogrio/GDAL raise several types for unreadable files
        raise GeofmValueError(f"cannot read AOI {path}: {exc}; pass a GeoJSON file with "
                              "Polygon or MultiPolygon features") from None
    if frame.crs is None:
        frame = frame.set_crs(4326)
    frame = frame[frame.geometry.notna() & frame.geom_type.isin(["Polygon", "MultiPolygon"])]
    if frame.empty:
        raise GeofmValueError(f"AOI {path} holds no Polygon or MultiPolygon; pass a GeoJSON "
                              "with at least one polygon")
    return frame.to_crs(epsg).geometry.union_all()
