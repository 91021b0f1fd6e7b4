"""The unet decoder: shapes, patch alignment (p = 8 and 16), the skip path, old heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geofm.exceptions import GeofmValueError, ShapeError
from geofm.finetune.heads import (
    ClassificationHead,
    PixelNorm,
    SegmentationHead,
    UNetHead,
    build_head,
)
from geofm.finetune.train import dihedral, load_head, predict_codes, save_head


def _inputs(p: int, side: int = 4, dim: int = 12, bands: int = 4, b: int = 2):
    g = torch.Generator().manual_seed(p)
    tokens = torch.randn(b, 1 + side * side, dim, generator=g)
    pixels = 500 + 3000 * torch.rand(b, bands, side * p, side * p, generator=g)
    return tokens, pixels


@pytest.mark.parametrize("p", [8, 16])
def test_unet_logits_are_full_resolution(p):
    tokens, pixels = _inputs(p)
    head = UNetHead(12, p, 5, bands=4, hidden=8, out_channels=4).eval()
    assert head(tokens, pixels).shape == (2, 5, 4 * p, 4 * p)


@pytest.mark.parametrize("p", [8, 16])
def test_tokens_are_upsampled_onto_their_own_patch(p):
    """A token's change reaches exactly its patch +- half a patch (bilinear between patch
    centres) +- 1 px (the 3x3 fusion conv), centred on the patch: no shift by the patch
    grid, for p = 8 and 16."""
    from torch import nn

    torch.manual_seed(0)
    tokens, pixels = _inputs(p)
    head = UNetHead(12, p, 3, bands=4, hidden=8, out_channels=4, whiten=False).eval()
    head.context = nn.Identity()  # isolate the upsampling (the grid conv reaches 1 patch)
    changed = tokens.clone()
    changed[:, 1 + 5] += 4.0  # patch (row 1, col 1) of the 4 x 4 grid
    diff = (head(changed, pixels) - head(tokens, pixels)).abs().sum(dim=(0, 1)).detach().numpy()
    rows, cols = np.nonzero(diff > 0)
    lo, hi = p - p // 2 - 1, 2 * p + p // 2  # pixel rows/cols that may change
    assert rows.min() >= lo and rows.max() <= hi and cols.min() >= lo and cols.max() <= hi
    centre = 1.5 * p - 0.5  # centre of patch 1 in pixel coordinates
    assert abs((rows.min() + rows.max()) / 2 - centre) <= 1
    assert abs((cols.min() + cols.max()) / 2 - centre) <= 1
    # and the patch itself changes
    assert (diff[p:2 * p, p:2 * p] > 0).mean() > 0.9


@pytest.mark.parametrize("p", [8, 16])
def test_the_skip_path_draws_boundaries_at_10_m(p):
    """With the token path constant, a one-pixel change in the bands changes the logits
    only within the receptive field of the full-resolution convolutions (4 px)."""
    torch.manual_seed(0)
    tokens, pixels = _inputs(p, b=1)
    head = UNetHead(12, p, 3, bands=4, hidden=8, out_channels=4).eval()
    changed = pixels.clone()
    changed[0, :, 10, 10] *= 3.0
    diff = (head(tokens, changed) - head(tokens, pixels)).abs().sum(dim=(0, 1)).detach()
    rows, cols = np.nonzero(diff.numpy() > 0)
    assert rows.size and abs(rows - 10).max() <= 3 and abs(cols - 10).max() <= 3


def test_unet_checks_its_inputs():
    tokens, pixels = _inputs(8)
    head = UNetHead(12, 8, 3, bands=4, hidden=8, out_channels=4).eval()
    with pytest.raises(GeofmValueError, match="needs the chip's bands"):
        head(tokens)
    with pytest.raises(ShapeError, match="expected"):
        head(tokens, pixels[..., :16, :16])


def test_pixel_norm_standardises_log_reflectance():
    g = torch.Generator().manual_seed(0)
    pixels = torch.exp(torch.randn(3, 2, 8, 8, generator=g) + 7.0)
    norm = PixelNorm(2).fit([pixels[:1], pixels[1:]])
    out = norm(pixels)
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(out.std(dim=(0, 2, 3), unbiased=False), torch.ones(2), atol=1e-4)


def test_unet_and_pixel_stats_heads_survive_save_and_load(tmp_path):
    tokens, pixels = _inputs(16)
    head = build_head("segmentation", dim=12, patch_size=16, n_classes=3, decoder="unet",
                      bands=4, hidden=8, out_channels=4)
    head.fit_pixels([pixels])
    config = {"task": "segmentation", "dim": 12, "patch_size": 16, "n_classes": 3,
              "head_options": {"decoder": "unet", "bands": 4, "hidden": 8,
                               "out_channels": 4, "whiten": True}}
    save_head(tmp_path / "seg.pt", head.state_dict(), config)
    loaded, _ = load_head(tmp_path / "seg.pt")
    assert isinstance(loaded, UNetHead)
    head.eval()
    assert np.array_equal(predict_codes(loaded, tokens, pixels),
                          predict_codes(head, tokens, pixels))

    cls_head = ClassificationHead(12, 3, pixel_stats=4)
    cls_head.fit_pixels([pixels])
    cfg = {"task": "classification", "dim": 12, "patch_size": 16, "n_classes": 3,
           "head_options": {"pool": "mean", "whiten": True, "pixel_stats": 4}}
    save_head(tmp_path / "cls.pt", cls_head.state_dict(), cfg)
    loaded_cls, _ = load_head(tmp_path / "cls.pt")
    assert loaded_cls.uses_pixels and predict_codes(loaded_cls, tokens, pixels).shape == (2,)


def test_head_configs_without_a_decoder_rebuild_the_old_head():
    head = build_head("segmentation", dim=8, patch_size=4, n_classes=2, hidden=8,
                      out_channels=2, whiten=True)
    assert isinstance(head, SegmentationHead) and not head.uses_pixels
    with pytest.raises(ValueError, match="unknown decoder"):
        build_head("segmentation", dim=8, patch_size=4, n_classes=2, decoder="fpn")


def test_pixel_stats_change_the_classification():
    torch.manual_seed(0)
    tokens, pixels = _inputs(8)
    head = ClassificationHead(12, 3, pixel_stats=4).eval()
    assert not torch.allclose(head(tokens, pixels), head(tokens, pixels * 2))
    with pytest.raises(GeofmValueError, match="needs the chip's bands"):
        head(tokens)


@pytest.mark.parametrize("k,flip", [(1, False), (2, True), (3, False), (0, True)])
def test_dihedral_moves_tokens_bands_and_labels_together(k, flip):
    """After the move, each token still sits over the pixels it came from."""
    side, p = 3, 4
    tokens = torch.zeros(1, 1 + side * side, 1)
    tokens[0, 0] = -1
    tokens[0, 1:, 0] = torch.arange(side * side, dtype=torch.float32)
    patch_id = torch.arange(side * side).reshape(side, side)
    pix = patch_id.repeat_interleave(p, 0).repeat_interleave(p, 1).float()[None, None]
    codes = pix[0].long().numpy()
    t2, p2, c2 = dihedral(tokens, pix, codes, k=k, flip=flip)
    assert t2[0, 0, 0] == -1  # CLS stays first
    grid = t2[0, 1:, 0].reshape(side, side)
    expanded = grid.repeat_interleave(p, 0).repeat_interleave(p, 1)
    assert torch.equal(expanded, p2[0, 0]) and np.array_equal(expanded.long().numpy(), c2[0])
    chip_codes = np.array([1, 2])
    assert np.array_equal(dihedral(tokens.repeat(2, 1, 1), None, chip_codes, k=k,
                                   flip=flip)[2], chip_codes)


def test_pixel_branch_classifies_each_pixel_on_its_own_bands():
    """The per-pixel branch adds logits that depend on a pixel's own bands only."""
    torch.manual_seed(0)
    tokens, pixels = _inputs(8, b=1)
    head = UNetHead(12, 8, 3, bands=4, hidden=8, out_channels=4, pixel_branch=6).eval()
    changed = pixels.clone()
    changed[0, :, 10, 21] *= 3
    branch = head.pixel_branch(head.pixel_norm(changed)) - head.pixel_branch(
        head.pixel_norm(pixels))
    moved = branch.abs().sum(dim=(0, 1)).detach() > 0
    assert moved[10, 21] and int(moved.sum()) == 1
    # its logits are part of the head's output
    with torch.no_grad():
        before = head(tokens, pixels)
        head.pixel_branch[-1].bias += torch.tensor([1.0, 0.0, -1.0])
        after = head(tokens, pixels)
    torch.testing.assert_close(after - before, torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1)
                               .expand_as(before))
    # heads written before the option have no branch, and rebuild as they were
    old = build_head("segmentation", dim=12, patch_size=8, n_classes=3, decoder="unet",
                     bands=4, hidden=8, out_channels=4)
    assert old.pixel_branch is None
    assert not any(k.startswith("pixel_branch.") for k in old.state_dict())


