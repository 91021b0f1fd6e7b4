"""Running the encoder: one :class:`Embedder` for every stage that encodes chips.

``embed``, ``finetune`` and ``predict`` all turn DN pixels of chips into encoder outputs;
the :class:`Embedder` is the one place that knows how:

- loading the encoder of a run (:meth:`Embedder.load`: checkpoint, or a preset's seeded
  random weights, loudly flagged) and its :class:`~geofm.model.identity.ModelIdentity`;
- the nodata rule (:func:`geofm.model.chips.fill_invalid`; ``max_invalid`` is the
  embed stage's threshold, ``None`` fills any fraction as fine-tuning does);
- the datacube (:func:`geofm.model.make_datacube`: Clay normalisation, time and location
  codes, gsd, wavelengths) and the time/location rule (:func:`resolve_time_location`);
- precision (autocast, :func:`resolve_precision`), ``torch.inference_mode`` and
  batching: a batch that runs out of CUDA memory is split in halves and retried, down to
  one chip (:class:`torch.cuda.OutOfMemoryError` only; other errors propagate);
- the outputs: CLS and mean-pooled patch embeddings (:meth:`Embedder.embed`) or the
  tokens of chosen layers (:meth:`Embedder.tokens`, see :mod:`geofm.finetune.layers`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from geofm.exceptions import GeofmValueError
from geofm.model.chips import DEFAULT_MAX_INVALID, fill_invalid
from geofm.model.presets import PRESETS

if TYPE_CHECKING:
    import torch

    from geofm.model.identity import ModelIdentity

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
TIME_LOCATION = ("auto", "encode", "zero")

_T = TypeVar("_T")


def encoder_cli_options(*, precisions: Sequence[str] = PRECISIONS,
                        time_location: Sequence[str] = TIME_LOCATION) -> dict[str, Any]:
    """The command-line side of the encoder options a stage that runs the encoder shares.

    ``--checkpoint`` / ``--model`` (one of them, required), ``--precision``,
    ``--time-location`` and ``--workers`` (DataLoader reader processes), as
    :func:`geofm.options.declare` overrides; the stage's signature still owns the
    defaults and the help.

    Args:
        precisions: the ``precision`` choices of the stage.
        time_location: the ``time_location`` choices of the stage.

    Returns:
        ``{option name: geofm.options.Cli}``.
    """
    from pathlib import Path

    from geofm.model.chips import default_workers
    from geofm.options import Cli

    return {
        "checkpoint": Cli(type=Path, group="weights", required=True),
        "model": Cli(choices=tuple(PRESETS), group="weights", required=True),
        "precision": Cli(choices=tuple(precisions)),
        "time_location": Cli(choices=tuple(time_location)),
        "workers": Cli(type=int, default=default_workers(),
                       help="DataLoader reader processes (0 = read in this process; "
                            "default min(4, cpus-1))"),
    }


def resolve_time_location(time_location: str, *, random_init: bool) -> str:
    """Turn ``auto|encode|zero`` into ``encode`` or ``zero``.

    ``auto`` encodes acquisition time and position for a real checkpoint (Clay learnt
    to use them) and feeds zeros for random weights: untrained weights cannot use them,
    and their fixed per-date offset would otherwise dominate every similarity (with
    random weights 89% of search hits came from the query's own date; see
    benchmarks/RESULTS.md).

    Raises:
        GeofmValueError: ``time_location`` is none of :data:`TIME_LOCATION`.
    """
    if time_location not in TIME_LOCATION:
        raise GeofmValueError(f"unknown time_location {time_location!r}; use one of "
                              f"{', '.join(TIME_LOCATION)}")
    if time_location == "auto":
        return "zero" if random_init else "encode"
    return time_location


def resolve_precision(precision: str | None, device: str) -> str:
    """Default precision: bf16 on CUDA, fp32 on CPU; validate an explicit choice.

    Raises:
        GeofmValueError: ``precision`` is none of :data:`PRECISIONS`.
    """
    if precision is None:
        return "bf16" if device.startswith("cuda") else "fp32"
    if precision not in PRECISIONS:
        raise GeofmValueError(f"unknown precision {precision!r}; use one of "
                              f"{', '.join(PRECISIONS)}")
    return precision


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of ``precision`` on ``device``: none for fp32, else bf16/fp16.

    Raises:
        GeofmValueError: ``precision`` is none of :data:`PRECISIONS`.
    """
    import torch

    resolve_precision(precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


def load_run_encoder(*, checkpoint: str | os.PathLike[str] | None, model: str | None,
                     device: str, seed: int = 0, encoder: Any = None,
                     stage: str = "embed") -> tuple[Any, ModelIdentity]:
    """The frozen encoder of a run (eval mode, no gradients) and its identity.

    Without ``checkpoint`` the weights are random (seeded with ``seed``): the loader
    emits a :class:`~geofm.exceptions.GeofmWarning`, this logs a warning and the identity
    has ``random_init: true``.

    Args:
        checkpoint: Clay checkpoint (Lightning ``.ckpt``, state dict or ``.safetensors``).
        model: preset ``tiny|small|base|large``; without ``checkpoint``: random weights.
        device: torch device string (already resolved, e.g. ``cpu``, ``cuda:0``).
        seed: seed of the random weights.
        encoder: an already loaded encoder, used as is (moved to ``device``).
        stage: the stage asking, for the message when neither source is given.

    Returns:
        ``(encoder, identity)``.

    Raises:
        GeofmValueError: neither or an unknown preset given.
        CheckpointError: the checkpoint is missing, corrupt or of another architecture.
    """
    from geofm.model.loading import load_encoder

    if encoder is None:
        if checkpoint is None and model is None:
            raise GeofmValueError(f"{stage} needs --checkpoint PATH (real weights) or --model "
                                  f"{'|'.join(PRESETS)} (random weights, for testing)")
        if model is not None and model not in PRESETS:
            raise GeofmValueError(f"unknown model preset {model!r}; use one of "
                                  f"{', '.join(PRESETS)}")
        encoder = load_encoder(None if checkpoint is None else os.fspath(checkpoint),
                               preset=model, device=device, seed=seed)
    encoder.to(device).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    identity: ModelIdentity = encoder.identity
    if identity.random_init:
        if identity.seed is None:
            identity = identity.replace(seed=seed)
        log.warning("%s with RANDOM weights (preset %r, seed %s): the vectors are "
                    "meaningless except for testing; pass --checkpoint for real ones",
                    "embedding" if stage == "embed" else stage, identity.preset,
                    identity.seed)
    return encoder, identity


def encode_layers(encoder: Any, datacube: Mapping[str, Any],
                  layers: Sequence[int | str]) -> Any:
    """Run ``encoder`` on ``datacube`` and return the tokens of ``layers``, concatenated.

    Blocks are tapped with forward pre-hooks on the encoder's own submodules (the input of
    block ``i + 1``'s attention, or of the final LayerNorm for the last block; ``embed`` is
    the input of block 0's attention), so the encoder's forward pass runs unchanged.

    Args:
        encoder: a :class:`geofm.model.encoder.ClayEncoder` (``transformer.layers`` =
            blocks ``[attention, feed-forward]``, ``transformer.norm`` = final LayerNorm).
        datacube: the encoder's input (see ``ClayEncoder.forward``).
        layers: a selection from :func:`geofm.finetune.layers.parse_layers`: block
            indices, ``"embed"`` and/or ``"last"``.

    Returns:
        float32 torch tensor [B, 1+L, D * len(layers)] (CLS first, then the patch tokens
        in row-major order), layers in the order given.
    """
    import torch

    if tuple(layers) == ("last",):
        return encoder(datacube).float()
    blocks = encoder.transformer.layers
    taps: dict[int | str, Any] = {}
    handles = []

    def tap(index: int | str) -> Any:
        def hook(_module: Any, inputs: tuple[Any, ...]) -> None:
            taps[index] = inputs[0]
        return hook

    for index in {i for i in layers if i != "last"}:
        # the output of block i is the input of block i + 1 (or of the final norm)
        if index == "embed":
            nxt = blocks[0][0]
        else:
            assert isinstance(index, int)
            nxt = blocks[index + 1][0] if index + 1 < len(blocks) else encoder.transformer.norm
        handles.append(nxt.register_forward_pre_hook(tap(index)))
    try:
        final = encoder(datacube)
    finally:
        for handle in handles:
            handle.remove()
    parts = [final if i == "last" else taps[i] for i in layers]
    return torch.cat([p.float() for p in parts], dim=-1)


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


@dataclass(frozen=True)
class Embeddings:
    """Pooled encoder outputs of a batch (numpy, on the CPU).

    Attributes:
        cls: float32 [B, D], the CLS token.
        mean: float32 [B, D], the mean of the L patch tokens.
        patches: float16 [B, L, D] patch tokens (row-major patch order), or ``None``.
    """

    cls: np.ndarray
    mean: np.ndarray
    patches: np.ndarray | None = None


class Embedder:
    """A frozen encoder and how chips are fed to it.

    Args:
        encoder: a :class:`geofm.model.encoder.ClayEncoder` (set to eval mode, no
            gradients).
        identity: its identity (default ``encoder.identity``), with ``time_location``
            set to the rule used here.
        device: torch device string the inputs go to.
        precision: ``fp32`` (no autocast), ``bf16`` or ``fp16`` autocast.
        time_location: ``encode`` the acquisition time and chip centre into Clay's 8
            metadata channels, or ``zero`` them.
        layers: encoder layers whose tokens :meth:`tokens` concatenates
            (:func:`geofm.finetune.layers.parse_layers`); ``("last",)`` = encoder output.
        max_invalid: the nodata rule of :meth:`read_chip` (and of the embed stage's
            reader): largest invalid-pixel fraction filled; ``None`` fills any.
        compile: run the encoder output through ``torch.compile``.
    """

    def __init__(self, encoder: Any, *, identity: ModelIdentity | None = None,
                 device: str = "cpu", precision: str = "fp32", time_location: str = "encode",
                 layers: Sequence[int | str] = ("last",),
                 max_invalid: float | None = DEFAULT_MAX_INVALID, compile: bool = False) -> None:
        if time_location not in ("encode", "zero"):
            raise GeofmValueError(f"Embedder time_location must be 'encode' or 'zero', got "
                                  f"{time_location!r}; resolve 'auto' with "
                                  "resolve_time_location")
        if max_invalid is not None and not 0.0 <= max_invalid <= 1.0:
            raise GeofmValueError(f"max_invalid must be in [0, 1], got {max_invalid}")
        self.encoder = encoder
        self.encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.identity: ModelIdentity = (identity if identity is not None
                                        else encoder.identity).replace(
            time_location=time_location)
        self.device = device
        self.precision = resolve_precision(precision, device)
        self.time_location = time_location
        self.layers = tuple(layers)
        self.max_invalid = max_invalid
        self._forward: Any = encoder
        if compile:
            import torch

            self._forward = torch.compile(encoder)

    @classmethod
    def load(cls, *, checkpoint: str | os.PathLike[str] | None = None, model: str | None = None,
             encoder: Any = None, device: str = "auto", seed: int = 0,
             precision: str | None = None, time_location: str = "auto",
             layers: Sequence[int | str] = ("last",),
             max_invalid: float | None = DEFAULT_MAX_INVALID, compile: bool = False,
             stage: str = "embed") -> Embedder:
        """Load the encoder of a run (:func:`load_run_encoder`) and wrap it.

        ``device="auto"`` picks CUDA when available; ``precision=None`` is bf16 on CUDA,
        fp32 on CPU; ``time_location="auto"`` encodes for a checkpoint and zeroes for
        random weights. Other arguments as in the class and :func:`load_run_encoder`.
        """
        from geofm.model.loading import resolve_device

        dev = str(resolve_device(device))
        prec = resolve_precision(precision, dev)
        enc, identity = load_run_encoder(checkpoint=checkpoint, model=model, device=dev,
                                         seed=seed, encoder=encoder, stage=stage)
        rule = resolve_time_location(time_location, random_init=bool(identity.random_init))
        return cls(enc, identity=identity, device=dev, precision=prec, time_location=rule,
                   layers=layers, max_invalid=max_invalid, compile=compile)

    # -- inputs -----------------------------------------------------------------------

    def read_chip(self, path: str | os.PathLike[str], *, sensor: str,
                  bands: Sequence[str]) -> tuple[np.ndarray, np.ndarray, float]:
        """Read a chip and apply the nodata rule.

        Returns:
            ``(pixels, valid, invalid_fraction)``: DN float32 [C, H, W] (invalid pixels
            filled with the band mean), bool [H, W] (False where a band was nodata).

        Raises:
            RasterError: unreadable chip, or more than ``max_invalid`` invalid pixels.
        """
        from geofm.chipfile import read_chip_array

        pixels, valid = read_chip_array(path, list(bands))
        filled, invalid = fill_invalid(pixels, valid, sensor=sensor, bands=bands,
                                       max_invalid=self.max_invalid, path=path)
        return filled, valid, invalid

    def datacube(self, pixels_dn: np.ndarray | torch.Tensor, *, sensor: str,
                 bands: Sequence[str], dates: Any, lats: Any, lons: Any
                 ) -> dict[str, torch.Tensor]:
        """The encoder input of DN pixels [B, C, H, W] (:func:`geofm.model.make_datacube`)."""
        from geofm.model.inputs import make_datacube

        return make_datacube(pixels_dn, sensor=sensor, bands=bands, dates=dates, lats=lats,
                             lons=lons, device=self.device,
                             time_location=self.time_location == "encode")

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of :attr:`precision` (a no-op for fp32)."""
        return autocast(self.precision, self.device)

    # -- outputs ----------------------------------------------------------------------

    def _encode(self, cube: dict[str, Any]) -> Any:
        """float32 tokens [B, 1+L, D * n_layers] of ``cube`` (caller holds the contexts)."""
        if self.layers == ("last",):
            return self._forward(cube).float()
        return encode_layers(self.encoder, cube, self.layers)

    def tokens(self, pixels_dn: np.ndarray | torch.Tensor, *, sensor: str,
               bands: Sequence[str], dates: Any, lats: Any, lons: Any) -> torch.Tensor:
        """Tokens of :attr:`layers` for DN pixels.

        Args:
            pixels_dn: DN [B, C, H, W], every value finite (see :meth:`read_chip`).
            sensor: sensor name of the chips (``geofm.sensors``).
            bands: C band names, in the order of the pixels' band axis.
            dates: B acquisition datetimes (UTC).
            lats: B latitudes, degrees (chip centroid, WGS84).
            lons: B longitudes, degrees.

        Returns:
            float32 torch tensor [B, 1+L, D * n_layers] on :attr:`device` (CLS first,
            then the patch tokens in row-major order); a normal tensor (not an inference
            one), so heads may use it under autograd.
        """
        import torch

        def run(sl: slice) -> Any:
            cube = self.datacube(pixels_dn[sl], sensor=sensor, bands=bands,
                                 dates=_take(dates, sl), lats=_take(lats, sl),
                                 lons=_take(lons, sl))
            with torch.inference_mode(), self.autocast():
                return self._encode(cube)

        parts = self._halving(run, len(pixels_dn))
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return out.clone()

    def embed(self, pixels_dn: np.ndarray | torch.Tensor, *, sensor: str,
              bands: Sequence[str], dates: Any, lats: Any, lons: Any,
              patches: bool = False) -> Embeddings:
        """CLS and mean-pooled patch embeddings (and the patch tokens) of DN pixels.

        Args:
            pixels_dn: DN [B, C, H, W], every value finite (numpy or torch; pinned CPU
                tensors move without blocking).
            sensor: sensor name of the chips (``geofm.sensors``).
            bands: C band names, in the order of the pixels' band axis.
            dates: B acquisition datetimes (UTC).
            lats: B latitudes, degrees (chip centroid, WGS84).
            lons: B longitudes, degrees.
            patches: also return the patch tokens, float16.

        Returns:
            :class:`Embeddings` (numpy, CPU). Non-finite values are returned as they are:
            the caller decides (the embed stage reports such chips as failures).
        """
        import torch

        def run(sl: slice) -> Embeddings:
            cube = self.datacube(_move(pixels_dn[sl], self.device), sensor=sensor,
                                 bands=bands, dates=_take(dates, sl), lats=_take(lats, sl),
                                 lons=_take(lons, sl))
            with torch.inference_mode(), self.autocast():
                tokens = self._encode(cube)
                cls = tokens[:, 0]
                mean = tokens[:, 1:].mean(dim=1)
                grid = tokens[:, 1:].half() if patches else None
            return Embeddings(cls=cls.cpu().numpy(), mean=mean.cpu().numpy(),
                              patches=None if grid is None else grid.cpu().numpy())

        parts = self._halving(run, len(pixels_dn))
        if len(parts) == 1:
            return parts[0]
        return Embeddings(
            cls=np.concatenate([p.cls for p in parts]),
            mean=np.concatenate([p.mean for p in parts]),
            patches=(np.concatenate([p.patches for p in parts if p.patches is not None])
                     if patches else None))

    def _halving(self, run: Callable[[slice], _T], n: int) -> list[_T]:
        """``run`` over ``slice(0, n)``; on CUDA out-of-memory, over its halves, recursively.

        Raises:
            torch.cuda.OutOfMemoryError: even one chip does not fit.
        """
        import torch

        def go(start: int, stop: int) -> list[_T]:
            try:
                return [run(slice(start, stop))]
            except Exception as exc:
                if not _is_oom(exc) or stop - start <= 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                mid = (start + stop) // 2
                log.warning("CUDA out of memory with a batch of %d chips; retrying as %d + %d",
                            stop - start, mid - start, stop - mid)
            return go(start, mid) + go(mid, stop)

        return go(0, n)


def _take(values: Any, sl: slice) -> Any:
    """``values[sl]`` of a list, array, tensor or pandas object (positional)."""
    if hasattr(values, "iloc"):
        return values.iloc[sl]
    return values[sl]


def _move(pixels: Any, device: str) -> Any:
    """A torch tensor to ``device`` without blocking (numpy passes through)."""
    if hasattr(pixels, "to"):
        return pixels.to(device, non_blocking=True)
    return pixels
