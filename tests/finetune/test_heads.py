import numpy as np
import pytest
import torch

from geofm.exceptions import GeofmValueError, ShapeError
from geofm.finetune.heads import (
    ClassificationHead,
    SegmentationHead,
    TokenWhitening,
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


def _skewed_tokens(n, side, dim, *, seed=0):
    """Tokens [n, 1+side*side, dim] with channel variances from 100 down to 1e-2, rotated."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(1, -1, dim)  # standard deviations 10 .. 0.1
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen))
    patches = torch.randn(n, side * side, dim, generator=gen) * scales
    patches = patches @ rotation.T + 3.0  # correlated channels around an offset
    cls = torch.full((n, 1, dim), 1e3)  # huge CLS: must not enter the statistics
    return torch.cat([cls, patches], dim=1)


def test_whitening_gives_uncorrelated_unit_variance_channels():
    dim, side = 6, 4
    tokens = _skewed_tokens(400, side, dim)
    white = TokenWhitening(dim, eps=1e-8)
    grid = tokens_to_grid(tokens, dim)
    assert torch.equal(white(grid), grid) and not white.fitted  # identity until fitted
    patches = tokens[:, 1:].reshape(-1, dim)
    white.fit(patches[i:i + 800] for i in range(0, len(patches), 800))  # streamed
    assert white.fitted
    out = white(grid).permute(0, 2, 3, 1).reshape(-1, dim).double()
    assert out.mean(dim=0).abs().max() < 1e-4
    np.testing.assert_allclose(torch.cov(out.T).numpy(), np.eye(dim), atol=1e-3)


def test_whitening_ridge_bounds_the_gain_of_weak_directions():
    dim = 6
    tokens = _skewed_tokens(400, 4, dim)
    white = TokenWhitening(dim, eps=1e-2).fit([tokens[:, 1:].reshape(-1, dim)])
    gains = torch.linalg.svdvals(white.matrix)
    top = torch.linalg.eigvalsh(torch.cov(tokens[:, 1:].reshape(-1, dim).T)).max()
    # no direction is amplified more than 1 / sqrt(eps * largest eigenvalue)
    assert float(gains.max()) <= float((1e-2 * top).rsqrt()) * 1.001


def test_whitened_head_learns_a_class_hidden_in_a_weak_direction():
    """The class is carried by a direction 30x weaker than the others (in std)."""
    dim, side, p, n = 8, 4, 2, 96
    gen = torch.Generator().manual_seed(1)
    classes = torch.randint(0, 2, (n, side * side), generator=gen)
    patches = torch.randn(n, side * side, dim, generator=gen)
    patches[..., 0] = (2 * classes - 1) * 3e-2 + 3e-3 * torch.randn(n, side * side,
                                                                    generator=gen)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen))
    tokens = torch.cat([torch.zeros(n, 1, dim), patches @ rotation.T], dim=1)
    labels = np.kron(classes.reshape(n, side, side).numpy() + 1, np.ones((p, p), dtype=int))
    valid = np.ones(labels.shape, dtype=bool)
    from geofm.finetune.train import train_head

    def run(whiten):
        torch.manual_seed(0)
        head = SegmentationHead(dim, p, 2, hidden=8, out_channels=2, whiten=whiten)
        if whiten:
            head.fit_whitening([tokens[:72]])  # training samples only
        result = train_head(head, lambda i: (tokens[np.asarray(i)], valid[np.asarray(i)]),
                            lambda i, v: labels[np.asarray(i)], train_idx=range(72),
                            val_idx=range(72, n), n_classes=2, epochs=8, batch_size=8,
                            lr=1e-2, patience=None, progress=False)
        return result.best["mean_iou"]

    whitened, plain = run(True), run(False)
    assert whitened > 0.9
    assert whitened > plain + 0.2


def test_whitening_inputs_are_what_each_head_sees():
    tokens = _skewed_tokens(30, 3, 4)  # CLS tokens are huge: only the CLS head sees them
    seg = SegmentationHead(4, 2, 3, hidden=4, out_channels=2)
    seg.fit_whitening([tokens[:10], tokens[10:]])
    assert float(seg.whitening.mean.max()) < 10  # patch tokens only
    cls_head = ClassificationHead(4, 3, pool="cls")
    cls_head.fit_whitening([tokens])
    torch.testing.assert_close(cls_head.whitening.mean, torch.full((4,), 1e3))
    mean_head = ClassificationHead(4, 3, pool="mean")
    mean_head.fit_whitening([tokens])
    torch.testing.assert_close(mean_head.whitening.mean, tokens[:, 1:].mean(dim=(0, 1)))
    with pytest.raises(GeofmValueError, match="no whitening"):
        ClassificationHead(4, 3, whiten=False).fit_whitening([tokens])
