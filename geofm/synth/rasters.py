"""Writing the synthetic rasters: Cloud-Optimised GeoTIFFs with stable bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geofm.io import write_bytes_atomic
from geofm.synth.grid import EPSG


def write_cog(path: Path, array: np.ndarray, transform: list[float], *, nodata: int = 0) -> Path:
    """Write a single-band COG (deflate) in EPSG:32633, atomically.

    The COG is built in memory and written in one go. GDAL writes no timestamp into
    GeoTIFFs, so equal arrays give equal bytes.

    Args:
        path: destination ``.tif``.
        array: uint8 or uint16 [rows, cols].
        transform: affine ``[a, b, c, d, e, f]`` (rasterio order), metres.
        nodata: nodata value stored in the file.

    Returns:
        ``path``.
    """
    from rasterio.io import MemoryFile
    from rasterio.transform import Affine

    rows, cols = array.shape
    with MemoryFile() as memfile:
        with memfile.open(driver="COG", width=cols, height=rows, count=1,
                          dtype=array.dtype.name, crs=f"EPSG:{EPSG}",
                          transform=Affine(*transform), nodata=nodata, compress="deflate",
                          predictor=2) as ds:
            ds.write(array, 1)
        data = memfile.read()
    return write_bytes_atomic(path, data)
