import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geofm.analyze import analyze, main
from geofm.analyze.reduce import PCAModel
from geofm.exceptions import GeofmFileExistsError, GeofmFileNotFoundError, GeofmValueError
from geofm.layout import RunRoot

DIM = 16
N_DATES = 30
STEP_AT = 24  # date index of the planted change of chip 0


def _chip_id(i):
    return f"33UUP_64_0000_{i:04d}"


def make_run_root(root, *, seed=0, n_chips=6):
    """A hand-made run root following the contract: meta GeoParquet + embeddings Parquet.

    Chip 0 changes at date STEP_AT (a big jump along one axis); chip 5 has only 3
    baseline dates (insufficient data); chip 1 is acquired twice on date 20 (duplicate
    items, averaged); chip 2 has a hazy first image.
    """
    import geopandas as gpd
    from PIL import Image
    from shapely.geometry import box

    rr = RunRoot.of(root)
    rng = np.random.default_rng(seed)
    dates = pd.Timestamp("2021-01-03", tz="UTC") + pd.to_timedelta(np.arange(N_DATES) * 20,
                                                                    unit="D")
    base = rng.normal(size=(n_chips, DIM)) * 0.3 + 3.0
    season_dir = rng.normal(size=DIM) * 0.3
    step_dir = np.zeros(DIM)
    step_dir[0] = 6.0
    scenes = [(f"S2A_33UUP_{d:%Y%m%d}_0_L2A", d) for d in dates]
    scenes.append((f"S2B_33UUP_{dates[20]:%Y%m%d}_0_L2A", dates[20]))
    for s_i, (scene, date) in enumerate(scenes):
        t = s_i if s_i < N_DATES else 20
        chips = [c for c in range(n_chips) if not (c == 5 and 3 <= t < 19)]
        if s_i >= N_DATES:
            chips = [1]
        phase = 2 * np.pi * date.day_of_year / 365.25
        rows, meta = [], []
        for c in chips:
            v = base[c] + np.sin(phase) * season_dir + 0.02 * rng.normal(size=DIM)
            if c == 0 and t >= STEP_AT:
                v = v + step_dir
            if c == 2 and t == 0:
                v = v + 4.0 * rng.normal(size=DIM)
            cid = _chip_id(c)
            rows.append((cid, v.astype(np.float32)))
            thumb = rr.thumbnail_path(scene, cid)
            thumb.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (10 * t % 255, 80, 120)).save(thumb)
            meta.append(dict(chip_id=cid, scene_id=scene, tile="33UUP", date=date, row=0, col=c,
                             valid=True, thumbnail_path=str(thumb.relative_to(rr.path)),
                             geometry=box(15.0 + 0.01 * c, 50.0, 15.01 + 0.01 * c, 50.01)))
        emb = np.stack([v for _, v in rows])
        table = pa.table({
            "chip_id": [cid for cid, _ in rows], "scene_id": [scene] * len(rows),
            "date": pa.array([date.value] * len(rows), type=pa.timestamp("ns", tz="UTC")),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM),
            "embedding_mean": pa.FixedSizeListArray.from_arrays(
                pa.array((emb * 0.5 + 1.0).ravel()), DIM)})
        rr.embeddings_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, rr.embeddings_path(scene))
        rr.meta_dir.mkdir(parents=True, exist_ok=True)
        gpd.GeoDataFrame(meta, geometry="geometry", crs="EPSG:4326").to_parquet(
            rr.meta_path(scene))
    return rr


@pytest.fixture
def run_root(tmp_path):
    return make_run_root(tmp_path / "root")


