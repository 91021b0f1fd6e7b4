"""Stage 2, ``embed``: valid chips -> Clay CLS and mean-pooled patch embeddings per scene.

Library API: :func:`embed`; CLI: ``geofm embed`` (:func:`add_arguments`, :func:`run_cli`);
processing-job entry point: :func:`main`. See :mod:`geofm.embed.stage` for the rules
(batching, resumability, failures) and :mod:`geofm.model.chips` for the invalid-pixel rule.
"""

from geofm.embed.stage import add_arguments, embed, load_model, main, run_cli
from geofm.model.chips import DEFAULT_MAX_INVALID

__all__ = ["DEFAULT_MAX_INVALID", "add_arguments", "embed", "load_model", "main", "run_cli"]