def test_context_dropout_keeps_the_pixel_branch_and_scales_the_context():
    """Training drops whole chips' context logits (what is left is the pixel branch's);
    evaluation adds the context scaled by 1 - p, its expectation in training."""
    torch.manual_seed(0)
    tokens, pixels = _inputs(8, b=16)
    plain = UNetHead(12, 8, 3, bands=4, hidden=8, out_channels=4, pixel_branch=6, dropout=0.0)
    head = UNetHead(12, 8, 3, bands=4, hidden=8, out_channels=4, pixel_branch=6, dropout=0.0,
                    context_dropout=0.75)
    head.load_state_dict(plain.state_dict())  # same weights: only the option differs
    plain.eval(), head.eval()
    with torch.no_grad():
        branch = head.pixel_branch(head.pixel_norm(pixels))
        context = plain(tokens, pixels) - branch
        torch.testing.assert_close(head(tokens, pixels), branch + 0.25 * context)
        # training: a chip gets either only the branch or branch + the whole context
        head.train()
        for module in head.modules():  # BatchNorm in eval: statistics must not move
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        out = head(tokens, pixels)
    dropped = [torch.allclose(out[i], branch[i], atol=1e-5) for i in range(16)]
    kept = [torch.allclose(out[i], branch[i] + context[i], atol=1e-5) for i in range(16)]
    assert all(d or k for d, k in zip(dropped, kept, strict=True))
    assert 0 < sum(kept) < sum(dropped)  # p = 0.75: most chips dropped, not all
    # the option is stored in the head config and rebuilds the same head
    again = build_head("segmentation", dim=12, patch_size=8, n_classes=3, decoder="unet",
                       bands=4, hidden=8, out_channels=4, pixel_branch=6,
                       context_dropout=0.75)
    assert again.context_dropout == 0.75
    assert build_head("segmentation", dim=12, patch_size=8, n_classes=3, decoder="unet",
                      bands=4, pixel_branch=6).context_dropout == 0.0  # older heads


@pytest.mark.parametrize("options", [dict(pixel_branch=6, context_dropout=1.0),
                                     dict(pixel_branch=6, context_dropout=-0.1),
                                     dict(pixel_branch=0, context_dropout=0.5)])
def test_context_dropout_needs_a_pixel_branch_and_a_probability(options):
    with pytest.raises(GeofmValueError, match="context_dropout"):
        UNetHead(12, 8, 3, bands=4, **options)