def test_stage_end_to_end(run_root):
    import geopandas as gpd

    record = analyze(run_root.path, signal="pc1", n_components=3, plot_chips=[_chip_id(3)],
                     progress=False)
    out = run_root.analysis_dir
    changes = gpd.read_parquet(out / "changes.parquet")
    assert changes.crs.to_epsg() == 4326
    by_id = changes.set_index("chip_id")
    assert by_id.loc[_chip_id(0), "status"] == "change"
    expected = pd.Timestamp("2021-01-03", tz="UTC") + pd.Timedelta(days=20 * STEP_AT)
    assert by_id.loc[_chip_id(0), "change_date"] == expected
    assert by_id.loc[_chip_id(5), "status"] == "insufficient data"
    assert by_id.loc[_chip_id(5), "n_baseline"] == 3
    for c in (1, 2, 3, 4):
        assert by_id.loc[_chip_id(c), "status"] == "no change"
        assert pd.isna(by_id.loc[_chip_id(c), "change_date"])
    assert by_id.loc[_chip_id(1), "n_observations"] == N_DATES  # duplicate day averaged
    assert record.counts["chips"] == 6 and record.counts["changed"] == 1
    assert record.counts["insufficient"] == 1 and record.counts["plots"] == 2

    ts = pq.read_table(out / "timeseries.parquet").to_pandas()
    assert {"chip_id", "scene_id", "date", "pc1", "pc3", "cosine_to_baseline", "signal",
            "predicted", "residual", "anomaly"} <= set(ts.columns)
    assert len(ts) == 5 * N_DATES + (N_DATES - 16)
    c0 = ts[ts.chip_id == _chip_id(0)].sort_values("date")
    assert c0["anomaly"].iloc[STEP_AT:].all() and not c0["anomaly"].iloc[:STEP_AT].any()
    np.testing.assert_allclose(c0["signal"], c0["pc1"])
    # chip 2's hazy first image does not poison its baseline: later dates stay similar
    c2 = ts[ts.chip_id == _chip_id(2)].sort_values("date")
    assert c2["cosine_to_baseline"].iloc[0] < 0.9 < c2["cosine_to_baseline"].iloc[1:].min()
    assert c0["cosine_to_baseline"].iloc[STEP_AT:].max() < c0["cosine_to_baseline"].iloc[
        :STEP_AT].min()

    geo = json.loads((out / "change_map.geojson").read_text())
    props = {f["properties"]["chip_id"]: f["properties"] for f in geo["features"]}
    assert props[_chip_id(0)]["change_date"] == str(expected.date())
    assert props[_chip_id(0)]["intensity"] > 3 and props[_chip_id(5)]["intensity"] is None
    assert geo["features"][0]["geometry"]["type"] == "Polygon"
    assert sorted(p.name for p in run_root.plots_dir.iterdir()) == [
        f"{_chip_id(0)}.png", f"{_chip_id(3)}.png"]
    pca = PCAModel.load(out / "pca.npz")
    assert pca.components.shape == (3, DIM)
    manifest = json.loads(run_root.manifest_path.read_text())
    assert manifest["stages"]["analyze"]["counts"]["changed"] == 1


def test_cosine_signal_mean_embedding_and_pca_reuse(run_root, tmp_path):
    analyze(run_root.path, n_components=2, max_plots=0, progress=False)
    first = PCAModel.load(run_root.analysis_dir / "pca.npz")
    saved = first.save(tmp_path / "keep.npz")
    record = analyze(run_root.path, signal="cosine", embedding="mean", n_components=2,
                     pca=saved, max_plots=0, overwrite=True, progress=False)
    assert record.counts["changed"] == 1 and record.counts["plots"] == 0
    again = PCAModel.load(run_root.analysis_dir / "pca.npz")
    np.testing.assert_array_equal(again.components, first.components)


def test_rerun_skips_or_refuses(run_root):
    analyze(run_root.path, n_components=2, max_plots=0, progress=False)
    again = analyze(run_root.path, n_components=2, max_plots=0, progress=False)
    assert again.counts["skipped"] == 1 and again.counts["changed"] == 1
    with pytest.raises(GeofmFileExistsError, match="pass overwrite=True"):
        analyze(run_root.path, n_components=2, threshold=5.0, max_plots=0, progress=False)


