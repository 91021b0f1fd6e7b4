import pytest
import torch

from geofm.exceptions import ShapeError
from geofm.finetune.heads import (
    ClassificationHead,
    SegmentationHead,
    build_head,
    tokens_to_grid,
)


def test_segmentation_head_returns_full_resolution_logits():
    head = SegmentationHead(16, 4, 5, hidden=8, out_channels=4)
    logits = head(torch.randn(2, 1 + 9, 16))  # 3 x 3 patches of 4 px
    assert logits.shape == (2, 5, 12, 12)


def test_tokens_to_grid_is_row_major_and_drops_cls():
    dim, side = 3, 2
    tokens = torch.zeros(1, 1 + side * side, dim)
    tokens[0, 0] = -1  # CLS
    for i in range(side * side):
        tokens[0, 1 + i] = i
    grid = tokens_to_grid(tokens, dim)
    assert grid.shape == (1, dim, side, side)
    assert grid[0, 0].tolist() == [[0, 1], [2, 3]]


def test_segmentation_output_pixels_follow_their_patch():
    """Changing one patch token changes only the pixels near that patch."""
    torch.manual_seed(0)
    head = SegmentationHead(8, 4, 3, hidden=8, out_channels=2).eval()
    tokens = torch.randn(1, 1 + 16, 8)
    base = head(tokens)
    changed = tokens.clone()
    changed[0, 1 + 0] += 5  # patch (0, 0)
    diff = (head(changed) - base).abs().sum(dim=(0, 1))
    assert diff[:4, :4].sum() > 0
    # two 3x3 convs at patch level reach two patches away, the last 3x3 conv one pixel more
    assert diff[13:, :].sum() == 0 and diff[:, 13:].sum() == 0


def test_classification_head_pools_cls_or_mean():
    tokens = torch.randn(4, 1 + 4, 16)
    torch.manual_seed(0)
    cls_head = ClassificationHead(16, 3, pool="cls").eval()
    out = cls_head(tokens)
    assert out.shape == (4, 3)
    changed = tokens.clone()
    changed[:, 1:] += torch.randn(4, 4, 16)  # patch tokens only: the CLS head must not notice
    assert torch.allclose(cls_head(changed), out)
    torch.manual_seed(0)
    mean_head = ClassificationHead(16, 3, pool="mean").eval()
    assert not torch.allclose(mean_head(changed), mean_head(tokens))


def test_shape_errors_name_the_problem():
    with pytest.raises(ShapeError, match="not a square grid"):
        tokens_to_grid(torch.randn(1, 1 + 6, 4), 4)
    with pytest.raises(ShapeError, match=r"D=8"):
        SegmentationHead(8, 4, 2)(torch.randn(1, 5, 4))
    with pytest.raises(ValueError, match="unknown task 'detect'"):
        build_head("detect", dim=4, patch_size=2, n_classes=2)
