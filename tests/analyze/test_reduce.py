import numpy as np
import pytest

from geofm.analyze.reduce import PCAModel, fit_pca, tsne
from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError, ShapeError


def _data(n=400, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.linspace(3.0, 0.1, dim)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    return (rng.normal(size=(n, dim)) * scales) @ basis.T + 5.0


def test_fit_matches_sklearn_pca():
    from sklearn.decomposition import PCA

    x = _data()
    model = fit_pca(x, n_components=4)
    ref = PCA(n_components=4).fit(x)
    np.testing.assert_allclose(model.explained_variance_ratio, ref.explained_variance_ratio_,
                               rtol=1e-5)
    # same axes up to sign
    dots = np.abs(np.sum(model.components * ref.components_, axis=1))
    np.testing.assert_allclose(dots, 1.0, atol=1e-4)
    np.testing.assert_allclose(np.abs(model.transform(x)), np.abs(ref.transform(x)), atol=1e-3)
    # sign convention: largest loading positive
    big = np.abs(model.components).argmax(axis=1)
    assert (model.components[np.arange(4), big] > 0).all()


def test_axes_stay_fixed_when_new_data_are_projected(tmp_path):
    x = _data(seed=0)
    model = fit_pca(x, n_components=3)
    path = model.save(tmp_path / "pca.npz")
    loaded = PCAModel.load(path)
    np.testing.assert_array_equal(loaded.components, model.components)
    np.testing.assert_array_equal(loaded.mean, model.mean)
    np.testing.assert_array_equal(loaded.explained_variance_ratio,
                                  model.explained_variance_ratio)
    assert loaded.n_samples == 400
    new = _data(n=50, seed=1) + 2.0  # other data, shifted
    np.testing.assert_allclose(loaded.transform(new), (new - model.mean) @ model.components.T,
                               rtol=1e-5, atol=1e-4)
    # a PCA refitted on the new data has other axes: the loaded one did not refit
    refit = fit_pca(new, n_components=3)
    assert not np.allclose(refit.mean, loaded.mean)


def test_pca_errors(tmp_path):
    with pytest.raises(GeofmValueError, match="at least 2 embeddings"):
        fit_pca(np.zeros((1, 4)))
    with pytest.raises(GeofmValueError, match="n_components=9 is out of range"):
        fit_pca(np.zeros((5, 4)), n_components=9)
    with pytest.raises(GeofmFileNotFoundError, match="does not exist"):
        PCAModel.load(tmp_path / "none.npz")
    model = fit_pca(_data(), n_components=2)
    with pytest.raises(ShapeError, match="dimension 'embedding' is 5"):
        model.transform(np.zeros((3, 5)))
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(GeofmValueError, match="not a geofm PCA file"):
        PCAModel.load(tmp_path / "other.npz")


def test_tsne_is_seeded_subsample():
    pts = _data(n=120, dim=6)
    idx1, c1 = tsne(pts, max_samples=60, seed=1, max_iter=250)
    idx2, c2 = tsne(pts, max_samples=60, seed=1, max_iter=250)
    assert idx1.size == 60 and c1.shape == (60, 2)
    np.testing.assert_array_equal(idx1, idx2)
    np.testing.assert_allclose(c1, c2)
