"""Incremental analysis: updates score only new observations against the stored reference."""

import json
import os
import shutil
import signal
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geofm.analyze import analyze, main
from geofm.analyze.alerts import list_alerts
from geofm.exceptions import GeofmFileExistsError
from geofm.layout import RunRoot

DIM = 12
N_DATES = 30
CUT = 24          # the first analysis sees dates 0..CUT-1, the update adds CUT..N_DATES-1
N_CHIPS = 8
START = pd.Timestamp("2021-01-03", tz="UTC")
# chip -> date index of a planted step. Baseline = 2021 (dates 0..18), monitoring from 19.
STEPS = {0: 19,   # confirmed at 21: before the cut
         1: 22,   # run starts before the cut (22, 23), confirmed by the update (24)
         2: 26}   # after the cut, confirmed at 28
SPARSE = 3        # chip 3 misses dates 20..23: too few monitoring dates before the cut
X0, Y0, SIZE = 399960.0, 5800020.0, 640.0


def _date(t):
    return START + pd.Timedelta(days=20 * t)


def _scene(t, tile="33UUP"):
    return f"S2A_{tile}_{_date(t):%Y%m%d}_0_L2A"


def write_dates(root, dates, *, tiles=("33UUP",), seed=0, spikes=(), missing=()):
    """Write meta + embeddings for the given date indexes (each date seeded on its own).

    A second tile (``33UVP``) re-chips the same ground: its chips have the same
    footprints (and the same planted steps), with other ids. ``spikes``: (chip, date
    index) pairs that get a one-date outlier; ``missing``: chips left out of every date.
    """
    import shapely
    from pyproj import Transformer

    rr = RunRoot.of(root)
    to_wgs = Transformer.from_crs(32633, 4326, always_xy=True)
    base = np.random.default_rng(seed).normal(size=(N_CHIPS, DIM)) * 0.3 + 3.0
    season = np.random.default_rng(seed + 1).normal(size=DIM) * 0.3
    for t in dates:
        rng = np.random.default_rng([seed, t])
        noise = 0.02 * rng.normal(size=(N_CHIPS, DIM))
        phase = 2 * np.pi * _date(t).day_of_year / 365.25
        for tile in tiles:
            rows, meta = [], []
            for c in range(N_CHIPS):
                if (c == SPARSE and 20 <= t < CUT) or c in missing:
                    continue
                v = base[c] + np.sin(phase) * season + noise[c]
                if c in STEPS and t >= STEPS[c]:
                    v = v + 6.0 * np.eye(DIM)[0]
                if (c, t) in spikes:
                    v = v + 6.0 * np.eye(DIM)[0]
                cid = f"{tile}_64_0000_{c:04d}"
                minx, maxy = X0 + c * SIZE, Y0
                poly = shapely.transform(
                    shapely.box(minx, maxy - SIZE, minx + SIZE, maxy),
                    lambda xy: np.column_stack(to_wgs.transform(xy[:, 0], xy[:, 1])))
                rows.append((cid, v.astype(np.float32)))
                meta.append(dict(chip_id=cid, scene_id=_scene(t, tile), tile=tile,
                                 date=_date(t), row=0, col=c, epsg=32633, minx=minx,
                                 miny=maxy - SIZE, maxx=minx + SIZE, maxy=maxy, valid=True,
                                 geometry=poly))
            emb = np.stack([v for _, v in rows])
            scene = _scene(t, tile)
            table = pa.table({
                "chip_id": [cid for cid, _ in rows], "scene_id": [scene] * len(rows),
                "date": pa.array([_date(t).value] * len(rows), type=pa.timestamp("ns", tz="UTC")),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM),
                "embedding_mean": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM)})
            rr.embeddings_dir.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, rr.embeddings_path(scene))
            rr.meta_dir.mkdir(parents=True, exist_ok=True)
            gpd.GeoDataFrame(meta, geometry="geometry", crs="EPSG:4326").to_parquet(
                rr.meta_path(scene))
    return rr


OPTS = dict(n_components=3, max_plots=0, progress=False)


def _changes(rr):
    return pq.read_table(rr.changes_path).to_pandas().sort_values("chip_id").reset_index(
        drop=True).drop(columns=["geometry"])


def _timeseries(rr):
    ts = pq.read_table(rr.timeseries_path).to_pandas()
    for col in ("chip_id", "scene_id"):
        ts[col] = ts[col].astype(str)
    return ts.sort_values(["chip_id", "date"]).reset_index(drop=True)


