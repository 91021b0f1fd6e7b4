"""Encode chips with the frozen encoder, once, and keep their tokens for every epoch.

The encoder runs in eval mode under ``torch.inference_mode``; its weights never see a
gradient. Tokens are stored as float16 [N, 1+L, D] in memory or in a ``.npy`` memmap
on disk, so later epochs cost only the head. With a layer selection (see
:mod:`geofm.finetune.layers`) the width is ``D * n_layers``. :class:`ChipEncoder` is also the
"no cache" path (re-encode every batch), used by the benchmark and by ``predict``. The
encoder runs through :class:`geofm.model.embedder.Embedder` with the fine-tuning nodata
rule: nodata pixels of any fraction are filled with the band mean (the label masks them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geofm.exceptions import GeofmValueError
from geofm.log import progress as progress_bar


@dataclass
class ChipEncoder:
    """Read chips of a run root and run the frozen encoder on them.

    Attributes:
        encoder: module from :func:`geofm.model.load_encoder`.
        root: run root the ``chip_path`` values are relative to.
        samples: rows with ``chip_path``, ``date``, ``lat``, ``lon``, ``sensor``.
        bands: band names fed to the encoder.
        device: torch device string.
        time_location: ``encode`` the acquisition date and chip centre into Clay's 8
            time/location channels, or ``zero`` them (see :func:`resolve_time_location`).
        layers: encoder layers whose tokens are concatenated (from
            :func:`geofm.finetune.layers.parse_layers`); ``("last",)`` is the encoder output.
    """

    encoder: Any
    root: Path
    samples: pd.DataFrame
    bands: tuple[str, ...]
    device: str = "cpu"
    time_location: str = "encode"
    layers: tuple[int | str, ...] = ("last",)
    embedder: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from geofm.model.embedder import Embedder

        # fp32, no autocast; nodata of any fraction is filled (max_invalid=None)
        self.embedder = Embedder(self.encoder, device=self.device,
                                 time_location=self.time_location, layers=self.layers,
                                 max_invalid=None)

    def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """DN pixels float32 [B, C, H, W] (nodata filled with the band mean) and valid [B, H, W]."""
        rows = self.samples.iloc[list(indices)]
        sensor = str(rows["sensor"].iloc[0])
        pixels, valid = [], []
        for rel in rows["chip_path"]:
            px, ok, _ = self.embedder.read_chip(self.root / str(rel), sensor=sensor,
                                                bands=self.bands)
            pixels.append(px)
            valid.append(ok)
        return np.stack(pixels), np.stack(valid)

    def encode_pixels(self, pixels: np.ndarray, indices: Sequence[int]) -> Any:
        """Tokens float32 [B, 1+L, D * n_layers] (torch, on ``device``) of DN [B, C, H, W]."""
        rows = self.samples.iloc[list(indices)]
        return self.embedder.tokens(
            pixels, sensor=str(rows["sensor"].iloc[0]), bands=list(self.bands),
            dates=list(pd.to_datetime(rows["date"], utc=True)),
            lats=rows["lat"].to_numpy(np.float64), lons=rows["lon"].to_numpy(np.float64))

    def __call__(self, indices: Sequence[int]) -> tuple[Any, np.ndarray]:
        """Read and encode samples: (tokens float32 [B, 1+L, D * n_layers], valid [B, H, W])."""
        pixels, valid = self.read(indices)
        return self.encode_pixels(pixels, indices), valid


@dataclass
class TokenCache:
    """Encoder tokens of every sample, computed once.

    Attributes:
        tokens: float16 [N, 1+L, D * n_layers] (array or memmap), rows in sample order.
        valid: bool [N, H, W], False where the chip pixel was nodata.
        pixels: the bands the encoder saw, DN float32 [N, C, H, W] in memory (nodata
            filled with the band mean), or ``None`` when not kept.
    """

    tokens: np.ndarray
    valid: np.ndarray
    pixels: np.ndarray | None = None

    def pixel_batch(self, indices: Sequence[int], device: str = "cpu") -> Any:
        """Bands DN float32 [B, C, H, W] of ``indices`` as a torch tensor on ``device``.

        Raises:
            GeofmValueError: the cache was built without ``keep_pixels``.
        """
        import torch

        if self.pixels is None:
            raise GeofmValueError("this token cache holds no pixels; build it with "
                                  "keep_pixels=True", name="keep_pixels", value=False)
        return torch.from_numpy(self.pixels[np.asarray(indices)]).to(device)

    def batch(self, indices: Sequence[int], device: str = "cpu") -> Any:
        """Tokens float32 [B, 1+L, D * n_layers] of ``indices`` as a torch tensor on ``device``."""
        import torch

        idx = np.asarray(indices)
        return torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.float32)).to(device)


def resolve_time_location(encoder: Any, time_location: str = "auto") -> str:
    """``encode`` or ``zero`` for ``encoder``: the embed stage's rule, on its identity.

    ``auto`` zeroes the time/location channels of a random-weight encoder and encodes
    them for a checkpoint, exactly as ``geofm embed`` does
    (:func:`geofm.model.embedder.resolve_time_location`).
    """
    from geofm.model.embedder import resolve_time_location as resolve

    return resolve(time_location, random_init=bool(encoder.identity.random_init))


def build_cache(chip_encoder: ChipEncoder, *, batch_size: int = 16,
                cache_dir: str | os.PathLike[str] | None = None,
                progress: bool = True, keep_pixels: bool = False) -> TokenCache:
    """Encode every sample of ``chip_encoder`` once.

    Args:
        chip_encoder: reads and encodes the samples.
        batch_size: chips per encoder call.
        cache_dir: if given, tokens go to ``cache_dir/tokens.npy`` (float16 memmap)
            instead of memory.
        progress: show a progress bar.
        keep_pixels: also keep the bands read (DN float32, in memory even with
            ``cache_dir``), for heads that use them and the per-pixel baseline.

    Returns:
        The :class:`TokenCache`.
    """
    n = len(chip_encoder.samples)
    tokens: np.ndarray | None = None
    valid: np.ndarray | None = None
    kept: np.ndarray | None = None
    bar = progress_bar(total=n, desc="encode chips", unit="chip", disable=not progress)
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        pixels, ok = chip_encoder.read(idx)
        out = chip_encoder.encode_pixels(pixels, idx)
        out_np = out.cpu().numpy().astype(np.float16)
        if tokens is None:
            shape = (n, *out_np.shape[1:])
            if cache_dir is not None:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                tokens = np.lib.format.open_memmap(Path(cache_dir) / "tokens.npy", mode="w+",
                                                   dtype=np.float16, shape=shape)
            else:
                tokens = np.empty(shape, dtype=np.float16)
            valid = np.empty((n, *ok.shape[1:]), dtype=bool)
            if keep_pixels:
                kept = np.empty((n, *pixels.shape[1:]), dtype=np.float32)
        assert tokens is not None and valid is not None
        tokens[start:start + len(idx)] = out_np
        valid[start:start + len(idx)] = ok
        if kept is not None:
            kept[start:start + len(idx)] = pixels
        bar.update(len(idx))
    bar.close()
    if tokens is None or valid is None:
        raise GeofmValueError("no samples to encode", name="samples")
    if isinstance(tokens, np.memmap):
        tokens.flush()
    return TokenCache(tokens=tokens, valid=valid, pixels=kept)
