"""The objective: masks partition the patches, nothing hidden leaks, shapes and dtypes."""

from __future__ import annotations

import pytest
import torch

from geofm.exceptions import GeofmValueError, ShapeError
from geofm.model.encoder import ClayEncoder
from geofm.pretrain.mae import (
    ClayMAE,
    MaeDecoder,
    check_mask_ratio,
    masked_loss,
    patchify,
    random_masking,
)

from .conftest import SMALL_DECODER, SMALL_ENCODER


def _mae(seed: int = 0) -> ClayMAE:
    torch.manual_seed(seed)
    enc = ClayEncoder(SMALL_ENCODER)
    enc.reset_parameters()
    return ClayMAE(enc, MaeDecoder(encoder_dim=32, patch_size=8, config=SMALL_DECODER))


def _cube(b: int = 2, c: int = 4, size: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"pixels": torch.randn(b, c, size, size, generator=g),
            "time": torch.rand(b, 4, generator=g), "latlon": torch.rand(b, 4, generator=g),
            "gsd": torch.tensor(10.0), "waves": torch.linspace(0.49, 0.84, c)}


def test_random_masking_partitions_the_patches_and_is_seeded() -> None:
    keep, masked = random_masking(3, 16, 0.75, generator=torch.Generator().manual_seed(1))
    assert keep.shape == (3, 4) and masked.shape == (3, 12) and keep.dtype == torch.int64
    for k, m in zip(keep.tolist(), masked.tolist(), strict=True):
        assert sorted(k + m) == list(range(16)) and k == sorted(k) and m == sorted(m)
    again, _ = random_masking(3, 16, 0.75, generator=torch.Generator().manual_seed(1))
    other, _ = random_masking(3, 16, 0.75, generator=torch.Generator().manual_seed(2))
    assert torch.equal(keep, again) and not torch.equal(keep, other)
    assert len({tuple(r) for r in keep.tolist()}) > 1  # each chip its own mask


def test_patchify_orders_patches_row_major() -> None:
    pixels = torch.arange(2 * 3 * 16 * 24, dtype=torch.float32).view(2, 3, 16, 24)
    patches = patchify(pixels, 8)
    assert patches.shape == (2, 6, 3, 64)
    # patch 4 = row 1, column 1
    torch.testing.assert_close(patches[1, 4].view(3, 8, 8), pixels[1, :, 8:16, 8:16])
    with pytest.raises(ShapeError, match="multiple of the patch size 8"):
        patchify(pixels[..., :20], 8)


def test_loss_uses_hidden_patches_only() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 16, 4, 64, generator=g)
    target = torch.randn(2, 16, 4, 64, generator=g)
    keep, masked = random_masking(2, 16, 0.75, generator=g)
    base = masked_loss(pred, target, masked)
    visible_changed = target.clone()
    for row in range(2):
        visible_changed[row, keep[row]] += 100.0
    assert masked_loss(pred, visible_changed, masked) == base
    hidden_changed = target.clone()
    hidden_changed[0, masked[0, 0], 0, 0] += 1.0
    assert masked_loss(pred, hidden_changed, masked) != base
    # exactly the mean squared error over the hidden patches
    rows = [((pred[r, masked[r]] - target[r, masked[r]]) ** 2) for r in range(2)]
    torch.testing.assert_close(base, torch.cat(rows).mean())


def test_prediction_cannot_see_hidden_pixels() -> None:
    mae = _mae()
    cube = _cube()
    keep, masked = random_masking(2, 16, 0.75, generator=torch.Generator().manual_seed(3))
    _, pred = mae(cube, keep, masked)
    hidden = dict(cube, pixels=cube["pixels"].clone())
    for row in range(2):  # rewrite the pixels of every hidden patch
        for idx in masked[row].tolist():
            y, x = divmod(idx, 4)
            hidden["pixels"][row, :, 8 * y:8 * y + 8, 8 * x:8 * x + 8] = 7.0
    loss2, pred2 = mae(hidden, keep, masked)
    torch.testing.assert_close(pred, pred2, rtol=0, atol=0)  # the encoder never saw them
    assert loss2.item() != pytest.approx(mae(cube, keep, masked)[0].item())  # targets did


def test_shapes_dtypes_and_the_decoder_sees_the_wavelengths() -> None:
    mae = _mae()
    cube = _cube(b=3, c=5, size=24)
    keep, masked = random_masking(3, 9, 0.75, generator=torch.Generator().manual_seed(0))
    loss, pred = mae(cube, keep, masked)
    assert keep.shape == (3, 2)
    assert pred.shape == (3, 9, 5, 64) and pred.dtype == torch.float32
    assert loss.shape == () and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert mae.encoder.cls_token.grad is not None and mae.decoder.mask_token.grad is not None
    tokens = mae.encoder.forward_masked(cube, keep).detach()
    a = mae.decoder(tokens, keep, grid=(3, 3), gsd=cube["gsd"], waves=cube["waves"])
    b = mae.decoder(tokens, keep, grid=(3, 3), gsd=cube["gsd"], waves=cube["waves"] + 0.3)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1, "x"])
def test_bad_mask_ratio_is_refused(ratio: object) -> None:
    with pytest.raises(GeofmValueError, match="mask ratio"):
        check_mask_ratio(ratio)  # type: ignore[arg-type]
