"""Model identity: which encoder, run how, made a set of vectors; ONE rule for "same vectors".

Every stage that reads or compares vectors (embed's resume check, analyze, index, search,
finetune, predict) builds or reads a :class:`ModelIdentity` and asks
:meth:`ModelIdentity.compatible` / :meth:`ModelIdentity.differences`; none compares
identity dicts by hand.

The rule (:data:`COMPARED` are the fields it looks at):

- ``sha256`` of the checkpoint file, unless both sides have random weights;
- ``preset`` and the sizes ``dim depth heads dim_head mlp_ratio patch_size``;
- ``random_init``;
- ``seed``, only when both sides have random weights (it is what makes them);
- ``time_location`` (``encode`` / ``zero``: the 8 metadata channels fed to the encoder);
- ``bands``, the bands that enter the encoder, in order.

``checkpoint`` (the file's path) and ``provenance`` (how it was trained) are kept for
people but never compared: the same file
moved elsewhere is the same model. A field that a record lacks reads as ``None`` and
``None`` matches only ``None``: a file written before a field was recorded counts as
another model for that field (re-run with ``--overwrite``), never as a silent match.

Stored form (:meth:`ModelIdentity.to_dict`): a JSON object with every field, ``bands`` a
list of names. :meth:`ModelIdentity.from_dict` also reads the older dicts: unknown keys
(``failed_chips`` of the flat embeddings metadata, ...) are ignored, missing fields are
``None``, ``bands`` may be a comma-separated string.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from geofm.exceptions import GeofmTypeError, GeofmValueError

if TYPE_CHECKING:
    from geofm.model.presets import EncoderConfig

#: the encoder sizes (names of :class:`geofm.model.presets.EncoderConfig`).
SIZE_FIELDS = ("dim", "depth", "heads", "dim_head", "mlp_ratio", "patch_size")
#: fields the rule compares, in the order differences are reported.
COMPARED = ("sha256", "preset", *SIZE_FIELDS, "random_init", "seed", "time_location",
            "bands")


@dataclass(frozen=True)
class ModelIdentity:
    """What made a set of vectors: the encoder's weights and sizes, and how it was fed.

    Attributes:
        preset: preset name (``tiny``, ``base``, ...; ``custom`` for explicit sizes).
        dim: token width D.
        depth: transformer blocks.
        heads: attention heads per block.
        dim_head: width of one attention head.
        mlp_ratio: feed-forward width as a multiple of ``dim``.
        patch_size: patch side, pixels.
        random_init: True for seeded random weights (testing only).
        sha256: hex sha256 of the checkpoint file (``None`` for random weights).
        seed: seed of the random weights (``None`` with a checkpoint).
        time_location: ``encode`` or ``zero`` (the resolved ``--time-location``);
            ``None`` where the encoder has not been run yet (a freshly loaded encoder).
        bands: band names that enter the encoder, in order; ``None`` when not yet known.
        checkpoint: path of the checkpoint file as given (informational, not compared).
        provenance: how the checkpoint was trained, when it says so (``geofm pretrain``
            writes it: start weights, epochs, mask ratio, losses; informational, not
            compared).
    """

    preset: str | None = None
    dim: int | None = None
    depth: int | None = None
    heads: int | None = None
    dim_head: int | None = None
    mlp_ratio: float | None = None
    patch_size: int | None = None
    random_init: bool | None = None
    sha256: str | None = None
    seed: int | None = None
    time_location: str | None = None
    bands: tuple[str, ...] | None = None
    checkpoint: str | None = None
    provenance: str | None = None

    @classmethod
    def from_config(cls, config: EncoderConfig, *, random_init: bool,
                    checkpoint: str | None = None, sha256: str | None = None,
                    seed: int | None = None, provenance: str | None = None) -> ModelIdentity:
        """The identity of an encoder built from ``config`` (no time_location/bands yet)."""
        return cls(preset=config.name, dim=config.dim, depth=config.depth, heads=config.heads,
                   dim_head=config.dim_head, mlp_ratio=float(config.mlp_ratio),
                   patch_size=config.patch_size, random_init=random_init, sha256=sha256,
                   seed=seed if random_init else None, checkpoint=checkpoint,
                   provenance=provenance)

    def replace(self, **changes: Any) -> ModelIdentity:
        """A copy with some fields changed (``bands`` may be any sequence of names)."""
        if "bands" in changes:
            changes["bands"] = _bands(changes["bands"])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field (``bands`` as a list)."""
        out = dataclasses.asdict(self)
        out["bands"] = None if self.bands is None else list(self.bands)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelIdentity:
        """Read a stored identity, including the older layouts.

        Unknown keys are ignored; missing fields are ``None``; ``bands`` may be a list or
        a comma-separated string.

        Raises:
            GeofmValueError: ``data`` is not a mapping or a field has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise GeofmValueError(f"a model identity must be a JSON object, got "
                                  f"{type(data).__name__} {data!r}")
        try:
            return cls(
                preset=_opt(data.get("preset"), str), dim=_opt(data.get("dim"), int),
                depth=_opt(data.get("depth"), int), heads=_opt(data.get("heads"), int),
                dim_head=_opt(data.get("dim_head"), int),
                mlp_ratio=_opt(data.get("mlp_ratio"), float),
                patch_size=_opt(data.get("patch_size"), int),
                random_init=_opt(data.get("random_init"), bool),
                sha256=_opt(data.get("sha256"), str), seed=_opt(data.get("seed"), int),
                time_location=_opt(data.get("time_location"), str),
                bands=_bands(data.get("bands")), checkpoint=_opt(data.get("checkpoint"), str),
                provenance=_opt(data.get("provenance"), str))
        except (TypeError, ValueError) as err:
            raise GeofmValueError(f"malformed model identity {dict(data)!r} ({err}); "
                                  "re-create the file with the geofm stage that wrote it"
                                  ) from err

    def differences(self, other: ModelIdentity) -> dict[str, tuple[Any, Any]]:
        """Fields on which the rule says the two differ: ``{field: (self's, other's)}``.

        Ordered as :data:`COMPARED`; empty when :meth:`compatible`.
        """
        both_random = bool(self.random_init) and bool(other.random_init)
        out: dict[str, tuple[Any, Any]] = {}
        for name in COMPARED:
            if name == "sha256" and both_random:
                continue
            if name == "seed" and not both_random:
                continue
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                out[name] = (mine, theirs)
        return out

    def compatible(self, other: ModelIdentity) -> bool:
        """True when vectors of the two are the same kind of vectors (the one rule)."""
        return not self.differences(other)

    def describe(self) -> str:
        """Short label for messages, e.g. ``tiny (random weights, seed 0)``."""
        if self.random_init:
            weights = f"random weights, seed {self.seed}"
        else:
            weights = f"sha256 {str(self.sha256)[:12]}"
        return f"{self.preset} ({weights})"


def format_differences(diffs: Mapping[str, tuple[Any, Any]]) -> str:
    """``"seed 0 vs 1, preset 'tiny' vs 'base'"`` for :meth:`ModelIdentity.differences`."""
    return ", ".join(f"{name} {_show(a)} vs {_show(b)}" for name, (a, b) in diffs.items())


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "()"
    if isinstance(value, str) and len(value) == 64:  # a sha256: the head is enough
        return repr(value[:12] + "...")
    return repr(value)


def _opt(value: Any, kind: type) -> Any:
    if value is None:
        return None
    if kind is bool and not isinstance(value, bool):
        raise GeofmTypeError(f"expected true/false, got {value!r}", value=value)
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise GeofmValueError(f"expected an integer, got {value!r}", value=value)
    return kind(value)


def _bands(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(b.strip() for b in value.split(",") if b.strip())
    if isinstance(value, Sequence):
        return tuple(str(b) for b in value)
    raise GeofmTypeError(f"bands must be a list or a comma-separated string, got {value!r}",
                         value=value)
