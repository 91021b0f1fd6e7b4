import json

import numpy as np
import pytest

from geofm.analyze.change import SeasonalFit, fit_seasonal
from geofm.analyze.reference import Reference, file_signature, load_means, read_state, save_means
from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError
from geofm.layout import RunRoot


def _reference():
    fit = SeasonalFit(coef=np.arange(2 * 1 * 9, dtype=float).reshape(2, 1, 9),
                      intercept=np.array([[1.0], [2.0]]), scale=np.array([[0.5], [0.25]]),
                      fitted=np.array([True, False]), n_baseline=np.array([8, 2]))
    return Reference(id="ref-x", chip_ids=np.array(["a", "c"], dtype=object), fit=fit,
                     baseline_start_ns=1, monitor_start_ns=2)


def test_reference_round_trip_and_extend(tmp_path):
    ref = _reference()
    ref.save(tmp_path / "r.npz")
    back = Reference.load(tmp_path / "r.npz")
    assert back.id == "ref-x" and back.chip_ids.tolist() == ["a", "c"]
    np.testing.assert_array_equal(back.fit.coef, ref.fit.coef)
    assert (back.baseline_start_ns, back.monitor_start_ns) == (1, 2)
    fit, pos = back.extend(np.array(["a", "b", "c"], dtype=object))
    assert pos.tolist() == [0, -1, 1]
    assert fit.fitted.tolist() == [True, False, False] and fit.n_baseline.tolist() == [8, 0, 2]
    np.testing.assert_array_equal(fit.coef[2], ref.fit.coef[1])
    assert (fit.coef[1] == 0).all() and fit.scale[1, 0] == 1.0
    with pytest.raises(GeofmFileNotFoundError, match="geofm analyze --refit"):
        Reference.load(tmp_path / "missing.npz")


def test_score_uses_the_stored_fit_only():
    rng = np.random.default_rng(0)
    days = np.tile(18628.0 + np.arange(30) * 12.0, (3, 1))
    y = (0.3 * np.sin(2 * np.pi * days / 365.25) + 0.01 * rng.normal(size=days.shape))[..., None]
    valid = np.ones(days.shape, dtype=bool)
    fit, _ = fit_seasonal(days, y, valid, baseline=days < 18628 + 365)
    pred, resid = fit.score(np.array([0, 1]), days[[0, 1], [3, 29]], y[[0, 1], [3, 29]])
    assert pred.shape == (2, 1) and resid.shape == (2,)
    assert np.abs(resid).max() < 3  # baseline-like values are not anomalous
    _, jumped = fit.score(np.array([2]), days[[2], [29]], y[[2], [29]] + 1.0)
    assert jumped[0] > 10


def test_means_and_state(tmp_path):
    save_means(tmp_path / "m.npy", np.ones((2, 3)))
    assert load_means(tmp_path / "m.npy", 2).dtype == np.float32
    with pytest.raises(GeofmValueError, match="has shape"):
        load_means(tmp_path / "m.npy", 5)
    rr = RunRoot.of(tmp_path / "root")
    assert read_state(rr) is None
    rr.analysis_dir.mkdir(parents=True)
    rr.analysis_state_path.write_text(json.dumps({"version": 99}))
    with pytest.raises(GeofmValueError, match="state version 99"):
        read_state(rr)
    (tmp_path / "f").write_bytes(b"abc")
    assert file_signature(tmp_path / "f").startswith("3:")


@pytest.mark.parametrize("whole", [True, False])
def test_file_signature_follows_the_content_not_the_mtime(tmp_path, monkeypatch, whole):
    import os
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from geofm.analyze import reference

    if not whole:  # the footer-and-samples path of large files
        monkeypatch.setattr(reference, "WHOLE_FILE_BYTES", 0)
    values = np.random.default_rng(0).normal(size=4000).astype(np.float32)
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"x": values}), path)
    sig = file_signature(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert file_signature(path) == sig  # new mtime, same bytes
    shutil.copy(path, tmp_path / "copy.parquet")
    assert file_signature(tmp_path / "copy.parquet") == sig
    changed = values.copy()
    changed[1234] += 1.0  # one value: the footer's sizes and statistics may not move
    pq.write_table(pa.table({"x": changed}), path)
    assert path.stat().st_size == (tmp_path / "copy.parquet").stat().st_size
    assert file_signature(path) != sig
    pq.write_table(pa.table({"x": values}), path, compression="zstd")  # same values
    assert file_signature(path) != sig
