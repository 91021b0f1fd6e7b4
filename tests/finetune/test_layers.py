import json

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch

from geofm.exceptions import GeofmValueError
from geofm.finetune import finetune
from geofm.finetune.cache import ChipEncoder
from geofm.finetune.data import read_chip_table
from geofm.finetune.layers import DEFAULT_LAYERS, parse_layers
from geofm.finetune.predict import predict
from geofm.finetune.train import load_head
from geofm.model import make_datacube
from geofm.model.embedder import encode_layers


def _cube(n: int = 2, size: int = 32):
    pixels = np.random.default_rng(0).uniform(200, 3000, (n, 4, size, size)).astype("float32")
    return make_datacube(pixels, sensor="sentinel-2-l2a", bands=["blue", "green", "red", "nir"],
                         dates=list(pd.date_range("2021-06-01", periods=n, tz="UTC")),
                         lats=np.full(n, 50.0), lons=np.full(n, 10.0), device="cpu",
                         time_location=False)


def test_parse_layers():
    assert parse_layers("last", depth=6) == ("last",)
    assert parse_layers(" 0, 2,5 ", depth=6) == (0, 2, 5)
    assert parse_layers([1, "last"], depth=6) == (1, "last")
    assert parse_layers("embed,Last", depth=6) == ("embed", "last")
    assert parse_layers(None, depth=6) == parse_layers(DEFAULT_LAYERS, depth=6)
    with pytest.raises(GeofmValueError, match="layers item 6 is out of range: the encoder has "
                                              r"6 blocks \(indices 0..5\)"):
        parse_layers("0,6", depth=6)
    with pytest.raises(GeofmValueError, match="layers item 'first' is not 'last', 'embed' or a "
                                              "block index"):
        parse_layers("first", depth=6)
    with pytest.raises(GeofmValueError, match="repeats a layer"):
        parse_layers("1,1", depth=6)
    with pytest.raises(GeofmValueError, match="layers is empty"):
        parse_layers("", depth=6)


def test_encode_layers_concatenates_the_selected_blocks(tiny_encoder):
    cube = _cube()
    d = tiny_encoder.dim
    with torch.inference_mode():
        full = tiny_encoder(cube)
        last = encode_layers(tiny_encoder, cube, ("last",))
        mix = encode_layers(tiny_encoder, cube, (0, "last", 5))
        # block 5 is the last of 6: the final LayerNorm of its output is the encoder output
        normed = tiny_encoder.transformer.norm(mix[..., 2 * d:])
    assert last.shape == (2, 1 + 16, d) and mix.shape == (2, 1 + 16, 3 * d)
    torch.testing.assert_close(last, full)
    torch.testing.assert_close(mix[..., d:2 * d], full)
    torch.testing.assert_close(normed, full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mix[..., :d], mix[..., 2 * d:], atol=1e-2)  # block 0 differs
    with torch.inference_mode():
        embed = encode_layers(tiny_encoder, cube, ("embed", 0))
        block0 = tiny_encoder.transformer.layers[0]
        x = embed[..., :d]
        x = block0[0](x) + x
        x = block0[1](x) + x
    torch.testing.assert_close(embed[..., d:], mix[..., :d])
    torch.testing.assert_close(x, mix[..., :d])  # "embed" is the input of block 0
    # the taps are removed afterwards
    assert not any(m._forward_pre_hooks for m in tiny_encoder.modules())


def test_layers_change_the_head_width_and_round_trip_through_predict(
        chipped_root, label_raster, tiny_encoder, tmp_path):
    before = {k: v.clone() for k, v in tiny_encoder.state_dict().items()}
    table = read_chip_table(chipped_root)
    middle = str(table["date"].sort_values().iloc[len(table) // 2].date())
    out = tmp_path / "h"
    finetune(chipped_root, label_raster, out, encoder=tiny_encoder, epochs=1, batch_size=8,
             layers="0,5", date_window_days=45, label_date=middle, progress=False)
    head, cfg = load_head(out / "best.pt")
    assert cfg["layers"] == [0, 5] and cfg["dim"] == 192 and cfg["feature_dim"] == 384
    assert head.input_norm.num_features == 384
    run = json.loads((out / "run.json").read_text())["stages"]["finetune"]
    assert run["config"]["layers"] == [0, 5]
    for key, value in before.items():  # still frozen
        assert torch.equal(value, tiny_encoder.state_dict()[key]), key

    scene = table["scene_id"].value_counts().index[0]
    rows = table[table["scene_id"] == scene].reset_index(drop=True)
    record = predict(chipped_root, out / "best.pt", tmp_path / "pred", encoder=tiny_encoder,
                     scenes=[scene], progress=False)
    assert record.counts["written"] == 1 and not record.failures
    encoder = ChipEncoder(tiny_encoder, chipped_root, rows, tuple(cfg["bands"]),
                          time_location=cfg["time_location"], layers=(0, 5))
    tokens, _ = encoder([0])
    assert tokens.shape[-1] == 384
    pixels = torch.from_numpy(encoder.read([0])[0])  # the unet head also sees the bands
    with torch.inference_mode():
        expected = head(tokens, pixels).argmax(dim=1).numpy()[0] + 1
    with rasterio.open(tmp_path / "pred" / f"{scene}.tif") as src:
        x0, y1 = float(rows.at[0, "minx"]), float(rows.at[0, "maxy"])
        r0, c0 = src.index(x0 + 5, y1 - 5)
        np.testing.assert_array_equal(src.read(1)[r0:r0 + 64, c0:c0 + 64], expected)
