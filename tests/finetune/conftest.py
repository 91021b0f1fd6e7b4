"""A head trained once per session on the shared chipped synthetic run (tiny epochs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_encoder():
    """The random-weight ``tiny`` encoder (its warning is expected)."""
    from geofm.exceptions import GeofmWarning
    from geofm.model import load_encoder

    with pytest.warns(GeofmWarning, match="RANDOM WEIGHTS"):
        return load_encoder(preset="tiny")


@pytest.fixture(scope="session")
def label_raster(synth_dir: Path) -> Path:
    return synth_dir / "labels" / "landcover_33UUP.tif"


@pytest.fixture(scope="session")
def class_names(synth_dir: Path) -> list[str]:
    classes = json.loads((synth_dir / "truth.json").read_text())["classes"]
    return [classes[k] for k in sorted(classes, key=int)]


@pytest.fixture(scope="session")
def trained_head(chipped_root, label_raster, class_names, tiny_encoder,
                 tmp_path_factory) -> Path:
    """``finetune`` output folder: 2 epochs of a segmentation head."""
    from geofm.finetune import finetune

    out = tmp_path_factory.mktemp("head") / "seg"
    finetune(chipped_root, [label_raster], out, encoder=tiny_encoder, epochs=2, batch_size=8,
             class_names=class_names, progress=False)
    return out
