import numpy as np
import pytest
import torch

from geofm.exceptions import CheckpointError, GeofmFileNotFoundError, GeofmValueError
from geofm.finetune.heads import ClassificationHead, SegmentationHead
from geofm.finetune.train import (
    class_weights_from_counts,
    load_head,
    plot_curves,
    save_head,
    train_head,
)

DIM, P, SIDE, K = 8, 4, 4, 3  # 4 x 4 patches of 4 px -> 16 x 16 px, 3 classes


def _toy(n=48, seed=0):
    """Tokens whose patch class is readable from the token; labels per pixel."""
    rng = np.random.default_rng(seed)
    patch_class = rng.integers(1, K + 1, size=(n, SIDE, SIDE))
    tokens = rng.normal(0, 0.3, size=(n, 1 + SIDE * SIDE, DIM)).astype(np.float32)
    tokens[:, 1:, :K] += 2 * np.eye(K)[patch_class.reshape(n, -1) - 1]
    labels = np.kron(patch_class, np.ones((P, P), dtype=int))
    labels[:, 0, 0] = 0  # some ignored pixels
    valid = np.ones((n, SIDE * P, SIDE * P), dtype=bool)

    def source(idx):
        idx = np.asarray(idx)
        return torch.from_numpy(tokens[idx]), valid[idx]

    def targets(idx, valid_):
        return labels[np.asarray(idx)]

    return source, targets


def _head(seed=0):
    torch.manual_seed(seed)
    return SegmentationHead(DIM, P, K, hidden=16, out_channels=4)


def test_training_learns_and_keeps_best_epoch():
    source, targets = _toy()
    result = train_head(_head(), source, targets, train_idx=range(36), val_idx=range(36, 48),
                        n_classes=K, epochs=6, batch_size=8, lr=3e-2, patience=None,
                        progress=False)
    assert len(result.history) == 6
    miou = [h["mean_iou"] for h in result.history]
    assert result.best["mean_iou"] == max(miou) and result.best_epoch == 1 + int(np.argmax(miou))
    assert result.best["mean_iou"] > 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert {"iou", "f1", "macro_f1", "pixel_accuracy", "val_loss", "seconds"} <= set(
        result.history[0])


def test_early_stopping_after_patience_epochs_without_gain():
    source, _ = _toy()
    torch.manual_seed(0)
    head = ClassificationHead(DIM, K)  # no BatchNorm: with lr=0 nothing can change

    def chip_targets(idx, valid):
        return (np.asarray(idx) % K) + 1

    result = train_head(head, source, chip_targets, train_idx=range(36),
                        val_idx=range(36, 48), n_classes=K, epochs=10, batch_size=8, lr=0.0,
                        patience=2, progress=False)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


def test_keep_last_runs_every_epoch_and_keeps_the_last():
    """``keep="last"``: a fixed schedule; patience is ignored and the saved epoch is the
    final one, where ``keep="best"`` would stop and keep the first (nothing changes)."""
    source, _ = _toy()

    def chip_targets(idx, valid):
        return (np.asarray(idx) % K) + 1

    torch.manual_seed(0)
    head = ClassificationHead(DIM, K)  # no BatchNorm: with lr=0 nothing can change
    result = train_head(head, source, chip_targets, train_idx=range(36),
                        val_idx=range(36, 48), n_classes=K, epochs=4, batch_size=8, lr=0.0,
                        patience=1, progress=False, keep="last")
    assert len(result.history) == 4 and not result.stopped_early
    assert result.best_epoch == 4 and result.best == result.history[-1]
    assert result.best_state.keys() == head.state_dict().keys()
    with pytest.raises(GeofmValueError, match="keep must be 'best' or 'last', got 'first'"):
        train_head(head, source, chip_targets, train_idx=range(8), val_idx=range(8, 12),
                   n_classes=K, epochs=1, progress=False, keep="first")


def test_class_weights_inverse_frequency():
    w = class_weights_from_counts(np.array([100, 300, 0, 600]))
    assert w[2] == 0
    assert w[0] / w[1] == pytest.approx(3) and w[1] / w[3] == pytest.approx(2)
    assert w[[0, 1, 3]].mean() == pytest.approx(1)


def test_checkpoint_round_trip_gives_the_same_logits(tmp_path):
    head = _head(3).eval()
    tokens = torch.randn(2, 1 + SIDE * SIDE, DIM)
    head.fit_whitening([torch.randn(8, 1 + SIDE * SIDE, DIM) * torch.arange(1.0, DIM + 1)])
    config = {"task": "segmentation", "dim": DIM, "patch_size": P, "n_classes": K,
              "head_options": {"hidden": 16, "out_channels": 4}}
    save_head(tmp_path / "best.pt", head.state_dict(), config)
    loaded, cfg = load_head(tmp_path / "best.pt")
    assert cfg == config
    assert loaded.whitening.fitted  # the fitted whitening travels with the weights
    assert torch.equal(loaded.whitening.matrix, head.whitening.matrix)
    assert torch.allclose(loaded(tokens), head(tokens))


def test_load_head_errors(tmp_path):
    with pytest.raises(GeofmFileNotFoundError, match="nope.pt does not exist"):
        load_head(tmp_path / "nope.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt is not a readable geofm head"):
        load_head(tmp_path / "other.pt")


def test_plot_curves_writes_png(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "mean_iou": 0.1 * e,
                "macro_f1": 0.1 * e, "pixel_accuracy": 0.1 * e} for e in (1, 2, 3)]
    path = plot_curves(history, tmp_path / "curves.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
