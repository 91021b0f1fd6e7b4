"""Issue acceptance: mean IoU >= 0.75 on held-out locations within 10 epochs.

The setting of ``benchmarks/bench_finetune.py`` (1024 px synthetic scene, 6 dates, 64 px
chips, random-weight ``tiny`` encoder, default head): about 100 s on 2 CPU cores.
"""

from __future__ import annotations

import json

import pytest

#: Epochs of the few-shot acceptance test (default 10; fewer for its time budget).
EPOCHS = 6


@pytest.mark.slow
def test_segmentation_head_reaches_the_acceptance_miou(tiny_encoder, tmp_path):
    from geofm.chip import chip
    from geofm.finetune import finetune
    from geofm.synth import synthesize

    synth = synthesize(tmp_path / "synth", seed=0, size=1024, n_dates=6, chip_size=64)
    chip(synth / "items", tmp_path / "root", chip_size=64, max_cloud=0.05, progress=False)
    classes = json.loads((synth / "truth.json").read_text())["classes"]
    names = [classes[k] for k in sorted(classes, key=int)]
    labels = sorted((synth / "labels").glob("*.tif"))
    # the token-only head and recipe this goal was set for; the unet default's few-shot
    # goals are measured in benchmarks/bench_finetune.py --fewshot
    record = finetune(tmp_path / "root", labels, tmp_path / "head", encoder=tiny_encoder,
                      epochs=10, batch_size=16, patience=None, class_names=names,
                      decoder="shuffle", augment=False, sampling="uniform", baseline=False,
                      progress=False)
    metrics = json.loads((tmp_path / "head" / "metrics.json").read_text())
    assert len(metrics["history"]) == 10
    assert record.counts["val_locations"] == 64  # a quarter of the 16 x 16 chip locations
    assert metrics["best"]["mean_iou"] >= 0.75, [h["mean_iou"] for h in metrics["history"]]
    # every class is learnt, not only the large ones
    assert min(metrics["best"]["iou"]) > 0.5, metrics["best"]["iou"]


def _fewshot_module():
    """``benchmarks/fewshot.py``: the few-shot setting and scoring of the benchmark."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "fewshot.py"
    spec = importlib.util.spec_from_file_location("geofm_bench_fewshot", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_few_labelled_places_generalise_to_unlabelled_ones(tiny_encoder, tmp_path):
    """Issue 21 goals on a small scene (the setting of ``bench_finetune.py --fewshot``):
    labels on the even squares of a 128 px checkerboard (8 chip locations), scores after
    ``predict`` on the odd squares, never labelled: held-out mIoU >= 0.75 on the seen
    classes and >= 0.8x the per-pixel baseline trained on the same locations. Default
    options except the epochs (the time budget): about 2 min on 2 free CPU cores."""
    fewshot = _fewshot_module()
    scene = fewshot.make_scene(tmp_path, block=64, size=256, n_dates=5)
    res = fewshot.run_fewshot(scene, tiny_encoder, None, tmp_path / "all", epochs=EPOCHS)
    assert res["n"] == 8 and res["train_locations"] == 6  # 2 validate: the last epoch is kept
    head, base = res["head"]["miou"], res["baseline"]["miou"]
    assert head >= 0.75, res
    assert head >= 0.8 * base, res
