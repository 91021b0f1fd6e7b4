"""The encoder reproduces upstream Clay: reference cases, parameter manifest, encodings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from geofm.exceptions import GeofmValueError, GeofmWarning, ShapeError
from geofm.model import ClayEncoder, load_encoder
from geofm.model.encoder import sincos_1d, sincos_2d_gsd
from geofm.model.presets import PRESETS

KEYS = ("pixels", "time", "latlon", "gsd", "waves")
CASE_NAMES = ("rgbn_32px", "s2_10band_48px", "naip_64px")


@pytest.fixture(scope="module")
def ref_encoder(reference_dir: Path) -> ClayEncoder:
    return load_encoder(reference_dir / "clay_tiny.ckpt")


@pytest.fixture(scope="module")
def cases(reference_dir: Path) -> dict:
    return torch.load(reference_dir / "clay_tiny_cases.pt", map_location="cpu",
                      weights_only=True)


@pytest.fixture(scope="module")
def tiny() -> ClayEncoder:
    with pytest.warns(GeofmWarning):
        return load_encoder(preset="tiny", seed=0)


def _cube(b: int = 2, c: int = 4, h: int = 32, w: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"pixels": torch.randn(b, c, h, w, generator=g),
            "time": torch.rand(b, 4, generator=g) * 2 - 1,
            "latlon": torch.rand(b, 4, generator=g) * 2 - 1,
            "gsd": torch.tensor(10.0),
            "waves": torch.linspace(0.49, 0.84, c)}


@pytest.mark.parametrize("name", CASE_NAMES)
def test_reference_cases_match_upstream(ref_encoder: ClayEncoder, cases: dict,
                                        name: str) -> None:
    case = cases[name]
    with torch.inference_mode():
        out = ref_encoder({k: case[k] for k in KEYS})
    b, n, d = case["patches"].shape
    assert out.shape == (b, 1 + n, d) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0], case["cls"], rtol=0, atol=1e-4)
    torch.testing.assert_close(out[:, 1:], case["patches"], rtol=0, atol=1e-4)


@pytest.mark.parametrize(("preset", "key"), [("base", "clay-v1-base"),
                                              ("large", "clay-v1.5-large")])
def test_parameter_names_and_shapes_equal_manifest(reference_dir: Path, preset: str,
                                                   key: str) -> None:
    manifest = json.loads((reference_dir / "clay_encoder_state_dict_manifest.json")
                          .read_text())[key]
    cfg = PRESETS[preset]
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.dim_head, cfg.mlp_ratio, cfg.patch_size) == (
        manifest["dim"], manifest["depth"], manifest["heads"], manifest["dim_head"],
        manifest["mlp_ratio"], manifest["patch_size"])
    with torch.device("meta"):
        model = ClayEncoder(cfg)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = manifest["parameters"]
    assert sorted(set(expected) - set(got)) == []  # nothing missing
    assert sorted(set(got) - set(expected)) == []  # nothing extra
    assert got == expected


def test_output_shape_and_non_square_chips(tiny: ClayEncoder) -> None:
    with torch.inference_mode():
        out = tiny(_cube(b=3, c=5, h=16, w=40))
    assert out.shape == (3, 1 + 2 * 5, 192) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_batch_items_are_independent(tiny: ClayEncoder) -> None:
    cube = _cube(b=3)
    with torch.inference_mode():
        whole = tiny(cube)
        single = tiny({**cube, **{k: cube[k][1:2] for k in ("pixels", "time", "latlon")}})
    torch.testing.assert_close(whole[1:2], single, rtol=0, atol=1e-5)


def test_time_latlon_and_gsd_change_the_output(tiny: ClayEncoder) -> None:
    cube = _cube(b=1)
    with torch.inference_mode():
        base = tiny(cube)
        for change in ({"time": -cube["time"]}, {"latlon": -cube["latlon"]},
                       {"gsd": torch.tensor(30.0)}, {"waves": cube["waves"] + 0.5}):
            assert (tiny({**cube, **change}) - base).abs().max() > 1e-3, change


def test_bf16_autocast_returns_float32_close_to_fp32(tiny: ClayEncoder) -> None:
    cube = _cube(b=2)
    with torch.inference_mode():
        ref = tiny(cube)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = tiny(cube)
    assert low.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(low.flatten(1), ref.flatten(1))
    assert (cos > 0.99).all()
    assert not torch.equal(low, ref)  # autocast really ran in reduced precision


def test_bad_inputs_are_errors(tiny: ClayEncoder) -> None:
    cube = _cube()
    with pytest.raises(GeofmValueError, match="datacube lacks key.*waves"):
        tiny({k: v for k, v in cube.items() if k != "waves"})
    with pytest.raises(ShapeError, match="y=30, x=32 is not a multiple of the patch size 8"):
        tiny({**cube, "pixels": cube["pixels"][:, :, :30]})
    with pytest.raises(ShapeError, match="waves has shape \\(3,\\) but pixels have band=4"):
        tiny({**cube, "waves": cube["waves"][:3]})
    with pytest.raises(ShapeError, match="time has shape \\(1, 4\\), expected \\[batch=2"):
        tiny({**cube, "time": cube["time"][:1]})


def test_sincos_2d_gsd_hand_values() -> None:
    dim, gsd = 16, 10.0
    pe = sincos_2d_gsd(2, 3, dim, torch.tensor(gsd))
    assert pe.shape == (6, dim)
    q = dim // 4
    omega = [gsd / 10000 ** (2 * (i / (q - 1)) / dim) for i in range(q)]
    # token 5 = row 1, col 2: x = column, y = row
    expected = ([math.sin(2 * o) for o in omega] + [math.cos(2 * o) for o in omega]
                + [math.sin(1 * o) for o in omega] + [math.cos(1 * o) for o in omega])
    torch.testing.assert_close(pe[5], torch.tensor(expected), rtol=0, atol=1e-5)


def test_sincos_1d_hand_values() -> None:
    pe = sincos_1d(torch.tensor([0.5]), 8)
    omega = [1 / 10000 ** (i / 3) for i in range(4)]
    expected = [math.sin(0.5 * o) for o in omega] + [math.cos(0.5 * o) for o in omega]
    torch.testing.assert_close(pe[0], torch.tensor(expected), rtol=0, atol=1e-6)


def test_invalid_dim_is_rejected() -> None:
    from geofm.model.presets import EncoderConfig

    with pytest.raises(GeofmValueError, match="dim 66 must be 8 plus a multiple of 4"):
        ClayEncoder(EncoderConfig(dim=66, depth=1, heads=1, dim_head=8, mlp_ratio=1))


def test_metadata_as_numpy_and_float_gives_same_output(tiny: ClayEncoder) -> None:
    cube = _cube(b=2)
    loose = {"pixels": cube["pixels"], "time": cube["time"].double().numpy(),
             "latlon": cube["latlon"].numpy(), "gsd": 10.0,
             "waves": cube["waves"].tolist()}
    with torch.inference_mode():
        torch.testing.assert_close(tiny(loose), tiny(cube), rtol=0, atol=0)
    with pytest.raises(ShapeError, match="gsd must be a scalar"):
        tiny({**cube, "gsd": torch.tensor([10.0, 10.0])})


@pytest.mark.parametrize("name", CASE_NAMES)
def test_forward_masked_keeping_every_patch_equals_forward_and_upstream(
        ref_encoder: ClayEncoder, cases: dict, name: str) -> None:
    case = cases[name]
    cube = {k: case[k] for k in KEYS}
    b, n, _ = case["patches"].shape
    keep = torch.arange(n).expand(b, -1)
    with torch.inference_mode():
        full = ref_encoder(cube)
        masked = ref_encoder.forward_masked(cube, keep)
    torch.testing.assert_close(masked, full, rtol=0, atol=0)
    torch.testing.assert_close(masked[:, 1:], case["patches"], rtol=0, atol=1e-4)


def test_forward_masked_never_sees_the_masked_patches(ref_encoder: ClayEncoder) -> None:
    cube = _cube(b=2, c=4, h=32, w=32)  # 4 x 4 patches of 8 px
    keep = torch.tensor([[0, 5, 10, 15], [3, 6, 9, 12]])
    other = dict(cube, pixels=cube["pixels"].clone())
    for row, visible in enumerate(keep.tolist()):  # change every hidden patch of each chip
        for idx in set(range(16)) - set(visible):
            y, x = divmod(idx, 4)
            other["pixels"][row, :, 8 * y:8 * y + 8, 8 * x:8 * x + 8] += 5.0
    with torch.inference_mode():
        a = ref_encoder.forward_masked(cube, keep)
        b = ref_encoder.forward_masked(other, keep)
        c = ref_encoder.forward_masked(dict(cube, pixels=cube["pixels"] + 5.0), keep)
    assert a.shape == (2, 5, ref_encoder.dim) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)  # visible pixels do matter
    with pytest.raises(ShapeError, match="outside"):
        ref_encoder.forward_masked(cube, keep + 16)
