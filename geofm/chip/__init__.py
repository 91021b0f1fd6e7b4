"""Stage 1, ``chip``: STAC scenes -> stable chip grid, screened NetCDF chips, thumbnails, meta.

Modules: ``items`` (load STAC items), ``grid`` (chip grid and ids), ``read`` (aligned
windowed reading), ``screen`` (SCL cloud/nodata), ``thumbs`` (PNG), ``scene`` (one
scene), ``stage`` (the library function and CLI).
"""

from geofm.chip.grid import chip_id
from geofm.chip.stage import add_arguments, chip, coverage_summary, main, run_cli

__all__ = ["add_arguments", "chip", "chip_id", "coverage_summary", "main", "run_cli"]
