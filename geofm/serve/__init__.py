"""``geofm serve``: the analyst's map over a run root, in the browser.

A local, read-only web app: every chip footprint of the run on a map coloured by change
status or change date, the list of changed chips, a chip page (``/?chip=CHIP_ID``) with
the monitored signal, its seasonal fit, threshold band and change date, before/after
thumbnails and the most similar chips, and a search panel with the options of
``geofm search`` (through the same :func:`geofm.search.search`).

It needs no internet: geofm serves the chip layer, thumbnails and a vendored Leaflet
build itself; an online basemap (OpenStreetMap) is an option in the page, off by
default. Nothing is written into the run root. See :mod:`geofm.serve.app` for the
routes and :mod:`geofm.serve.data` for what is read.
"""

from geofm.serve.app import make_server, serve
from geofm.serve.stage import add_arguments, main, run_cli

__all__ = ["serve", "make_server", "add_arguments", "run_cli", "main"]
