import numpy as np
import pytest

from geofm.finetune.metrics import confusion_matrix, scores


def test_confusion_matrix_hand_example_ignores_code_zero():
    target = np.array([[1, 1, 2], [2, 3, 0]])
    pred = np.array([[1, 2, 2], [2, 1, 3]])
    cm = confusion_matrix(pred, target, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])


def test_scores_against_hand_computed_values():
    cm = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    s = scores(cm)
    assert s["iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert s["f1"] == pytest.approx([0.5, 0.8, 0.0])
    assert s["mean_iou"] == pytest.approx(1 / 3)
    assert s["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)
    assert s["support"] == [2, 2, 1]


def test_absent_class_is_left_out_of_the_means():
    cm = np.zeros((4, 4), dtype=int)
    cm[:3, :3] = [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    s = scores(cm)
    assert s["iou"][3] is None and s["f1"][3] is None
    assert s["mean_iou"] == pytest.approx(1 / 3)


def test_perfect_prediction_scores_one():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(4, 16, 16))
    pred = np.where(target == 0, 1, target)
    s = scores(confusion_matrix(pred, target, 4))
    assert s["mean_iou"] == 1.0 and s["macro_f1"] == 1.0 and s["pixel_accuracy"] == 1.0


def test_confusion_matrix_shape_mismatch():
    with pytest.raises(ValueError, match="pred has 3 values, target 2"):
        confusion_matrix(np.ones(3), np.ones(2), 2)


def test_boundary_f1_counts_boundaries_within_the_tolerance():
    from geofm.finetune.metrics import boundary_f1

    truth = np.ones((20, 20), int)
    truth[:, 10:] = 2  # one vertical boundary between columns 9 and 10
    assert boundary_f1(truth, truth) == 1.0
    near = np.roll(truth, 2, axis=1)  # the same boundary 2 px (20 m) to the right
    near[:, :2] = 1
    assert boundary_f1(near, truth, tolerance=2) == 1.0
    assert boundary_f1(near, truth, tolerance=1) == 0.0  # 2 px apart: nothing matches
    far = np.ones((20, 20), int)
    far[:, 16:] = 2  # 6 px away
    assert boundary_f1(far, truth) == 0.0
    extra = truth.copy()
    extra[0:4, 0:4] = 3  # the true boundary plus a false one far from it
    f1 = boundary_f1(extra, truth)
    assert 0.0 < f1 < 1.0  # recall 1, precision < 1
    uniform = np.ones((20, 20), int)
    assert boundary_f1(uniform, uniform) == 1.0  # no boundary in either map
    area = np.zeros((20, 20), bool)
    area[:, :5] = True  # neither map has a boundary inside the area
    assert boundary_f1(far, truth, area) == 1.0
