"""Encoder presets: Clay's sizes."""

from __future__ import annotations

import pytest

from geofm.exceptions import GeofmValueError
from geofm.model.presets import PRESETS, get_preset


@pytest.mark.parametrize(("name", "sizes"), [
    ("tiny", (192, 6, 4, 48, 2)),
    ("small", (384, 6, 6, 64, 2)),
    ("base", (768, 12, 12, 64, 4)),
    ("large", (1024, 24, 16, 64, 4)),
])
def test_clay_sizes(name: str, sizes: tuple) -> None:
    cfg = get_preset(name)
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.dim_head, cfg.mlp_ratio) == sizes
    assert cfg.patch_size == 8 and cfg.name == name
    assert cfg.mlp_dim == sizes[0] * sizes[4]


def test_unknown_preset_lists_valid_ones() -> None:
    assert list(PRESETS) == ["tiny", "small", "base", "large"]
    with pytest.raises(GeofmValueError, match="unknown encoder preset 'xl'; valid presets: "
                                              "tiny, small, base, large"):
        get_preset("xl")
