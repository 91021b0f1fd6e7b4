"""The Clay encoder and its inputs.

Public API::

    from geofm.model import Embedder, load_encoder, make_datacube
    model = load_encoder("clay-v1.5.ckpt", device="cuda")   # or preset="tiny": random
    cube = make_datacube(dn, sensor="sentinel-2-l2a", bands=["blue", "green", "red", "nir"],
                         dates=dates, lats=lats, lons=lons, device="cuda")
    tokens = model(cube)                                     # float32 [B, 1 + L, D]

    embedder = Embedder.load(checkpoint="clay-v1.5.ckpt")    # what the stages use
    out = embedder.embed(dn, sensor="sentinel-2-l2a", bands=bands, dates=dates,
                         lats=lats, lons=lons)               # out.cls, out.mean [B, D]

Torch is imported on first use of an attribute, not when this package is imported.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "PRESETS",
    "ClayEncoder",
    "Embedder",
    "EncoderConfig",
    "encode_latlon",
    "encode_time",
    "load_encoder",
    "make_datacube",
    "normalise",
    "resolve_device",
]

_EXPORTS = {
    "PRESETS": "geofm.model.presets",
    "EncoderConfig": "geofm.model.presets",
    "ClayEncoder": "geofm.model.encoder",
    "Embedder": "geofm.model.embedder",
    "load_encoder": "geofm.model.loading",
    "encode_latlon": "geofm.model.inputs",
    "encode_time": "geofm.model.inputs",
    "make_datacube": "geofm.model.inputs",
    "normalise": "geofm.model.inputs",
    "resolve_device": "geofm.model.loading",
}


def __getattr__(name: str) -> Any:
    """Import the public names lazily (keeps ``import geofm.model`` free of torch)."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'geofm.model' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
