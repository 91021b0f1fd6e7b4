"""ModelIdentity: the one rule for "same vectors", its stored form and the older layouts."""

from __future__ import annotations

import json

import pytest

from geofm.exceptions import GeofmValueError
from geofm.model.identity import COMPARED, ModelIdentity, format_differences
from geofm.model.presets import get_preset

SHA = "ab" * 32


def _ckpt(**changes) -> ModelIdentity:
    ident = ModelIdentity.from_config(get_preset("tiny"), random_init=False,
                                      checkpoint="/models/clay.ckpt", sha256=SHA)
    return ident.replace(**{"time_location": "encode",
                            "bands": ("blue", "green", "red", "nir"), **changes})


def _random(seed: int = 0, **changes) -> ModelIdentity:
    ident = ModelIdentity.from_config(get_preset("tiny"), random_init=True, seed=seed)
    return ident.replace(**{"time_location": "zero", "bands": ["red", "nir"], **changes})


def test_from_config_fills_sizes_and_drops_seed_of_a_checkpoint():
    cfg = get_preset("tiny")
    ident = ModelIdentity.from_config(cfg, random_init=False, sha256=SHA, seed=3)
    assert (ident.preset, ident.dim, ident.depth, ident.heads, ident.dim_head,
            ident.mlp_ratio, ident.patch_size) == (cfg.name, cfg.dim, cfg.depth, cfg.heads,
                                                   cfg.dim_head, cfg.mlp_ratio, cfg.patch_size)
    assert ident.seed is None and ident.time_location is None and ident.bands is None
    assert ModelIdentity.from_config(cfg, random_init=True, seed=3).seed == 3


def test_same_file_moved_is_the_same_model():
    a, b = _ckpt(), _ckpt(checkpoint="/elsewhere/renamed.ckpt")
    assert a != b and a.compatible(b) and b.compatible(a) and a.differences(b) == {}


@pytest.mark.parametrize("field, value", [
    ("sha256", "cd" * 32), ("preset", "base"), ("dim", 768), ("depth", 12), ("heads", 12),
    ("dim_head", 64), ("mlp_ratio", 4.0), ("patch_size", 16), ("random_init", True),
    ("time_location", "zero"), ("bands", ("red", "green", "blue", "nir")),
])
def test_every_compared_field_decides(field, value):
    a, b = _ckpt(), _ckpt(**{field: value})
    assert not a.compatible(b)
    assert list(a.differences(b)) == [field]
    assert a.differences(b)[field] == (getattr(a, field), getattr(b, field))


def test_seed_counts_for_random_weights_only():
    assert _random(0).differences(_random(1)) == {"seed": (0, 1)}
    assert _random(0).compatible(_random(0))
    # a checkpoint's vectors do not depend on a seed, even if a record carries one
    assert _ckpt(seed=1).compatible(_ckpt(seed=2))
    # random weights have no file: sha256 is not compared between two random identities
    assert _random(0, sha256="x").compatible(_random(0))


def test_differences_are_ordered_and_formatted_for_messages():
    a, b = _ckpt(), _random(0)
    diffs = a.differences(b)
    assert list(diffs) == [f for f in COMPARED if f in diffs]
    assert list(diffs)[:2] == ["sha256", "random_init"]
    text = format_differences(_random(0).differences(_random(1, bands=("red",))))
    assert text == "seed 0 vs 1, bands red,nir vs red"
    assert "'abababababab...'" in format_differences(diffs)  # a sha256 is shortened


def test_round_trip_through_json():
    for ident in (_ckpt(), _random(7), ModelIdentity()):
        stored = json.loads(json.dumps(ident.to_dict()))
        assert ModelIdentity.from_dict(stored) == ident
    assert _ckpt().to_dict()["bands"] == ["blue", "green", "red", "nir"]
    assert set(_ckpt().to_dict()) >= set(COMPARED) | {"checkpoint"}


def test_older_flat_embeddings_dict_is_read():
    # the embeddings metadata of earlier versions: identity, bands string, run facts mixed
    old = {"checkpoint": None, "sha256": None, "preset": "tiny", "random_init": True,
           "dim": 192, "depth": 6, "heads": 4, "dim_head": 48, "mlp_ratio": 2.0,
           "patch_size": 8, "seed": 0, "time_location": "zero",
           "bands": "blue,green,red,nir", "failed_chips": ["33UUP_64_0000_0001"]}
    ident = ModelIdentity.from_dict(old)
    assert ident.bands == ("blue", "green", "red", "nir") and ident.seed == 0
    fresh = ModelIdentity.from_config(get_preset("tiny"), random_init=True, seed=0).replace(
        time_location="zero", bands=("blue", "green", "red", "nir"))
    assert ident.compatible(fresh)  # failed_chips is a run fact, not identity


def test_missing_fields_are_none_and_match_only_none():
    # written before time_location was recorded: not silently the same as "zero"
    old = ModelIdentity.from_dict({"preset": "tiny", "dim": 192, "random_init": True,
                                   "seed": 0})
    assert old.time_location is None and old.bands is None and old.depth is None
    assert not old.compatible(old.replace(time_location="zero"))
    assert old.compatible(ModelIdentity.from_dict({"preset": "tiny", "dim": 192,
                                                   "random_init": True, "seed": 0,
                                                   "checkpoint": "x"}))


@pytest.mark.parametrize("bad", [["not", "a", "dict"], {"dim": "wide"}, {"random_init": "yes"},
                                 {"bands": 3}, {"dim": 8.5}])
def test_malformed_identity_is_an_error(bad):
    with pytest.raises(GeofmValueError, match="model identity"):
        ModelIdentity.from_dict(bad)


def test_describe():
    assert _random(3).describe() == "tiny (random weights, seed 3)"
    assert _ckpt().describe() == "tiny (sha256 abababababab)"


def test_loaded_encoder_carries_the_identity(reference_dir):
    from geofm.model import load_encoder

    model = load_encoder(reference_dir / "clay_tiny.ckpt")
    assert isinstance(model.identity, ModelIdentity)
    assert model.identity.random_init is False and model.identity.seed is None
    assert model.identity.dim == model.dim and model.identity.preset == model.preset


def test_provenance_is_kept_but_never_compared() -> None:
    from geofm.model.identity import ModelIdentity
    from geofm.model.loading import training_provenance

    a = ModelIdentity(preset="tiny", sha256="a" * 64, random_init=False,
                      provenance="geofm pretrain: epochs=1")
    b = a.replace(provenance=None)
    assert a.compatible(b)
    assert ModelIdentity.from_dict(a.to_dict()).provenance == "geofm pretrain: epochs=1"
    assert training_provenance({"model_size": "tiny", "dim": 192}) is None
    assert training_provenance({"pretrain_seed": 0, "pretrain_epochs": 3, "dim": 1}) == (
        "geofm pretrain: epochs=3, seed=0")