def _alerts(rr):
    frame = gpd.read_parquet(rr.alerts_path).drop(columns=["detected_at", "reference_id"])
    return frame.sort_values(["update", "chip_id"]).reset_index(drop=True)


@pytest.fixture
def grown(tmp_path):
    """A root analysed over dates 0..CUT-1, then grown by the dates CUT..N_DATES-1."""
    rr = write_dates(tmp_path / "inc", range(CUT))
    first = analyze(rr.path, **OPTS)
    write_dates(rr.path, range(CUT, N_DATES))
    return rr, first


def test_update_equals_from_scratch_with_the_same_reference(grown, tmp_path):
    rr, first = grown
    assert first.counts["alerts"] == 1
    before = _changes(rr).set_index("chip_id")
    update = analyze(rr.path, **OPTS)
    assert update.counts["new_observations"] == (N_DATES - CUT) * N_CHIPS
    assert update.counts["embeddings"] == (N_DATES - CUT) * N_CHIPS  # only new files read

    scratch = write_dates(tmp_path / "scratch", range(N_DATES))
    shutil.copy(rr.pca_path, tmp_path / "ref_pca.npz")
    analyze(scratch.path, pca=tmp_path / "ref_pca.npz", **OPTS)
    pd.testing.assert_frame_equal(_changes(rr), _changes(scratch))
    pd.testing.assert_frame_equal(_timeseries(rr), _timeseries(scratch))

    after = _changes(rr).set_index("chip_id")
    cid = [f"33UUP_64_0000_{c:04d}" for c in range(N_CHIPS)]
    for c, t in STEPS.items():
        assert after.loc[cid[c], "status"] == "change"
        assert after.loc[cid[c], "change_date"] == _date(t)
    # history is not rewritten: chip 0's change keeps its date
    assert before.loc[cid[0], "change_date"] == after.loc[cid[0], "change_date"]
    assert before.loc[cid[3], "status"] == "insufficient data"
    assert after.loc[cid[3], "status"] == "no change"
    assert set(after.index[after.status == "change"]) == {cid[c] for c in STEPS}


