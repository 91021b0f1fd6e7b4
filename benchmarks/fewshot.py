"""Few-shot setting of ``bench_finetune.py --fewshot`` (and the slow acceptance test).

A synthetic scene (``geofm synth``) whose land cover comes in cells of ``block`` px
(``block=64``: "patches", the synth default; ``block=128``: "blocks", large uniform
areas), chipped at 64 px. Labels are given on a checkerboard of 128 px squares (the
even squares); the odd squares are never labelled and are the held-out test area. A
few-shot run labels only ``n`` chip locations of the even squares (seeded pick), trains
``geofm finetune`` with its defaults, runs ``geofm predict`` over every chip, and
scores the class maps on the held-out squares against the full land-cover raster
(classes seen in the training labels only), beside a per-pixel baseline
(:mod:`geofm.finetune.baseline`) trained on the same training locations.

Boundary F1 (:func:`geofm.finetune.metrics.boundary_f1`): a predicted boundary pixel
counts as correct within ``BOUNDARY_TOL`` px (10 m each) of a true one (and vice versa
for recall), scored inside the held-out squares.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Side of the checkerboard squares of labelled / held-out area, pixels.
SQUARE = 128
#: Tolerance of the boundary F1, pixels.
BOUNDARY_TOL = 2
#: The Clay-architecture encoder of another size than the presets (random weights).
P16 = dict(dim=96, depth=3, heads=4, dim_head=24, mlp_ratio=2.0, patch_size=16, name="p16")


def encoder_for(name: str) -> Any:
    """Random-weight encoder: a preset name, or ``p16`` (:data:`P16`)."""
    from geofm.model import load_encoder
    from geofm.model.presets import EncoderConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights are the point here
        return load_encoder(preset=EncoderConfig(**P16) if name == "p16" else name)


@dataclass
class Scene:
    """A chipped synthetic scene with its truth and the checkerboard."""

    work: Path
    root: Path
    truth: np.ndarray  # int64 [H, W] land-cover codes
    profile: dict[str, Any]
    held: np.ndarray  # bool [H, W]: odd squares (never labelled)
    class_names: list[str]


def make_scene(work: Path, *, block: int, size: int = 768, n_dates: int = 6,
               seed: int = 0, chip_size: int = 64) -> Scene:
    """Synthesize and chip a scene (reused if ``work/root`` exists)."""
    import rasterio

    from geofm.chip import chip
    from geofm.synth import synthesize

    synth = work / "synth"
    if not (work / "root" / "run.json").exists():
        synthesize(synth, seed=seed, size=size, n_dates=n_dates, chip_size=block,
                   overwrite=True)
        chip(synth / "items", work / "root", chip_size=chip_size, max_cloud=0.05,
             progress=False, overwrite=True)
    label = sorted((synth / "labels").glob("*.tif"))[0]
    with rasterio.open(label) as src:
        truth, profile = src.read(1).astype(np.int64), dict(src.profile)
    rr, cc = np.indices(truth.shape)
    held = ((rr // SQUARE + cc // SQUARE) % 2) == 1
    classes = json.loads((synth / "truth.json").read_text())["classes"]
    return Scene(work=work, root=work / "root", truth=truth, profile=profile, held=held,
                 class_names=[classes[k] for k in sorted(classes, key=int)])


def chip_locations(scene: Scene, chip_size: int = 64) -> list[tuple[int, int]]:
    """(row, col) pixel offsets of the chips in the labelled (even) squares."""
    h, w = scene.truth.shape
    return [(r, c) for r in range(0, h, chip_size) for c in range(0, w, chip_size)
            if not scene.held[r, c]]


def write_labels(scene: Scene, path: Path, chosen: list[tuple[int, int]],
                 chip_size: int = 64) -> Path:
    """Label raster with only the ``chosen`` chips' footprints labelled (0 elsewhere)."""
    import rasterio

    out = np.zeros_like(scene.truth)
    for r, c in chosen:
        out[r:r + chip_size, c:c + chip_size] = scene.truth[r:r + chip_size, c:c + chip_size]
    profile = dict(scene.profile, nodata=0)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(out.astype(profile["dtype"]), 1)
    return path


def score_map(pred: np.ndarray, scene: Scene, seen: np.ndarray) -> dict[str, Any]:
    """mIoU over ``seen`` classes and boundary F1 on the held-out squares."""
    from geofm.finetune.metrics import boundary_f1, confusion_matrix, scores

    truth = np.where(scene.held & np.isin(scene.truth, seen) & (pred > 0), scene.truth, 0)
    s = scores(confusion_matrix(pred, truth, len(scene.class_names)))
    iou = [s["iou"][k - 1] or 0.0 for k in seen]
    # the interior of the held-out squares: their outer edge is no land-cover boundary
    area = scene.held & (pred > 0)
    return {"miou": float(np.mean(iou)),
            "bf1": boundary_f1(pred, scene.truth, area, tolerance=BOUNDARY_TOL)}


