"""Write the reference chip ``reference.nc`` with ``geofm.chipfile.write_chip``.

``reference.nc`` was written by this script at commit fd09522 (the per-chip writer
before the chip-throughput work, issue 18) and is kept so that
``tests/test_chipfile.py`` can prove a chip written by today's writer holds the same
values, coordinates, CRS, band names, units and attributes. Re-running it overwrites the
reference with the *current* writer: only do that on purpose.

Usage::

    PYTHONPATH=. python tests/data/chip_reference/make_reference.py
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from geofm.chipfile import write_chip

HERE = Path(__file__).parent
BANDS = ("blue", "green", "red", "nir", "swir16")


def reference_inputs() -> dict:
    """The inputs of the reference chip (the test writes the same chip again)."""
    rng = np.random.default_rng(18)
    pixels = rng.integers(1, 10000, size=(len(BANDS), 8, 6)).astype(np.uint16)
    pixels[2, 1, 1] = 0  # nodata in red
    pixels[:, 7, 0] = 0  # nodata in every band
    return {"pixels": pixels, "bands": BANDS,
            "x": 399_965.0 + 10 * np.arange(6), "y": 5_300_035.0 - 10 * np.arange(8),
            "epsg": 32632, "date": datetime(2023, 7, 14, 10, 20, 31, tzinfo=UTC),
            "nodata": 0, "scale": 1e-4, "offset": 0.0,
            "attrs": {"chip_id": "32UMU_8_0012_0034", "scene_id": "S2B_32UMU_20230714_0_L2A",
                      "sensor": "sentinel-2-l2a", "tile": "32UMU",
                      "harmonisation": "offset removed (baseline 05.09)"}}


if __name__ == "__main__":
    inputs = reference_inputs()
    write_chip(HERE / "reference.nc", inputs.pop("pixels"), **inputs)
    print(HERE / "reference.nc")
