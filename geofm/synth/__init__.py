"""``geofm synth``: a synthetic Sentinel-2 L2A time series with planted truth.

Modules: :mod:`~geofm.synth.grid` (tiles, UTM grid), :mod:`~geofm.synth.landcover`
(cells and classes), :mod:`~geofm.synth.spectra` (class spectra, seasons),
:mod:`~geofm.synth.clouds` (clouds, shadows, swaths, SCL), :mod:`~geofm.synth.timeline`
(dates, baselines, events), :mod:`~geofm.synth.stac` (STAC Items),
:mod:`~geofm.synth.rasters` (COG writing), :mod:`~geofm.synth.core` (``synthesize``),
:mod:`~geofm.synth.cli` (the subcommand).
"""

from geofm.synth.cli import add_arguments, main, run_cli
from geofm.synth.core import describe, synthesize

__all__ = ["add_arguments", "describe", "main", "run_cli", "synthesize"]