def test_bad_options_and_missing_inputs(run_root, tmp_path):
    with pytest.raises(GeofmValueError, match="signal='pc9' is not valid"):
        analyze(run_root.path, signal="pc9", n_components=8, progress=False)
    with pytest.raises(GeofmValueError, match="embedding='patch' is not valid"):
        analyze(run_root.path, embedding="patch", progress=False)
    with pytest.raises(GeofmValueError, match="must be after baseline_start"):
        analyze(run_root.path, baseline_start="2022-01-01", monitor_start="2021-06-01",
                progress=False)
    with pytest.raises(GeofmValueError, match="not chips of"):
        analyze(run_root.path, plot_chips=["nope"], progress=False)
    with pytest.raises(GeofmFileNotFoundError, match="run `geofm embed` first"):
        analyze(tmp_path / "empty", progress=False)


def test_cli_main(run_root):
    rc = main(["--root", str(run_root.path), "--signal", "pc1", "--n-components", "2",
               "--baseline-start", "2021-01-01", "--monitor-start", "2022-01-01",
               "--max-plots", "0", "--no-progress"])
    assert rc == 0
    changes = pq.read_table(run_root.analysis_dir / "changes.parquet").to_pandas()
    assert (changes.status == "change").sum() == 1


@pytest.mark.slow
def test_stage_on_embedded_fixture(embedded_root, writable_copy):
    root = writable_copy(embedded_root)
    record = analyze(root, signal="pc1", n_components=4, max_plots=2, progress=False)
    rr = RunRoot.of(root)
    n_rows = sum(pq.read_metadata(rr.embeddings_path(s)).num_rows
                 for s in rr.scene_ids(rr.embeddings_dir))
    ts = pq.read_table(rr.analysis_dir / "timeseries.parquet").to_pandas()
    assert len(ts) == n_rows and ts["pc1"].notna().all()
    changes = pq.read_table(rr.analysis_dir / "changes.parquet").to_pandas()
    assert set(changes["status"]) <= {"change", "no change", "insufficient data"}
    assert len(changes) == record.counts["chips"] == ts["chip_id"].nunique()
    assert (record.counts["changed"] + record.counts["no_change"]
            + record.counts["insufficient"]) == record.counts["chips"]
    assert (changes["n_observations"] >= changes["n_baseline"]).all()
    geo = json.loads((rr.analysis_dir / "change_map.geojson").read_text())
    assert len(geo["features"]) == len(changes)


def test_bad_vector_is_a_recorded_failure_not_a_crash(run_root):
    scene = run_root.scene_ids(run_root.embeddings_dir)[3]
    path = run_root.embeddings_path(scene)
    table = pq.read_table(path)
    emb = np.stack(table.column("embedding").to_pylist()).astype(np.float32)
    emb[2, 5] = np.nan
    table = table.set_column(table.schema.get_field_index("embedding"), "embedding",
                             pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM))
    pq.write_table(table, path)
    record = analyze(run_root.path, n_components=2, max_plots=0, progress=False)
    assert len(record.failures) == 1 and record.failures[0].unit == scene
    assert "not finite" in record.failures[0].reason
    assert main(["--root", str(run_root.path), "--n-components", "2", "--max-plots", "0",
                 "--overwrite", "--no-progress"]) == 1
    ts = pq.read_table(run_root.analysis_dir / "timeseries.parquet").to_pandas()
    assert len(ts) == 5 * N_DATES + (N_DATES - 16) - 1  # the bad row is left out


def test_defaults_monitor_pc1_with_three_in_a_row():
    import argparse
    import inspect

    from geofm.analyze.stage import add_arguments

    params = inspect.signature(analyze).parameters
    defaults = {k: params[k].default for k in ("signal", "threshold", "consecutive")}
    assert defaults == {"signal": "pc1", "threshold": 3.0, "consecutive": 3}
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--root", "x"])
    assert (args.signal, args.threshold, args.consecutive) == ("pc1", 3.0, 3)
