"""``geofm predict``: apply a trained head to the chips of a run root.

Writes one class-map GeoTIFF per scene, ``OUT/<scene_id>.tif``: uint8 (uint16 above
255 classes) label codes on the scene's native grid (the mosaic of its valid chips, at
the chips' pixel size, in their CRS), nodata 0 where no chip covers a pixel. A
classification head fills each chip footprint with its chip's class. ``OUT/run.json``
records the stage ``predict``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from geofm.exceptions import CheckpointError, GeofmError, GeofmValueError
from geofm.grid import PixelGrid
from geofm.ids import encode_id
from geofm.layout import RunRoot
from geofm.manifest import StageRecord, call_config, stage_entry

if TYPE_CHECKING:
    from geofm.model.identity import ModelIdentity

log = logging.getLogger(__name__)


def head_encoder_identity(head_cfg: Mapping[str, Any]) -> ModelIdentity:
    """The encoder identity a head was trained with, from its ``best.pt`` config.

    Heads written before ``bands`` / ``time_location`` joined the identity get them from
    the head config (heads from before ``time_location`` existed encoded it).
    """
    from geofm.model.identity import ModelIdentity

    stored = dict(head_cfg.get("encoder") or {})
    stored.setdefault("bands", head_cfg.get("bands"))
    stored.setdefault("time_location", head_cfg.get("time_location", "encode"))
    return ModelIdentity.from_dict(stored)


def check_encoder_identity(saved: ModelIdentity | Mapping[str, Any],
                           current: ModelIdentity | Mapping[str, Any], *,
                           head_path: str | os.PathLike[str]) -> None:
    """Raise :class:`CheckpointError` if a head was trained on another encoder.

    The rule is :meth:`geofm.model.identity.ModelIdentity.compatible`.

    Args:
        saved: the encoder identity the head was trained with
            (:func:`head_encoder_identity`, or a stored identity dict).
        current: identity of the encoder loaded for prediction, with the ``bands`` and
            ``time_location`` the head's inputs are built with.
        head_path: the head checkpoint (for the message).
    """
    from geofm.model.identity import ModelIdentity

    if not isinstance(saved, ModelIdentity):
        saved = ModelIdentity.from_dict(saved)
    if not isinstance(current, ModelIdentity):
        current = ModelIdentity.from_dict(current)
    diffs = saved.differences(current)
    if diffs:
        said = "; ".join(f"{k}: head trained with {a!r}, now {b!r}" for k, (a, b) in diffs.items())
        raise CheckpointError(
            f"head {head_path} was trained on another encoder ({said}); pass "
            f"the encoder it was trained with (--checkpoint {saved.checkpoint} or "
            f"--model {saved.preset}) or re-train the head")


def write_class_map(path: str | os.PathLike[str], codes: np.ndarray, *, transform: Any,
                    epsg: int, class_names: Sequence[str] = ()) -> Path:
    """Write a class-code GeoTIFF atomically (nodata 0, deflate, class names as tags).

    Args:
        path: destination ``.tif``.
        codes: int [H, W] label codes (0 = nodata).
        transform: affine transform of the pixel corners, native CRS.
        epsg: EPSG code of the CRS.
        class_names: a name per code 1..n, stored as tags ``class_<code>``.
    """
    import rasterio

    from geofm.io import atomic_path

    dtype = "uint8" if int(codes.max(initial=0)) < 256 else "uint16"
    profile = {"driver": "GTiff", "height": codes.shape[0], "width": codes.shape[1],
               "count": 1, "dtype": dtype, "crs": f"EPSG:{epsg}", "transform": transform,
               "nodata": 0, "compress": "deflate"}
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(codes.astype(dtype), 1)
            dst.update_tags(**{f"class_{i + 1}": n for i, n in enumerate(class_names)})
    return Path(path)


@stage_entry("predict", root="out")
def predict(root: str | os.PathLike[str] | RunRoot, head: str | os.PathLike[str],
            out: str | os.PathLike[str], *, checkpoint: str | os.PathLike[str] | None = None,
            model: str | None = None, batch_size: int = 16, device: str = "auto",
            scenes: Sequence[str] | None = None, encoder: Any = None,
            overwrite: bool = False, progress: bool = True) -> StageRecord:
    """Apply a trained head to every valid chip and write a class map per scene.

    Args:
        root: run root written by ``geofm chip`` (read only).
        head: ``best.pt`` written by :func:`geofm.finetune.finetune`.
        out: output folder for ``<scene_id>.tif`` and ``run.json``.
        checkpoint: the encoder checkpoint the head was trained with.
        model: or the random-weight preset it was trained with (testing only).
        batch_size: chips per encoder call.
        device: ``auto``, ``cpu`` or ``cuda``.
        scenes: only these scene ids (default: all).
        encoder: an already loaded encoder to use instead of ``checkpoint``/``model``.
        overwrite: recompute scenes whose GeoTIFF exists.
        progress: show a progress bar.

    Returns:
        The stage record (``out/run.json``); a scene that fails is recorded, the others
        are written.

    Raises:
        CheckpointError: the head is unreadable or was trained on another encoder.
        GeofmValueError: the run root's chips lack the head's bands or sensor.
    """
    from geofm.finetune.cache import ChipEncoder
    from geofm.finetune.data import read_chip_table
    from geofm.finetune.layers import parse_layers
    from geofm.finetune.stage import load_encoder_for
    from geofm.finetune.train import load_head, predict_codes
    from geofm.log import progress as progress_bar
    from geofm.model import resolve_device

    run, out = RunRoot.of(root), Path(out)
    device = str(resolve_device(device))
    config = call_config(root=str(run.path), head=str(head),
                         checkpoint=checkpoint and str(checkpoint), device=device)
    out.mkdir(parents=True, exist_ok=True)
    with StageRecord(out, "predict", config=config) as record:
        head_module, head_cfg = load_head(head, device=device)
        encoder = load_encoder_for(checkpoint=checkpoint, model=model, device=device,
                                   encoder=encoder, stage="predict")
        bands = tuple(head_cfg["bands"])
        # the head's inputs were built this way; heads from before the option encoded them
        time_location = str(head_cfg.get("time_location", "encode"))
        check_encoder_identity(head_encoder_identity(head_cfg),
                               encoder.identity.replace(bands=bands,
                                                        time_location=time_location),
                               head_path=head)
        if int(encoder.dim) != head_cfg["dim"] or int(encoder.patch_size) != head_cfg[
                "patch_size"]:
            raise CheckpointError(
                f"head {head} expects tokens of width {head_cfg['dim']} and patch "
                f"{head_cfg['patch_size']}, the encoder gives {encoder.dim} / "
                f"{encoder.patch_size}; pass the encoder the head was trained with")
        table = read_chip_table(run)
        sensors = set(table["sensor"])
        if sensors != {head_cfg["sensor"]}:
            raise GeofmValueError(f"head {head} was trained on {head_cfg['sensor']} chips, the "
                                  f"run root {run.path} holds {', '.join(sorted(sensors))}")
        # the encoder layers the head was trained on; heads from before the option: "last"
        layers = parse_layers(head_cfg.get("layers", ["last"]),
                              depth=len(encoder.transformer.layers))
        scene_ids = sorted(table["scene_id"].unique())
        if scenes is not None:
            missing = sorted(set(scenes) - set(scene_ids))
            if missing:
                raise GeofmValueError(f"scene(s) {', '.join(missing)} have no valid chips in "
                                      f"{run.path}; valid scenes: {', '.join(scene_ids)}")
            scene_ids = [s for s in scene_ids if s in set(scenes)]
        written = skipped = 0
        for scene_id in progress_bar(scene_ids, desc="predict", unit="scene",
                                     disable=not progress):
            target = out / f"{encode_id(scene_id)}.tif"  # the id as a file name
            if target.exists() and not overwrite:
                skipped += 1
                continue
            rows = table[table["scene_id"] == scene_id].reset_index(drop=True)
            try:
                _predict_scene(target, rows, ChipEncoder(encoder=encoder, root=run.path,
                                                         samples=rows, bands=bands,
                                                         device=device,
                                                         time_location=time_location,
                                                         layers=layers),
                               head_module, head_cfg, batch_size=batch_size,
                               predict_codes=predict_codes)
            except GeofmError as exc:
                record.fail(scene_id, str(exc), path=target)
                log.error("scene %s failed: %s", scene_id, exc)
                continue
            written += 1
        record.counts.update(scenes=len(scene_ids), written=written, skipped=skipped,
                             chips=len(table[table["scene_id"].isin(scene_ids)]))
        record.extra.update(model=encoder.identity.replace(
            bands=bands, time_location=time_location).to_dict(), head=str(head))
    return record


def _predict_scene(target: Path, rows: pd.DataFrame, chip_encoder: Any, head: Any,
                   head_cfg: dict[str, Any], *, batch_size: int, predict_codes: Any) -> None:
    """Predict every chip of one scene and write the mosaic to ``target``."""
    mosaic = None
    grid = None
    for start in range(0, len(rows), batch_size):
        idx = list(range(start, min(len(rows), start + batch_size)))
        pixels, valid = chip_encoder.read(idx)
        tokens = chip_encoder.encode_pixels(pixels, idx)
        bands = None
        if getattr(head, "uses_pixels", False):
            import torch

            bands = torch.from_numpy(pixels).to(tokens.device)
        codes = predict_codes(head, tokens, bands)
        height, width = valid.shape[1:]
        if codes.ndim == 1:  # classification: one code per chip footprint
            codes = np.broadcast_to(codes[:, None, None], (len(idx), height, width)).copy()
        codes = np.where(valid, codes, 0)
        if grid is None:
            grid = _scene_grid(rows, height, width)
            mosaic = np.zeros(grid.shape, dtype=np.int64)
        assert mosaic is not None
        r0s, c0s = grid.offsets(rows.loc[idx, "minx"], rows.loc[idx, "maxy"])
        for k, (r0, c0) in enumerate(zip(r0s, c0s, strict=True)):
            mosaic[r0:r0 + height, c0:c0 + width] = codes[k]
    assert mosaic is not None and grid is not None
    write_class_map(target, mosaic, transform=grid.transform, epsg=grid.epsg,
                    class_names=head_cfg.get("class_names", ()))


def _scene_grid(rows: pd.DataFrame, height: int, width: int) -> PixelGrid:
    """Mosaic grid of a scene's chips: their native bounds at ``height x width`` px a chip."""
    first = rows.iloc[0]
    res = (float(first["maxx"] - first["minx"]) / width,
           float(first["maxy"] - first["miny"]) / height)
    return PixelGrid.covering(rows[["minx", "miny", "maxx", "maxy"]].to_numpy(dtype=np.float64),
                              res=res, epsg=int(rows["epsg"].iloc[0]))


