"""Stage 3, analyze: PCA / t-SNE, cosine to baseline, harmonic change detection.

Library API: :func:`analyze` (the stage), and the building blocks
:func:`~geofm.analyze.reduce.fit_pca` / :class:`~geofm.analyze.reduce.PCAModel`,
:func:`~geofm.analyze.harmonic.harmonic_design`,
:func:`~geofm.analyze.harmonic.batched_lasso`,
:func:`~geofm.analyze.change.detect_changes`.
"""

from geofm.analyze.stage import add_arguments, analyze, main, run_cli

__all__ = ["add_arguments", "analyze", "main", "run_cli"]
