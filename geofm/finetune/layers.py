"""Which encoder layers feed a head: parse the ``layers`` option and tap the blocks.

Clay's own segmentor (``claymodel/finetune/segment``) feeds its decoder with feature
maps from several intermediate transformer blocks, not only the last. Here a layer
selection is a tuple of items, each ``"last"`` (the encoder output: every block, then
the final LayerNorm), a 0-based block index ``i`` (the residual stream after block
``i``, before the final LayerNorm, as Clay's segmentor takes it) or ``"embed"`` (the
input of block 0: patch embedding plus position encoding, no attention yet). The tokens of the
selected layers are concatenated along the feature axis: [B, 1+L, D * n_layers]
(the CLS position is kept so the heads' input shape stays ``[B, 1+L, width]``; the
segmentation head drops it).

The tokens of a selection are computed by :func:`geofm.model.embedder.encode_layers`
(through :meth:`geofm.model.embedder.Embedder.tokens`), which taps the blocks with forward
pre-hooks, so the encoder's forward pass runs unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from geofm.exceptions import GeofmValueError

#: Default selection, chosen on validation mean IoU (model selection on the validation
#: split) in the sweep of ``benchmarks/results/finetune.md``: early or mixed layers of the
#: random ``tiny`` encoder scored within seed noise of ``last`` (mean over two seeds
#: slightly lower), so the encoder output stays the default.
DEFAULT_LAYERS = "last"

Layer = int | str


def parse_layers(value: str | Iterable[Layer] | None, *, depth: int) -> tuple[Layer, ...]:
    """Normalise a layer selection.

    Args:
        value: ``"last"``, a comma list such as ``"0,2,5"`` or ``"embed,1,last"``, a
            sequence of ints / ``"last"`` / ``"embed"``, or ``None`` (:data:`DEFAULT_LAYERS`).
        depth: number of transformer blocks of the encoder.

    Returns:
        A tuple of block indices (ints in ``0..depth-1``), ``"embed"`` and/or ``"last"``,
        in the given order (that is the order of the feature concatenation).

    Raises:
        GeofmValueError: an empty selection, an unknown item, an index out of range or a
            repeated layer.
    """
    if value is None:
        value = DEFAULT_LAYERS
    items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
    out: list[Layer] = []
    for item in items:
        text = str(item).strip().lower()
        if text in ("last", "embed"):
            out.append(text)
            continue
        try:
            index = int(text)
        except ValueError:
            raise GeofmValueError(
                f"layers item {item!r} is not 'last', 'embed' or a block index; use e.g. "
                f"--layers last or --layers 0,2,5 (blocks 0..{depth - 1})") from None
        if not 0 <= index < depth:
            raise GeofmValueError(f"layers item {index} is out of range: the encoder has "
                                  f"{depth} blocks (indices 0..{depth - 1})")
        out.append(index)
    if not out:
        raise GeofmValueError("layers is empty; use 'last' or a comma list of block indices")
    if len(set(out)) != len(out):
        raise GeofmValueError(f"layers {value!r} repeats a layer; name each layer once")
    return tuple(out)


def layers_to_config(layers: Sequence[Layer]) -> list[Layer]:
    """JSON/checkpoint form of a parsed selection (a plain list)."""
    return list(layers)
