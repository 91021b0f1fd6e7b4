"""``pretrain``: Clay's masked-autoencoder objective on a run root's own chips.

Library API: :func:`pretrain`; CLI: ``geofm pretrain`` (:func:`add_arguments`,
:func:`run_cli`); entry point :func:`main`. The objective and the decoder are in
:mod:`geofm.pretrain.mae`, the training loop, resume and outputs in
:mod:`geofm.pretrain.stage`.
"""

from geofm.pretrain.stage import add_arguments, main, pretrain, run_cli

__all__ = ["add_arguments", "main", "pretrain", "run_cli"]