def test_alerts_are_the_changes_confirmed_by_each_update(grown, capsys):
    rr, first = grown
    alerts = gpd.read_parquet(rr.alerts_path)
    assert alerts["chip_id"].tolist() == ["33UUP_64_0000_0000"]
    assert alerts["confirmed_date"].iloc[0] == _date(21)
    cut_time = pd.Timestamp.now(tz="UTC")
    update = analyze(rr.path, **OPTS)
    assert update.counts["alerts"] == 2

    geo = json.loads(rr.alerts_geojson_path.read_text())
    props = {f["properties"]["chip_id"]: f["properties"] for f in geo["features"]}
    assert sorted(props) == ["33UUP_64_0000_0001", "33UUP_64_0000_0002"]  # this update only
    p1 = props["33UUP_64_0000_0001"]
    assert p1["change_date"] == str(_date(22).date())  # the first of the run, before the cut
    assert p1["confirmed_scene_id"] == _scene(24) and p1["previous_status"] == "no change"
    assert props["33UUP_64_0000_0002"]["confirmed_scene_id"] == _scene(28)
    assert geo["features"][0]["geometry"]["type"] == "Polygon"
    assert p1["magnitude"] > 3 and p1["update"] == 2

    everything = gpd.read_parquet(rr.alerts_path)
    assert len(everything) == 3 and sorted(everything["update"]) == [1, 2, 2]
    since = list_alerts(rr.path, since=cut_time)
    assert sorted(since["chip_id"]) == ["33UUP_64_0000_0001", "33UUP_64_0000_0002"]

    manifest = json.loads(rr.manifest_path.read_text())
    updates = manifest["stages"]["analyze"]["updates"]
    assert [u["kind"] for u in updates] == ["reference", "update"]
    assert [u["alerts"] for u in updates] == [1, 2]
    summary = manifest["stages"]["analyze"]["analysis"]  # the reference's, kept by updates
    assert summary["monitor_start"] == "2022-01-01" and summary["signal"] == "pc1"
    assert updates[1]["scenes_added"] == N_DATES - CUT
    assert updates[1]["status_moves"] == {"no change -> change": 2,
                                          "insufficient data -> no change": 1}

    # nothing new: skipped, the history stays; --since lists alerts (CLI)
    assert main(["--root", str(rr.path), "--n-components", "3", "--max-plots", "0",
                 "--no-progress", "--since", cut_time.isoformat(),
                 "--alerts-format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(a["chip_id"] for a in listed) == ["33UUP_64_0000_0001", "33UUP_64_0000_0002"]
    manifest = json.loads(rr.manifest_path.read_text())
    assert manifest["stages"]["analyze"]["counts"]["skipped"] == 1
    assert len(manifest["stages"]["analyze"]["updates"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(rr.path), "--since", "tomorrow-ish"])
    assert exc.value.code == 2
    assert "since='tomorrow-ish' is not a date" in capsys.readouterr().err


def test_refit_starts_a_new_reference(grown):
    rr, _ = grown
    analyze(rr.path, **OPTS)
    ref = json.loads(rr.analysis_state_path.read_text())["reference"]["id"]
    with pytest.raises(GeofmFileExistsError, match=r"differs in \['threshold'\].*--refit"):
        analyze(rr.path, threshold=4.0, **OPTS)
    record = analyze(rr.path, threshold=4.0, refit=True, **OPTS)
    state = json.loads(rr.analysis_state_path.read_text())
    assert state["reference"]["id"] != ref and state["reference"]["options"]["threshold"] == 4.0
    assert [u["kind"] for u in state["updates"]] == ["reference", "update", "reference"]
    # the refit rescored everything; alerts are only chips that became "change" now
    assert record.counts["observations"] == N_DATES * N_CHIPS - 4
    assert record.counts["alerts"] == 0 and record.counts["changed"] == 3


KILLER = """
import os, signal, sys
import geofm.io, geofm.analyze.stage as stage, geofm.analyze.outputs as outputs
point, count = sys.argv[2], int(sys.argv[3])
calls = [0]
def die(*args, **kwargs):
    calls[0] += 1
    if calls[0] >= count:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
if point == "rename":
    real = geofm.io._replace
    geofm.io._replace = die
else:
    real = outputs.write_changes
    outputs.write_changes = die
stage.analyze(sys.argv[1], n_components=3, max_plots=0, progress=False)
"""


@pytest.mark.parametrize("point,count", [("write", 1), ("rename", 3)])
def test_kill_9_during_an_update_then_rerun(grown, tmp_path, point, count):
    rr, _ = grown
    clean = RunRoot.of(tmp_path / "clean")
    shutil.copytree(rr.path, clean.path)
    analyze(clean.path, **OPTS)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(rr.path), point, str(count)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (rr.analysis_dir / ".pending").exists()
    record = analyze(rr.path, **OPTS)
    if point == "rename":  # committed before the kill: the re-run finds it done
        assert record.counts.get("skipped") == 1
    pd.testing.assert_frame_equal(_changes(rr), _changes(clean))
    pd.testing.assert_frame_equal(_timeseries(rr), _timeseries(clean))
    pd.testing.assert_frame_equal(_alerts(rr), _alerts(clean))
    assert not (rr.analysis_dir / ".pending").exists()
    state = json.loads(rr.analysis_state_path.read_text())
    assert [u["kind"] for u in state["updates"]] == ["reference", "update"]


def test_rewritten_and_removed_files_are_rescored_and_dropped(grown):
    rr, _ = grown
    analyze(rr.path, **OPTS)
    before_ts, before_ch = _timeseries(rr), _changes(rr)
    # a re-embedded file (same values, written again: other bytes) is scored again, not
    # added twice
    path = rr.embeddings_path(_scene(25))
    pq.write_table(pq.read_table(path), path, compression="zstd")
    again = analyze(rr.path, **OPTS)
    assert again.counts["new_observations"] == N_CHIPS and again.counts["alerts"] == 0
    pd.testing.assert_frame_equal(_timeseries(rr), before_ts)
    pd.testing.assert_frame_equal(_changes(rr), before_ch)
    # a removed file's observations leave the series
    rr.embeddings_path(_scene(N_DATES - 1)).unlink()
    dropped = analyze(rr.path, **OPTS)
    ts = _timeseries(rr)
    assert len(ts) == len(before_ts) - N_CHIPS and _scene(N_DATES - 1) not in set(ts.scene_id)
    state = json.loads(rr.analysis_state_path.read_text())
    assert state["updates"][-1]["scenes_removed"] == 1
    assert dropped.counts["observations"] == len(ts)


def test_a_removed_scene_leaves_results_equal_to_an_analysis_without_it(grown, tmp_path):
    rr, _ = grown
    analyze(rr.path, **OPTS)  # every chip has a state; then the last date goes
    rr.embeddings_path(_scene(N_DATES - 1)).unlink()
    analyze(rr.path, **OPTS)
    scratch = _scratch(tmp_path, rr, dates=range(N_DATES - 1))
    pd.testing.assert_frame_equal(_changes(rr), _changes(scratch))
    pd.testing.assert_frame_equal(_timeseries(rr), _timeseries(scratch))
    # and the states saved then carry on: one more date equals from scratch too
    write_dates(rr.path, [N_DATES])
    analyze(rr.path, **OPTS)
    again = _scratch(tmp_path / "again", rr, dates=[*range(N_DATES - 1), N_DATES])
    pd.testing.assert_frame_equal(_changes(rr), _changes(again))


def test_since_prints_a_table_by_default(grown, capsys):
    rr, _ = grown
    assert main(["--root", str(rr.path), "--n-components", "3", "--max-plots", "0",
                 "--no-progress", "--since", "2000-01-01"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["detected_at", "chip_id", "change_date", "magnitude",
                              "confirmed_by"]
    assert len(out) == 4 and "33UUP_64_0000_0001" in out[2] and _scene(24) in out[2]
    assert main(["--root", str(rr.path), "--n-components", "3", "--max-plots", "0",
                 "--no-progress", "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out.strip() == "no alerts"


@pytest.mark.parametrize("signal,embedding,center", [("pcs", "cls", "none"),
                                                     ("cosine", "mean", "scene")])
def test_update_equals_from_scratch_for_other_signals(tmp_path, signal, embedding, center):
    opts = dict(OPTS, signal=signal, embedding=embedding, center=center)
    rr = write_dates(tmp_path / "inc", range(CUT))
    analyze(rr.path, **opts)
    write_dates(rr.path, range(CUT, N_DATES))
    assert analyze(rr.path, **opts).counts["new_observations"] == (N_DATES - CUT) * N_CHIPS
    scratch = write_dates(tmp_path / "scratch", range(N_DATES))
    shutil.copy(rr.pca_path, tmp_path / "ref_pca.npz")
    analyze(scratch.path, pca=tmp_path / "ref_pca.npz", **opts)
    pd.testing.assert_frame_equal(_changes(rr), _changes(scratch))
    pd.testing.assert_frame_equal(_timeseries(rr), _timeseries(scratch))


# --- timeseries.parquet as a dataset of parts -------------------------------------------


def _parts(rr):
    """part file name -> bytes."""
    return {p.name: p.read_bytes() for p in rr.timeseries_parts()}


def _scratch(tmp_path, rr, dates=range(N_DATES), **kwargs):
    """A from-scratch analysis of ``dates`` with ``rr``'s PCA basis (the same reference)."""
    scratch = write_dates(tmp_path / "scratch", dates, **kwargs)
    shutil.copy(rr.pca_path, tmp_path / "ref_pca.npz")
    analyze(scratch.path, pca=tmp_path / "ref_pca.npz", **OPTS)
    return scratch


def test_update_appends_a_part_and_leaves_the_published_ones_as_they_are(grown, tmp_path):
    from geofm.tables import read_schema, read_table

    rr, _ = grown
    assert rr.timeseries_path.is_dir()
    before = _parts(rr)
    assert list(before) == ["part-00001.parquet"]
    analyze(rr.path, **OPTS)
    after = _parts(rr)
    assert list(after) == ["part-00001.parquet", "part-00002.parquet"]
    assert after["part-00001.parquet"] == before["part-00001.parquet"]  # byte for byte
    new = pq.read_table(rr.timeseries_path / "part-00002.parquet")
    assert len(new) == (N_DATES - CUT) * N_CHIPS  # only the update's observations
    assert new.schema == pq.read_schema(rr.timeseries_path / "part-00001.parquet")
    # one table for pyarrow, pandas and geofm's readers
    ts = _timeseries(rr)
    assert len(ts) == N_DATES * N_CHIPS - 4 and not ts.duplicated(["chip_id", "date"]).any()
    assert len(pd.read_parquet(rr.timeseries_path)) == len(ts)
    assert read_table(rr.timeseries_path, made_by="analyze", columns=["date"]).num_rows == len(ts)
    assert "pc3" in read_schema(rr.timeseries_path, made_by="analyze").names


def test_a_part_whose_anomaly_flags_change_is_rewritten(tmp_path):
    """Chip 3 has too few monitoring dates before the cut, so its outlier at date 19 is
    no anomaly; the update gives it enough, the flag flips, and its part is rewritten."""
    spikes = {(SPARSE, 19)}
    rr = write_dates(tmp_path / "inc", range(CUT), spikes=spikes)
    analyze(rr.path, **OPTS)
    first = pq.read_table(rr.timeseries_path).to_pandas()
    sparse = first["chip_id"].astype(str) == f"33UUP_64_0000_{SPARSE:04d}"
    assert (first.loc[sparse, "residual"].abs() > 3).any()
    assert not first.loc[sparse, "anomaly"].any()
    write_dates(rr.path, range(CUT, N_DATES), spikes=spikes)
    analyze(rr.path, **OPTS)
    assert list(_parts(rr)) == ["part-00002.parquet"]  # part 1's rows moved into part 2
    ts = _timeseries(rr)
    assert ts.loc[ts["chip_id"] == f"33UUP_64_0000_{SPARSE:04d}", "anomaly"].sum() == 1
    scratch = _scratch(tmp_path, rr, spikes=spikes)
    pd.testing.assert_frame_equal(ts, _timeseries(scratch))
    pd.testing.assert_frame_equal(_changes(rr), _changes(scratch))


def test_a_rescored_scene_rewrites_only_the_parts_holding_it(grown):
    rr, _ = grown
    analyze(rr.path, **OPTS)
    before, ts = _parts(rr), _timeseries(rr)
    path = rr.embeddings_path(_scene(25))  # published in part 2 (the update)
    pq.write_table(pq.read_table(path), path, compression="zstd")
    analyze(rr.path, **OPTS)
    after = _parts(rr)
    assert list(after) == ["part-00001.parquet", "part-00003.parquet"]
    assert after["part-00001.parquet"] == before["part-00001.parquet"]
    assert len(pq.read_table(rr.timeseries_path / "part-00003.parquet")) == \
        (N_DATES - CUT) * N_CHIPS  # part 2's other rows and the rescored scene, once
    pd.testing.assert_frame_equal(_timeseries(rr), ts)


def _as_single_file(rr):
    """Turn ``rr``'s timeseries dataset into the single file of a root from before parts."""
    table = pq.read_table(rr.timeseries_path)
    shutil.rmtree(rr.timeseries_path)
    pq.write_table(table, rr.timeseries_path)
    return rr.timeseries_path.read_bytes()


@pytest.mark.parametrize("rescored", [False, True])
def test_a_single_file_root_is_converted_by_its_next_update(grown, tmp_path, rescored):
    rr, _ = grown
    if rescored:  # a scene of the old file is rescored: its rows move into the new part
        path = rr.embeddings_path(_scene(3))
        pq.write_table(pq.read_table(path), path, compression="zstd")
    clean = RunRoot.of(tmp_path / "clean")
    shutil.copytree(rr.path, clean.path)
    analyze(clean.path, **OPTS)
    old = _as_single_file(rr)
    analyze(rr.path, **OPTS)
    parts = _parts(rr)
    if rescored:
        assert list(parts) == ["part-00001.parquet"]
    else:
        assert list(parts) == ["part-00000.parquet", "part-00001.parquet"]
        assert parts["part-00000.parquet"] == old  # the old file, kept as it was
    pd.testing.assert_frame_equal(_timeseries(rr), _timeseries(clean))
    pd.testing.assert_frame_equal(_changes(rr), _changes(clean))


def test_refit_replaces_the_dataset(grown):
    rr, _ = grown
    analyze(rr.path, **OPTS)
    assert len(_parts(rr)) == 2
    analyze(rr.path, refit=True, **OPTS)
    assert list(_parts(rr)) == ["part-00003.parquet"]
    assert len(_timeseries(rr)) == N_DATES * N_CHIPS - 4
    _as_single_file(rr)
    analyze(rr.path, refit=True, **OPTS)  # a single file is replaced as well
    assert rr.timeseries_path.is_dir() and list(_parts(rr)) == ["part-00001.parquet"]


@pytest.mark.parametrize("count", [1, 2])
def test_kill_9_while_converting_a_single_file_root(grown, tmp_path, count):
    """Killed after the old file's deletion (count 1: before any rename; 2: after one)."""
    rr, _ = grown
    _as_single_file(rr)
    clean = RunRoot.of(tmp_path / "clean")
    shutil.copytree(rr.path, clean.path)
    analyze(clean.path, **OPTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(rr.path), "rename", str(count)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    analyze(rr.path, **OPTS)
    assert list(_parts(rr)) == list(_parts(clean))
    pd.testing.assert_frame_equal(_timeseries(rr), _timeseries(clean))
    pd.testing.assert_frame_equal(_changes(rr), _changes(clean))


def test_same_content_with_a_new_mtime_is_not_rescored(grown, tmp_path):
    """SageMaker downloads the inputs again for every job: same bytes, new mtimes."""
    rr, _ = grown
    analyze(rr.path, **OPTS)
    for path in rr.embeddings_dir.iterdir():
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    copied = RunRoot.of(tmp_path / "copied")  # and a copy elsewhere
    shutil.copytree(rr.path, copied.path)
    for root in (rr, copied):
        record = analyze(root.path, **OPTS)
        assert record.counts.get("skipped") == 1 and "new_observations" not in record.counts


def test_a_state_from_before_content_digests_is_not_rescored(grown):
    from geofm.analyze.reference import stat_signature

    rr, _ = grown
    analyze(rr.path, **OPTS)
    state = json.loads(rr.analysis_state_path.read_text())
    state["scenes"] = {s: stat_signature(rr.embeddings_path(s)) for s in state["scenes"]}
    rr.analysis_state_path.write_text(json.dumps(state))
    assert analyze(rr.path, **OPTS).counts.get("skipped") == 1
    path = rr.embeddings_path(_scene(3))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert analyze(rr.path, **OPTS).counts["new_observations"] == N_CHIPS  # mtime moved


def test_removing_every_scene_of_a_part_deletes_it(grown):
    rr, _ = grown
    before = _timeseries(rr)
    analyze(rr.path, **OPTS)
    first = _parts(rr)["part-00001.parquet"]
    for t in range(CUT, N_DATES):  # the update's scenes, all in part 2
        rr.embeddings_path(_scene(t)).unlink()
    record = analyze(rr.path, **OPTS)
    assert record.counts["new_observations"] == 0
    assert _parts(rr) == {"part-00001.parquet": first}  # no new part, part 2 deleted
    pd.testing.assert_frame_equal(_timeseries(rr), before)


def test_chips_without_new_observations_keep_their_assessment(tmp_path, monkeypatch):
    """Chips 0 (changed before the cut) and 5 get no new date: the update assesses only
    the others and takes theirs over; the result equals a from-scratch analysis."""
    import geofm.analyze.assessment as assessment

    rr = write_dates(tmp_path / "inc", range(CUT))
    analyze(rr.path, **OPTS)
    write_dates(rr.path, range(CUT, N_DATES), missing={0, 5})
    sizes = []
    real = assessment.walk

    def counting(state, residual, *args, **kwargs):
        sizes.append(residual.shape[0])
        return real(state, residual, *args, **kwargs)

    monkeypatch.setattr(assessment, "walk", counting)
    record = analyze(rr.path, **OPTS)
    # the 6 chips with new dates are assessed: chip 3 (SPARSE) becomes assessable now, so
    # it is walked from its first observation; the 5 others go on from their state
    assert sorted(sizes) == [1, N_CHIPS - 3] and record.counts["alerts"] == 2
    monkeypatch.undo()
    scratch = write_dates(tmp_path / "scratch", range(CUT))
    write_dates(scratch.path, range(CUT, N_DATES), missing={0, 5})
    shutil.copy(rr.pca_path, tmp_path / "ref_pca.npz")
    analyze(scratch.path, pca=tmp_path / "ref_pca.npz", **OPTS)
    pd.testing.assert_frame_equal(_changes(rr), _changes(scratch))
    pd.testing.assert_frame_equal(_timeseries(rr), _timeseries(scratch))
    assert rr.change_map_path.read_text() == scratch.change_map_path.read_text()
    changes = _changes(rr).set_index("chip_id")
    assert changes.loc["33UUP_64_0000_0000", "status"] == "change"
    assert changes.loc["33UUP_64_0000_0000", "change_date"] == _date(STEPS[0])


def test_union_ids_reuses_known_ids_and_places_new_ones():
    from geofm.analyze.update import _union_ids

    known = np.array(["a", "c", "e"], dtype=object)
    same, rows = _union_ids(known, np.array(["c", "e"], dtype=object))
    assert same.tolist() == ["a", "c", "e"] and same.dtype == object
    assert rows.tolist() == [1, 2]
    grown, rows = _union_ids(known, np.array(["b", "e", "f"], dtype=object))
    assert grown.tolist() == ["a", "b", "c", "e", "f"] and grown.dtype == object
    assert rows.tolist() == [1, 3, 4]
    first, rows = _union_ids(np.array([], dtype=object), np.array(["x"], dtype=object))
    assert first.tolist() == ["x"] and rows.tolist() == [0]


def test_take_two_equals_take_of_the_concatenation():
    from geofm.analyze.update import take_two

    a, b = np.array([10, 11, 12, 13]), np.array([20, 21])
    both = np.concatenate([a, b])
    remap = (np.array([5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 4, 4, 4, 4]), np.arange(30) * 2)
    for idx in ([5, 0, 4, 3, 1], [0, 2], [4, 5], [], [1]):
        idx = np.asarray(idx, dtype=np.int64)
        assert take_two(a, b, idx).tolist() == both[idx].tolist()
        mapped = np.concatenate([remap[0][a - 10], remap[1][b - 20]])
        assert take_two(a - 10, b - 20, idx, remap=remap).tolist() == mapped[idx].tolist()
    empty = np.zeros(0, dtype=np.int64)
    assert take_two(empty, b, np.array([1, 0])).tolist() == [21, 20]


def _geo_changes(rr):
    return gpd.read_parquet(rr.changes_path).sort_values("chip_id").reset_index(drop=True)


def test_an_update_of_the_same_chips_reuses_the_published_footprints(grown, tmp_path):
    rr, _ = grown
    footprints = rr.analysis_dir / "footprints.parquet"
    stamp = (footprints.stat().st_ino, footprints.stat().st_mtime_ns)
    overlaps = (rr.overlaps_path.stat().st_ino, rr.overlaps_path.stat().st_mtime_ns)
    analyze(rr.path, **OPTS)
    assert (footprints.stat().st_ino, footprints.stat().st_mtime_ns) == stamp  # not rewritten
    assert (rr.overlaps_path.stat().st_ino, rr.overlaps_path.stat().st_mtime_ns) == overlaps
    # the changes carry the footprints and grid that meta/ gives from scratch
    scratch = _scratch(tmp_path, rr)
    mine, theirs = _geo_changes(rr), _geo_changes(scratch)
    assert mine.crs.to_epsg() == 4326 and len(mine) == N_CHIPS
    pd.testing.assert_frame_equal(mine, theirs)
    assert rr.change_map_path.read_bytes() == scratch.change_map_path.read_bytes()
    table = pq.read_table(footprints)
    assert table.column("chip_id").to_pylist() == sorted(mine["chip_id"])
    assert table.column("epsg").to_pylist() == [32633] * N_CHIPS
    assert json.loads(table.column("geojson")[0].as_py())["type"] == "Polygon"


def test_an_update_with_new_chips_or_without_footprints_gathers_them(tmp_path):
    rr = write_dates(tmp_path / "inc", range(CUT), missing=(7,))
    analyze(rr.path, **OPTS)
    footprints = rr.analysis_dir / "footprints.parquet"
    assert pq.read_table(footprints).num_rows == N_CHIPS - 1
    write_dates(rr.path, range(CUT, CUT + 2))  # chip 7 appears
    analyze(rr.path, **OPTS)
    assert pq.read_table(footprints).column("chip_id").to_pylist()[-1] == "33UUP_64_0000_0007"
    # a root analysed before footprints.parquet existed: the next update writes it
    footprints.unlink()
    write_dates(rr.path, range(CUT + 2, N_DATES))
    analyze(rr.path, **OPTS)
    assert pq.read_table(footprints).num_rows == N_CHIPS
    scratch = write_dates(tmp_path / "scratch", range(CUT), missing=(7,))
    write_dates(scratch.path, range(CUT, N_DATES))
    analyze(scratch.path, pca=rr.pca_path, **OPTS)
    pd.testing.assert_frame_equal(_geo_changes(rr), _geo_changes(scratch))


def test_two_tiles_update_keeps_the_overlaps_and_one_alert_per_place(tmp_path):
    tiles = ("33UUP", "33UVP")
    rr = write_dates(tmp_path / "inc", range(CUT), tiles=tiles)
    analyze(rr.path, **OPTS)
    pairs = pd.read_parquet(rr.overlaps_path)
    assert len(pairs) == 2 * N_CHIPS  # each chip and its twin, both directions
    write_dates(rr.path, range(CUT, N_DATES), tiles=tiles)
    analyze(rr.path, **OPTS)
    pd.testing.assert_frame_equal(pd.read_parquet(rr.overlaps_path), pairs)
    scratch = _scratch(tmp_path, rr, tiles=tiles)
    pd.testing.assert_frame_equal(_geo_changes(rr), _geo_changes(scratch))
    alerts = _alerts(rr)
    distinct = alerts[alerts["duplicate_of"].isna()]
    assert len(alerts) == 2 * len(STEPS) and len(distinct) == len(STEPS)


def test_a_broken_footprints_file_is_gathered_again(grown, tmp_path, caplog):
    rr, _ = grown
    footprints = rr.analysis_dir / "footprints.parquet"
    footprints.write_bytes(b"not parquet")
    analyze(rr.path, **OPTS)
    assert "footprints.parquet cannot be read as Parquet" in caplog.text
    assert pq.read_table(footprints).num_rows == N_CHIPS
    pd.testing.assert_frame_equal(_geo_changes(rr), _geo_changes(_scratch(tmp_path, rr)))


def test_an_update_goes_on_from_the_chip_states_without_reading_the_published_rows(
        grown, tmp_path, monkeypatch):
    import geofm.analyze.update as update

    rr, _ = grown
    analyze(rr.path, **OPTS)  # chip 3 becomes assessable here: every chip has a state now
    assert rr.assessment_path.is_file()
    # a copy of the root grown by two more dates (the same files in a from-scratch root)
    calls = []
    real = update.read_published

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(update, "read_published", counting)
    extra = 2
    write_dates(rr.path, range(N_DATES, N_DATES + extra))
    record = analyze(rr.path, **OPTS)
    assert calls == [] and record.counts["new_observations"] == extra * N_CHIPS
    assert record.counts["observations"] == (N_DATES + extra) * N_CHIPS - 4
    monkeypatch.undo()
    scratch = _scratch(tmp_path, rr, dates=range(N_DATES + extra))
    pd.testing.assert_frame_equal(_changes(rr), _changes(scratch))
    pd.testing.assert_frame_equal(_timeseries(rr), _timeseries(scratch))
    assert rr.change_map_path.read_bytes() == scratch.change_map_path.read_bytes()


def test_a_late_acquisition_walks_its_chips_from_the_first_observation(tmp_path):
    late = 21  # a monitoring date that arrives after later ones were analysed
    rr = write_dates(tmp_path / "inc", [t for t in range(CUT) if t != late])
    analyze(rr.path, **OPTS)
    write_dates(rr.path, [late, *range(CUT, N_DATES)])
    record = analyze(rr.path, **OPTS)
    assert record.counts["new_observations"] == (N_DATES - CUT + 1) * N_CHIPS - 1
    scratch = _scratch(tmp_path, rr)
    pd.testing.assert_frame_equal(_changes(rr), _changes(scratch))
    pd.testing.assert_frame_equal(_timeseries(rr), _timeseries(scratch))
    # the same changes alerted (each alert keeps the magnitude of the time it was raised)
    cols = ["chip_id", "change_date"]
    pd.testing.assert_frame_equal(_alerts(rr)[cols].sort_values(cols).reset_index(drop=True),
                                  _alerts(scratch)[cols].sort_values(cols).reset_index(drop=True))


@pytest.mark.parametrize("broken", [None, b"not a zip", b"PK\x03\x04 truncated"])
def test_a_missing_or_broken_assessment_state_walks_every_chip_again(grown, tmp_path, broken):
    rr, _ = grown
    if broken is None:
        rr.assessment_path.unlink()
    else:
        rr.assessment_path.write_bytes(broken)
    analyze(rr.path, **OPTS)
    scratch = _scratch(tmp_path, rr)
    pd.testing.assert_frame_equal(_changes(rr), _changes(scratch))
    pd.testing.assert_frame_equal(_timeseries(rr), _timeseries(scratch))
    assert np.load(rr.assessment_path)["update"] == 2  # written again