def cli_options() -> dict[str, Any]:
    """``geofm predict``'s options: :func:`predict`'s signature plus what it cannot say.

    Returns:
        ``{name: geofm.options.Option}``.
    """
    from geofm.model.presets import PRESETS
    from geofm.options import Cli, comma_list, declare

    return declare(predict, {
        "root": Cli(required=True, help="run root written by `geofm chip`"),
        "head": Cli(required=True, help="best.pt written by `geofm finetune`"),
        "out": Cli(required=True, help="folder for <scene_id>.tif class maps"),
        "checkpoint": Cli(group="encoder", required=True),
        "model": Cli(group="encoder", required=True, choices=tuple(PRESETS)),
        "scenes": Cli(convert=comma_list, help="comma list of scene ids (default all)"),
        "encoder": Cli(cli=False),
    })


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``geofm predict`` options to ``parser`` (from :func:`cli_options`)."""
    from geofm.options import add_arguments as add_options

    add_options(parser, cli_options().values())


def run_cli(args: argparse.Namespace) -> int:
    """Run ``geofm predict`` from parsed arguments; returns the exit code."""
    from geofm.options import library_kwargs

    record = predict(**library_kwargs(args, cli_options().values()))
    return 1 if record.failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``geofm predict`` with ``argv``."""
    from geofm.cli import stage_main

    return stage_main("predict", argv)
