"""Stage ``index``: consolidate a run into GeoParquet and a LanceDB table for search.

The library function and its command line live in :mod:`geofm.index.stage`.
"""

from geofm.index.stage import ANN_MIN_ROWS, add_arguments, build_index, main, run_cli

__all__ = ["ANN_MIN_ROWS", "add_arguments", "build_index", "main", "run_cli"]
