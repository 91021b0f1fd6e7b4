"""The streamed passes equal a direct float64 computation, block by block and file by file."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geofm.analyze import series
from geofm.analyze.passes import pass_one, pass_one_files, pass_two
from geofm.analyze.reduce import fit_pca
from geofm.analyze.series import index_embeddings, read_vectors
from geofm.layout import RunRoot

DIM = 6
DAY = pd.Timestamp("2021-03-01", tz="UTC")


class _Record:
    def __init__(self):
        self.failures = []

    def fail(self, unit, reason, **fields):
        self.failures.append((unit, reason))


def _write(path, chips, day, vectors, *, row_group_size=None):
    table = pa.table({
        "chip_id": chips,
        "date": pa.array([day.value] * len(chips), type=pa.timestamp("ns", tz="UTC")),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(np.asarray(vectors, np.float32).ravel()), DIM)})
    pq.write_table(table, path, row_group_size=row_group_size)


@pytest.fixture
def files(tmp_path):
    """Four files: 7 chips, a bad row, and two scenes on one day (same-day rows, 1/2 each)."""
    rng = np.random.default_rng(3)
    chips = [f"c{i}" for i in range(7)]
    base = rng.normal(size=(7, DIM)) + 4.0  # a large mean: centring must happen first
    days = [DAY, DAY + pd.Timedelta(days=20), DAY + pd.Timedelta(days=20),
            DAY + pd.Timedelta(days=40)]
    paths, ids, data = [], [], []
    for f, day in enumerate(days):
        vec = base + 0.3 * rng.normal(size=base.shape)
        keep = np.arange(7) if f != 2 else np.arange(0, 7, 2)  # scene 2: same day as 1
        vec = vec[keep]
        if f == 3:
            vec[1, 2] = np.nan  # chip c1 on the last day: a bad row
        path = tmp_path / f"s{f}.parquet"
        _write(path, [chips[k] for k in keep], day, vec, row_group_size=3)
        paths.append(path)
        ids.append(f"s{f}")
        data.append((keep, vec))
    return paths, ids, data


def test_pass_two_equals_a_direct_float64_computation(files, tmp_path, monkeypatch):
    paths, ids, data = files
    monkeypatch.setattr(series, "BLOCK_ROWS", 2)  # row groups of 3, blocks of 2
    index = index_embeddings(paths, ids)
    assert index.n_obs == 7 * 3  # day 2 merges scenes 1 and 2 (the bad row: no value)
    record = _Record()
    in_base = np.ones(index.n_rows, dtype=bool)
    row_ok, means, sample = pass_one(index, "embedding", "none", in_base, record,
                                     RunRoot.of(tmp_path), fit=True, max_samples=1000, seed=0,
                                     progress=False)
    assert [u for u, _ in record.failures] == ["s3"] and (~row_ok).sum() == 1
    pca = fit_pca(sample, n_components=3)
    pcs, cos, ok = pass_two(index, "embedding", "none", row_ok, means, pca, 3, progress=False)

    # direct: per observation, weighted mean projection and cosine of the weighted sum
    rows = [(c, f, v) for f, (keep, vec) in enumerate(data) for c, v in zip(keep, vec, strict=True)]
    mean64, comp64 = pca.mean.astype(np.float64), pca.components.astype(np.float64)
    sums = np.zeros((7, DIM))
    for c, f, v in rows:
        if np.isfinite(v).all():
            sums[c] += v * (0.5 if f in (1, 2) and c % 2 == 0 else 1.0)
    unit = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    np.testing.assert_allclose(means, unit, rtol=1e-5, atol=1e-6)
    day_of = {0: 0, 1: 1, 2: 1, 3: 2}
    for obs in range(index.n_obs):
        c = int(index.obs_chip[obs])
        day = sorted({day_of[f] for cc, f, _ in rows if cc == c})[
            int(obs - np.flatnonzero(index.obs_chip == c)[0])]
        mine = [v.astype(np.float64) for cc, f, v in rows if cc == c and day_of[f] == day]
        good = [v for v in mine if np.isfinite(v).all()]
        if not good:
            assert not ok[obs] and np.isnan(pcs[obs]).all() and np.isnan(cos[obs])
            continue
        vec = np.mean(good, axis=0)
        np.testing.assert_allclose(pcs[obs], (vec - mean64) @ comp64.T, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(cos[obs], vec @ unit[c] / np.linalg.norm(vec), rtol=1e-6)
        assert ok[obs]
    assert pcs.dtype == np.float32 and cos.dtype == np.float32


def test_read_vectors_flags_null_short_and_non_finite_rows(tmp_path):
    path = tmp_path / "e.parquet"
    rows = [[1.0] * DIM, None, [np.inf] + [0.0] * (DIM - 1), [1e38] * DIM, [2.0] * (DIM - 1)]
    pq.write_table(pa.table({"embedding": pa.array(rows, type=pa.list_(pa.float32()))}), path)
    blocks = read_vectors(path, "embedding", DIM, block_rows=2)
    assert [start for start, _, _ in blocks] == [0, 2, 4]
    vectors = np.concatenate([v for _, v, _ in blocks])
    ok = np.concatenate([k for _, _, k in blocks])
    # a row of huge finite values overflows its sum but is kept
    assert ok.tolist() == [True, False, False, True, False]
    assert (vectors[~ok] == 0).all() and (vectors[3] == np.float32(1e38)).all()


def test_pass_one_reads_only_the_baseline_files_and_pass_two_checks_the_rest(files, tmp_path,
                                                                            monkeypatch):
    paths, ids, data = files
    index = index_embeddings(paths, ids)
    read = []
    real = series.iter_file_vectors

    def spy(path, *args, **kwargs):
        read.append(path.stem)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(series, "iter_file_vectors", spy)
    in_base = np.zeros(index.n_rows, dtype=bool)
    in_base[:index.offsets[1]] = True  # the baseline period: file s0 only
    record = _Record()
    rr = RunRoot.of(tmp_path)
    row_ok, means, sample = pass_one(index, "embedding", "none", in_base, record, rr,
                                     fit=True, max_samples=1000, seed=0, progress=False)
    assert read == ["s0"] and record.failures == []  # s3's bad row: not read yet
    # the PCA sample: the baseline period's vectors, all of them (fewer than max_samples)
    np.testing.assert_array_equal(sample, np.asarray(data[0][1], np.float32))
    checked = pass_one_files(index, in_base, fit=True)
    assert checked.tolist() == [True, False, False, False]
    pca = fit_pca(sample, n_components=3)
    read.clear()
    pcs, cos, ok = pass_two(index, "embedding", "none", row_ok, means, pca, 3,
                            progress=False, record=record, rr=rr, checked=checked)
    assert read == ["s0", "s1", "s2", "s3"]
    assert [u for u, _ in record.failures] == ["s3"] and (~ok).sum() == 1
    # equal to pass 2 with the same basis and means after a pass 1 over every file
    every = np.ones(index.n_rows, dtype=bool)
    every_ok, _, _ = pass_one(index, "embedding", "none", every, _Record(), rr, fit=False,
                              max_samples=0, seed=0, progress=False)
    pcs2, cos2, ok2 = pass_two(index, "embedding", "none", every_ok, means, pca, 3,
                               progress=False)
    np.testing.assert_array_equal(ok, ok2)
    np.testing.assert_allclose(pcs[ok], pcs2[ok], rtol=1e-6)
    np.testing.assert_allclose(cos[ok], cos2[ok], rtol=1e-6)


def test_pass_one_samples_every_file_when_the_baseline_has_under_two_rows(files, tmp_path):
    paths, ids, _ = files
    index = index_embeddings(paths, ids)
    none = np.zeros(index.n_rows, dtype=bool)
    assert pass_one_files(index, none, fit=True).all()
    assert not pass_one_files(index, none, fit=False).any()
    record = _Record()
    row_ok, _, sample = pass_one(index, "embedding", "none", none, record,
                                 RunRoot.of(tmp_path), fit=True, max_samples=1000, seed=0,
                                 progress=False)
    assert sample.shape == (int(row_ok.sum()), DIM) and [u for u, _ in record.failures] == ["s3"]
