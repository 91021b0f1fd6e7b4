"""Stage 3, analyze: PCA / t-SNE, cosine to baseline, harmonic change detection, monitoring.

Library API: :func:`analyze` (the stage: a reference analysis first, incremental updates
after, see :mod:`geofm.analyze.stage`), :func:`list_alerts` (what each update found,
:mod:`geofm.analyze.alerts`), and the building blocks
:func:`~geofm.analyze.reduce.fit_pca` / :class:`~geofm.analyze.reduce.PCAModel`,
:func:`~geofm.analyze.harmonic.harmonic_design`,
:func:`~geofm.analyze.harmonic.batched_lasso`,
:func:`~geofm.analyze.change.detect_changes` (= :func:`~geofm.analyze.change.fit_seasonal`
+ :meth:`~geofm.analyze.change.SeasonalFit.score` + :func:`~geofm.analyze.change.assess`),
:mod:`~geofm.analyze.reference`, :mod:`~geofm.analyze.overlaps` (several tiles as one
region) and :mod:`~geofm.analyze.rasters` (change-map COGs and their mosaic).
"""

from geofm.analyze.alerts import list_alerts
from geofm.analyze.stage import add_arguments, analyze, main, run_cli

__all__ = ["add_arguments", "analyze", "list_alerts", "main", "run_cli"]
