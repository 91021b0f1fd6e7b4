"""``geofm search``: similarity search over an indexed run.

The library function and its command line live in :mod:`geofm.search.stage`.
"""

from geofm.search.stage import add_arguments, main, run_cli, search

__all__ = ["add_arguments", "main", "run_cli", "search"]
