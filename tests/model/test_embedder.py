"""The Embedder: one encoder call for embed, finetune and predict."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from geofm.exceptions import GeofmValueError, GeofmWarning, RasterError
from geofm.model import make_datacube
from geofm.model.embedder import Embedder, encode_layers

BANDS = ["blue", "green", "red", "nir"]
SENSOR = "sentinel-2-l2a"


@functools.cache
def _encoder():  # type: ignore[no-untyped-def]
    from geofm.model import load_encoder

    with pytest.warns(GeofmWarning, match="RANDOM WEIGHTS"):
        return load_encoder(preset="tiny", seed=1)


def _batch(n: int = 3, size: int = 32, seed: int = 0) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(200, 4000, (n, len(BANDS), size, size)).astype(np.float32)
    meta = {"sensor": SENSOR, "bands": BANDS,
            "dates": [np.datetime64("2021-06-01T10:00") + np.timedelta64(9 * i, "D")
                      for i in range(n)],
            "lats": 50.0 + np.arange(n), "lons": 10.0 - np.arange(n)}
    return pixels, meta


def test_embed_is_the_direct_forward_pooled():
    enc = _encoder()
    pixels, meta = _batch()
    out = Embedder(enc, time_location="encode").embed(pixels, **meta, patches=True)
    cube = make_datacube(pixels, **meta, device="cpu", time_location=True)
    with torch.no_grad():
        tokens = enc(cube).numpy()
    assert out.cls.dtype == np.float32 and out.cls.shape == (3, enc.dim)
    np.testing.assert_array_equal(out.cls, tokens[:, 0])
    np.testing.assert_allclose(out.mean, tokens[:, 1:].mean(axis=1), rtol=1e-6)
    assert out.patches is not None and out.patches.dtype == np.float16
    assert out.patches.shape == (3, (32 // 8) ** 2, enc.dim)
    np.testing.assert_array_equal(out.patches, tokens[:, 1:].astype(np.float16))
    assert Embedder(enc).embed(pixels, **meta).patches is None


def test_time_location_rule():
    enc = _encoder()
    pixels, meta = _batch()
    same = np.repeat(pixels[:1], 3, axis=0)
    zero = Embedder(enc, time_location="zero").embed(same, **meta)
    coded = Embedder(enc, time_location="encode").embed(same, **meta)
    # identical pixels on other dates and places: only "encode" tells them apart
    np.testing.assert_array_equal(zero.cls[0], zero.cls[1])
    assert not np.allclose(coded.cls[0], coded.cls[1])
    assert Embedder(enc, time_location="zero").identity.time_location == "zero"
    with pytest.raises(GeofmValueError, match="resolve 'auto'"):
        Embedder(enc, time_location="auto")


def test_load_resolves_device_precision_and_time_location():
    with pytest.warns(GeofmWarning, match="RANDOM WEIGHTS"):
        emb = Embedder.load(model="tiny", device="cpu", seed=3)
    assert (emb.device, emb.precision, emb.time_location) == ("cpu", "fp32", "zero")
    assert emb.identity.random_init and emb.identity.seed == 3
    assert emb.identity.time_location == "zero"
    assert not any(p.requires_grad for p in emb.encoder.parameters())
    with pytest.raises(GeofmValueError, match="finetune needs --checkpoint PATH.*--model"):
        Embedder.load(stage="finetune")
    with pytest.raises(GeofmValueError, match="unknown model preset 'huge'"):
        Embedder.load(model="huge")
    with pytest.raises(GeofmValueError, match="unknown precision 'fp8'"):
        Embedder(_encoder(), precision="fp8")


def test_tokens_of_chosen_layers_are_ordinary_tensors():
    enc = _encoder()
    pixels, meta = _batch(n=2)
    emb = Embedder(enc, time_location="zero", layers=(0, "last"))
    tokens = emb.tokens(pixels, **meta)
    cube = make_datacube(pixels, **meta, device="cpu", time_location=False)
    with torch.inference_mode():
        direct = encode_layers(enc, cube, (0, "last"))
    assert tokens.shape == (2, 1 + 16, 2 * enc.dim) and tokens.dtype == torch.float32
    assert torch.equal(tokens, direct)
    assert not tokens.is_inference()  # a head may use it under autograd
    assert (tokens * torch.ones(1, requires_grad=True)).requires_grad


def _nodata_chip(path: Path, fraction_rows: int) -> None:
    from geofm.chipfile import write_chip

    pixels = np.full((len(BANDS), 10, 10), 700.0, np.float32)
    pixels[2, :fraction_rows, :] = np.nan  # rows of pixels invalid in one band
    write_chip(path, pixels, bands=BANDS, x=np.arange(10.0), y=-np.arange(10.0),
               epsg=32633, date=np.datetime64("2021-01-01"))


def test_nodata_rule_is_a_parameter(tmp_path: Path):
    from geofm.sensors import get_sensor

    path = tmp_path / "c.nc"
    _nodata_chip(path, fraction_rows=2)  # 20% invalid
    mean, _ = get_sensor(SENSOR).normalisation(BANDS)
    with pytest.raises(RasterError, match=r"20\.0% of its pixels are nodata or NaN"):
        Embedder(_encoder(), max_invalid=0.05).read_chip(path, sensor=SENSOR, bands=BANDS)
    # finetune/predict: any fraction is filled, in every band, with the band mean
    pixels, valid, invalid = Embedder(_encoder(), max_invalid=None).read_chip(
        path, sensor=SENSOR, bands=BANDS)
    assert invalid == pytest.approx(0.2)
    assert valid[:2].sum() == 0 and valid[2:].all()
    np.testing.assert_array_equal(pixels[:, 0, 0], mean)
    assert (pixels[:, 5, 5] == 700.0).all() and np.isfinite(pixels).all()
    with pytest.raises(GeofmValueError, match="max_invalid must be in"):
        Embedder(_encoder(), max_invalid=2.0)


def _oom_above(limit: int, calls: list[int]):  # type: ignore[no-untyped-def]
    """A ClayEncoder.forward that raises CUDA out-of-memory for batches above ``limit``."""
    from geofm.model.encoder import ClayEncoder

    real = ClayEncoder.forward

    def forward(self, datacube):  # type: ignore[no-untyped-def]
        n = int(datacube["pixels"].shape[0])
        calls.append(n)
        if n > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, datacube)

    return forward


def test_out_of_memory_batch_is_retried_in_halves(monkeypatch):
    from geofm.model.encoder import ClayEncoder

    enc = _encoder()
    pixels, meta = _batch(n=5)
    emb = Embedder(enc, time_location="encode")
    whole = emb.embed(pixels, **meta, patches=True)
    calls: list[int] = []
    monkeypatch.setattr(ClayEncoder, "forward", _oom_above(2, calls))
    halves = emb.embed(pixels, **meta, patches=True)
    assert calls == [5, 2, 3, 1, 2]  # 5 -> 2 + 3 -> 2 + (1 + 2)
    np.testing.assert_allclose(halves.cls, whole.cls, atol=1e-5)
    np.testing.assert_allclose(halves.mean, whole.mean, atol=1e-5)
    assert halves.patches is not None and halves.patches.shape == whole.patches.shape
    tokens = emb.tokens(pixels, **meta)
    assert tokens.shape[0] == 5
    calls.clear()
    monkeypatch.setattr(ClayEncoder, "forward", _oom_above(0, calls))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        emb.embed(pixels[:2], **{k: (v[:2] if k in ("dates", "lats", "lons") else v)
                                 for k, v in meta.items()})
    assert calls == [2, 1]  # halved down to one chip, then given up


def test_other_errors_are_not_retried(monkeypatch):
    from geofm.model.encoder import ClayEncoder

    calls: list[int] = []

    def forward(self, datacube):  # type: ignore[no-untyped-def]
        calls.append(int(datacube["pixels"].shape[0]))
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(ClayEncoder, "forward", forward)
    pixels, meta = _batch(n=4)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        Embedder(_encoder()).embed(pixels, **meta)
    assert calls == [4]


def test_embed_stage_reports_a_chip_that_never_fits(tmp_path: Path, monkeypatch):
    import importlib.util

    from geofm.embed import embed
    from geofm.model.encoder import ClayEncoder

    # the embed tests' tiny run root builder
    spec = importlib.util.spec_from_file_location(
        "embed_test_roots", Path(__file__).parents[1] / "embed" / "conftest.py")
    assert spec is not None and spec.loader is not None
    roots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roots)
    root = roots.write_root(tmp_path / "root", n_scenes=1, n_chips=3, size=16)
    calls: list[int] = []
    monkeypatch.setattr(ClayEncoder, "forward", _oom_above(0, calls))
    with pytest.warns(GeofmWarning, match="RANDOM WEIGHTS"):
        record = embed(root, model="tiny", batch_size=3, device="cpu", progress=False)
    assert calls == [3, 1]
    assert len(record.failures) == 3 and record.counts["chips"] == 0
    reason = record.failures[0].reason
    assert "its batch of 3 chips failed: OutOfMemoryError: CUDA out of memory" in reason
    assert "did not fit even one chip at a time" in reason


@pytest.mark.gpu
def test_bf16_autocast_agrees_with_fp32():
    """The autocast path: on CUDA when there is one, else CPU bf16 autocast."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    enc = _encoder().to(device)
    try:
        pixels, meta = _batch(n=4)
        fp32 = Embedder(enc, device=device, precision="fp32").embed(pixels, **meta,
                                                                    patches=True)
        bf16 = Embedder(enc, device=device, precision="bf16").embed(pixels, **meta,
                                                                    patches=True)
    finally:
        enc.to("cpu")
    for name in ("cls", "mean", "patches"):
        a, b = getattr(fp32, name), getattr(bf16, name)
        assert b.shape == a.shape and b.dtype == a.dtype
        a32, b32 = a.astype(np.float32), b.astype(np.float32)
        assert np.isfinite(b32).all()
        # bf16 keeps 8 significant bits: a few units in the last place of the largest value
        np.testing.assert_allclose(b32, a32, rtol=0, atol=8 * 2.0 ** -8 * np.abs(a32).max())
        cos = (a32 * b32).sum(-1) / np.linalg.norm(a32, axis=-1) / np.linalg.norm(b32, axis=-1)
        assert cos.min() > 0.999
    assert fp32.cls.dtype == np.float32 and fp32.cls.shape == (4, _encoder().dim)
    assert fp32.patches is not None and fp32.patches.dtype == np.float16
    assert not np.array_equal(fp32.cls, bf16.cls)  # autocast did run in bf16