def run_fewshot(scene: Scene, encoder: Any, n: int | None, out: Path, *, seed: int = 0,
                **options: Any) -> dict[str, Any]:
    """One few-shot point: label ``n`` chips (None: all), finetune, predict, score.

    Returns:
        ``{"n", "head": {miou, bf1}, "baseline": {miou, bf1}, "val_miou", "best_epoch",
        "seconds"}`` (scores averaged over the scene's dates).
    """
    import rasterio

    from geofm.finetune import finetune
    from geofm.finetune.baseline import fit_pixel_baseline
    from geofm.finetune.cache import ChipEncoder
    from geofm.finetune.data import load_labelled_chips
    from geofm.finetune.predict import predict
    from geofm.finetune.train import load_head

    locs = chip_locations(scene)
    rng = np.random.default_rng(seed)
    chosen = locs if n is None or n >= len(locs) else [
        locs[i] for i in sorted(rng.choice(len(locs), n, replace=False))]
    out.mkdir(parents=True, exist_ok=True)
    labels = write_labels(scene, out / "labels.tif", chosen)
    started = time.perf_counter()
    finetune(scene.root, [labels], out / "head", encoder=encoder, class_names=scene.class_names,
             n_classes=len(scene.class_names), seed=seed, overwrite=True, progress=False,
             **options)
    train_s = time.perf_counter() - started
    metrics = json.loads((out / "head" / "metrics.json").read_text())
    predict(scene.root, out / "head" / "best.pt", out / "pred", encoder=encoder,
            overwrite=True, progress=False)
    _, cfg = load_head(out / "head" / "best.pt")
    data = load_labelled_chips(scene.root, [labels], n_classes=len(scene.class_names))
    seen = np.unique(data.labels[data.labels > 0])
    # the baseline: same training locations as the head, all their dates
    train_idx = np.flatnonzero(data.samples["chip_id"].isin(cfg["train_locations"]).to_numpy())
    reader = ChipEncoder(encoder=encoder, root=scene.root, samples=data.samples,
                         bands=data.bands)
    locs_of = data.samples["loc"].to_numpy()

    def px(idx: Any) -> np.ndarray:
        return reader.read(list(idx))[0]

    def cd(idx: Any) -> np.ndarray:
        pixels, valid = reader.read(list(idx))
        codes = data.labels[locs_of[np.asarray(idx)]].astype(np.int64)
        return np.where(valid, codes, 0)

    baseline = fit_pixel_baseline(px, cd, train_idx, seed=seed)
    head_scores, base_scores = [], []
    transform = scene.profile["transform"]
    for tif in sorted((out / "pred").glob("*.tif")):
        pred = np.zeros_like(scene.truth)  # the map on the label raster's grid
        with rasterio.open(tif) as src:  # (a date's mosaic covers only its valid chips)
            col, row = (int(round(v)) for v in ~transform * (src.transform.c, src.transform.f))
            pred[row:row + src.height, col:col + src.width] = src.read(1)
        head_scores.append(score_map(pred, scene, seen))
        base_scores.append(score_map(baseline_map(scene, data, tif.stem, baseline, reader),
                                     scene, seen))
    mean = lambda rows, k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    return {"n": len(chosen), "train_locations": len(cfg["train_locations"]),
            "seen": [int(k) for k in seen],
            "head": {"miou": mean(head_scores, "miou"), "bf1": mean(head_scores, "bf1")},
            "baseline": {"miou": mean(base_scores, "miou"), "bf1": mean(base_scores, "bf1")},
            "val_miou": metrics["best"]["mean_iou"], "best_epoch": metrics["best_epoch"],
            "val_baseline": (metrics.get("baseline") or {}).get("mean_iou"),
            "seconds": round(train_s, 1)}


def baseline_map(scene: Scene, data: Any, scene_file: str, baseline: Any,
                 reader: Any) -> np.ndarray:
    """The baseline's class map of one scene (date) on the scene grid, 0 = no chip."""
    from geofm.ids import decode_id

    samples = data.samples
    scene_id = decode_id(scene_file)  # predict names its maps encode_id(scene_id)
    rows = np.flatnonzero((samples["scene_id"] == scene_id).to_numpy())
    out = np.zeros_like(scene.truth)
    x0, y1 = scene.profile["transform"].c, scene.profile["transform"].f
    res = scene.profile["transform"].a
    for start in range(0, len(rows), 32):
        idx = rows[start:start + 32]
        pixels, valid = reader.read(list(idx))
        codes = np.where(valid, baseline.predict(pixels), 0)
        for k, i in enumerate(idx):
            r0 = int(round((y1 - samples["maxy"].iloc[i]) / res))
            c0 = int(round((samples["minx"].iloc[i] - x0) / res))
            h, w = codes.shape[1:]
            out[r0:r0 + h, c0:c0 + w] = codes[k]
    return out
