"""``time_location``: Clay's 8 metadata channels encoded or zeroed, and what ``auto`` picks."""

import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from geofm.embed import embed
from geofm.exceptions import GeofmValueError, GeofmWarning
from geofm.layout import RunRoot
from geofm.model.embedder import resolve_time_location


def _first_vectors(root: Path) -> dict[str, np.ndarray]:
    rr = RunRoot(root)
    out = {}
    for scene_id in rr.scene_ids(rr.embeddings_dir):
        table = pq.read_table(rr.embeddings_path(scene_id))
        out[scene_id] = np.asarray(table.column("embedding")[0].as_py())
    return out


def test_auto_encodes_with_a_checkpoint_and_zeroes_random_weights():
    assert resolve_time_location("auto", random_init=False) == "encode"
    assert resolve_time_location("auto", random_init=True) == "zero"
    assert resolve_time_location("encode", random_init=True) == "encode"
    with pytest.raises(GeofmValueError, match="unknown time_location 'date'"):
        resolve_time_location("date", random_init=True)


def test_zeroed_metadata_makes_the_vector_depend_on_pixels_only(make_root, tmp_path, ckpt):
    # the same pixels on three dates: identical vectors only when time/location are zeroed
    roots = {}
    for mode in ("zero", "encode"):
        root = make_root(tmp_path / mode, n_scenes=3, n_chips=1, seed=0)
        # give every scene chip 0 the pixels of scene 0
        rr = RunRoot(root)
        scenes = rr.scene_ids(rr.meta_dir)
        first = rr.chip_path(scenes[0], "33UUP_64_0000_0000")
        for scene_id in scenes[1:]:
            target = rr.chip_path(scene_id, "33UUP_64_0000_0000")
            import h5py
            with h5py.File(first) as src, h5py.File(target, "r+") as dst:
                for band in ("blue", "green", "red", "nir"):
                    dst[band][...] = src[band][...]
        record = embed(root, checkpoint=ckpt, time_location=mode, progress=False)
        assert record.extra["model"]["time_location"] == mode
        roots[mode] = _first_vectors(root)
    zero = list(roots["zero"].values())
    encoded = list(roots["encode"].values())
    np.testing.assert_allclose(zero[0], zero[1], atol=1e-5)
    np.testing.assert_allclose(zero[0], zero[2], atol=1e-5)
    assert np.abs(encoded[0] - encoded[1]).max() > 1e-3


def test_random_weights_default_to_zero_and_identity_guards_resume(tiny_root):
    with warnings.catch_warnings():
        # only the random-weights warning of the tiny encoder is expected here
        warnings.filterwarnings("ignore", message="RANDOM WEIGHTS", category=GeofmWarning)
        record = embed(tiny_root, model="tiny", progress=False)
        assert record.extra["model"]["time_location"] == "zero"
        # outputs made with zeroed metadata are not silently reused for encoded metadata
        with pytest.raises(Exception, match="--overwrite"):
            embed(tiny_root, model="tiny", time_location="encode", progress=False)
