"""``geofm finetune``: train a segmentation or classification head on the frozen encoder.

The library function and its command line live in :mod:`geofm.finetune.stage`.
"""

from geofm.finetune.stage import (
    add_arguments,
    balanced_sample_weights,
    finetune,
    load_encoder_for,
    main,
    run_cli,
)

__all__ = ["add_arguments", "balanced_sample_weights", "finetune", "load_encoder_for", "main",
           "run_cli"]
