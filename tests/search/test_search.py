import json
import re

import numpy as np
import pandas as pd
import pytest
import shapely

from geofm.cli import main
from geofm.exceptions import GeofmValueError, SearchIndexError
from geofm.index import build_index
from geofm.index.table import IndexInfo
from geofm.layout import RunRoot
from geofm.search import search
from geofm.search.query import NEGATIVE_WEIGHT

QUERY = "33UUP_64_0001_0002"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, make_embedded_root):
    """3 classes x 8 chips x 3 dates, dim 16, clean clusters; indexed with cls."""
    root = tmp_path_factory.mktemp("search") / "root"
    truth = make_embedded_root(root, n_classes=3, per_class=8, dim=16, noise=0.3)
    build_index(root)
    return root, truth


def _table(root):
    """Consolidated rows + unit vectors + centred unit vectors (numpy reference)."""
    cons = pd.read_parquet(RunRoot.of(root).consolidated_path)
    raw = np.stack(cons["embedding"].to_numpy()).astype(np.float64)
    mean = np.asarray(IndexInfo.read(RunRoot.of(root)).mean)

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    return cons, unit(raw), unit(raw - mean), unit


def test_by_chip_returns_same_class_and_excludes_query(indexed):
    root, truth = indexed
    res = search(root, chip_ids=[QUERY], k=10)
    assert len(res) == 10 and res.crs.to_epsg() == 4326
    assert QUERY not in set(res["chip_id"])
    assert all(truth[c] == truth[QUERY] for c in res["chip_id"])
    assert list(res["similarity"]) == sorted(res["similarity"], reverse=True)
    assert list(res.columns[:4]) == ["chip_id", "scene_id", "date", "similarity"]


def test_similarity_is_cosine_to_latest_acquisition(indexed):
    root, _ = indexed
    cons, unit_vecs, _, _ = _table(root)
    mine = cons[cons["chip_id"] == QUERY].sort_values("date")
    q = unit_vecs[mine.index[-1]]
    res = search(root, chip_ids=[QUERY], k=5)
    assert res.attrs["query"]["sources"][0]["date"].startswith("2021-08-01")
    for _, row in res.iterrows():
        i = cons.index[(cons["chip_id"] == row["chip_id"])
                       & (cons["scene_id"] == row["scene_id"])][0]
        assert row["similarity"] == pytest.approx(unit_vecs[i] @ q, abs=1e-4)


def test_date_picks_the_acquisition_and_unknown_date_lists_dates(indexed):
    root, _ = indexed
    res = search(root, chip_ids=[QUERY], date="2021-06-01", k=3)
    assert res.attrs["query"]["sources"][0]["date"].startswith("2021-06-01")
    latest = search(root, chip_ids=[QUERY], k=3)
    assert not np.allclose(res["similarity"], latest["similarity"])
    with pytest.raises(SearchIndexError, match=r"no indexed acquisition on 2020-01-01.*"
                                               r"2021-06-01, 2021-07-01, 2021-08-01"):
        search(root, chip_ids=[QUERY], date="2020-01-01")


def test_filters_are_respected_and_k_results_still_come_back(indexed):
    root, truth = indexed
    res = search(root, chip_ids=[QUERY], k=5, start="2021-07-01", end="2021-07-01")
    assert len(res) == 5 and (res["date"] == pd.Timestamp("2021-07-01", tz="UTC")).all()
    res = search(root, chip_ids=[QUERY], k=5, max_cloud=0.03)
    assert len(res) == 5 and (res["cloud_fraction"] <= 0.03 + 1e-7).all()
    res = search(root, chip_ids=[QUERY], k=20, min_similarity=0.5)
    assert len(res) > 0 and (res["similarity"] >= 0.5).all()
    every = search(root, chip_ids=[QUERY], k=200)
    assert len(every) == (len(truth) - 1) * 3  # everything but the query chip
    assert (every["similarity"] < 0.5).any()  # so min_similarity did drop rows


def test_bbox_keeps_only_intersecting_footprints(indexed):
    root, _ = indexed
    cons = pd.read_parquet(RunRoot.of(root).consolidated_path)
    geoms = shapely.from_wkb(cons["geometry"].to_numpy())
    target = geoms[(cons["chip_id"] == "33UUP_64_0002_0006").to_numpy()][0]
    c = target.centroid
    box = (c.x - 0.001, c.y - 0.001, c.x + 0.001, c.y + 0.001)  # inside one chip
    res = search(root, chip_ids=[QUERY], k=10, bbox=box)
    assert set(res["chip_id"]) == {"33UUP_64_0002_0006"} and len(res) == 3
    wide = search(root, chip_ids=[QUERY], k=10, bbox=",".join(map(str, box)))
    assert len(wide) == 3
    with pytest.raises(GeofmValueError, match="W < E and S < N"):
        search(root, chip_ids=[QUERY], bbox=(14, 52, 13, 53))


def test_mean_of_positives_is_the_mean_unit_vector(indexed):
    root, truth = indexed
    other = "33UUP_64_0002_0003"
    cons, unit_vecs, _, unit = _table(root)
    latest = [cons[cons["chip_id"] == c].sort_values("date").index[-1] for c in (QUERY, other)]
    q = unit(unit_vecs[latest].mean(axis=0))
    res = search(root, chip_ids=[QUERY, other], k=30)
    assert not {QUERY, other} & set(res["chip_id"])
    expected = np.sort(np.delete(unit_vecs,
                                 cons.index[cons["chip_id"].isin([QUERY, other])], axis=0)
                       @ q)[::-1][:30]
    np.testing.assert_allclose(res["similarity"], expected, atol=1e-4)
    assert {truth[c] for c in res["chip_id"]} >= {truth[QUERY], truth[other]}


def test_negatives_shift_the_query_and_drop_closer_results(indexed):
    root, _ = indexed
    neg = "33UUP_64_0001_0005"  # same class as the query: a rejected look-alike
    cons, unit_vecs, _, unit = _table(root)
    pos = unit_vecs[cons[cons["chip_id"] == QUERY].sort_values("date").index[-1]]
    negv = unit_vecs[cons[cons["chip_id"] == neg].sort_values("date").index[-1]]
    q = unit(pos - NEGATIVE_WEIGHT * negv)
    plain = search(root, chip_ids=[QUERY], k=10)
    res = search(root, chip_ids=[QUERY], negative_chip_ids=[neg], k=10)
    assert neg not in set(res["chip_id"]) and neg in set(search(root, chip_ids=[QUERY],
                                                                   k=30)["chip_id"])
    assert list(res["chip_id"]) != list(plain["chip_id"])
    for _, row in res.iterrows():
        i = cons.index[(cons["chip_id"] == row["chip_id"])
                       & (cons["scene_id"] == row["scene_id"])][0]
        assert row["similarity"] == pytest.approx(unit_vecs[i] @ q, abs=1e-4)
        assert unit_vecs[i] @ negv <= unit_vecs[i] @ pos + 1e-6


def test_vector_file_npy_and_json(indexed, tmp_path):
    root, truth = indexed
    cons, unit_vecs, _, _ = _table(root)
    raw = np.stack(cons["embedding"].to_numpy())[cons["chip_id"] == QUERY][-1] * 3.0
    np.save(tmp_path / "q.npy", raw)
    (tmp_path / "q.json").write_text(json.dumps(raw.tolist()))
    by_npy = search(root, vector=tmp_path / "q.npy", k=10)
    by_json = search(root, vector=str(tmp_path / "q.json"), k=10)
    assert list(by_npy["chip_id"]) == list(by_json["chip_id"])
    assert by_npy["similarity"].iat[0] == pytest.approx(1.0, abs=1e-4)  # the chip itself
    assert by_npy["chip_id"].iat[0] == QUERY  # a vector query excludes nothing
    assert all(truth[c] == truth[QUERY] for c in by_npy["chip_id"])


def test_vector_of_other_dimension_or_model_is_refused(indexed, tmp_path):
    root, _ = indexed
    np.save(tmp_path / "short.npy", np.ones(7, np.float32))
    with pytest.raises(SearchIndexError, match=r"has 7 values but the index was built with "
                                               r"dim 16"):
        search(root, vector=tmp_path / "short.npy")
    (tmp_path / "other.json").write_text(json.dumps(
        {"vector": [1.0] * 16, "model": {"preset": "large"}}))
    with pytest.raises(SearchIndexError, match="computed with model .*large"):
        search(root, vector=tmp_path / "other.json")
    with pytest.raises(SearchIndexError, match="built with embedding 'cls', not 'mean'"):
        search(root, chip_ids=[QUERY], embedding="mean")


def test_unknown_chip_id_suggests_close_ids(indexed):
    root, _ = indexed
    with pytest.raises(SearchIndexError, match=r"'33UUP_64_0001_0022' is not in the search "
                                               r"index; did you mean 33UUP_64_0001_0002"):
        search(root, chip_ids=["33UUP_64_0001_0022"])
    with pytest.raises(SearchIndexError, match="is not in the search index"):
        search(root, chip_ids=[QUERY], negative_chip_ids=["nope"])


def test_missing_index_and_no_query(tmp_path, indexed):
    with pytest.raises(SearchIndexError, match="run `geofm index --root"):
        search(tmp_path, chip_ids=[QUERY])
    with pytest.raises(GeofmValueError, match="give at least one chip id"):
        search(indexed[0])


def test_centring_uses_the_run_mean(tmp_path, make_embedded_root):
    root = tmp_path / "root"
    make_embedded_root(root, n_classes=3, per_class=8, dim=16, offset=8.0, noise=0.6)
    build_index(root)
    cons, unit_vecs, centred, _ = _table(root)
    i = cons[cons["chip_id"] == QUERY].sort_values("date").index[-1]
    keep = (cons["chip_id"] != QUERY).to_numpy()
    plain = search(root, chip_ids=[QUERY], k=10)
    cent = search(root, chip_ids=[QUERY], k=10, centre=True)
    assert plain["similarity"].min() > 0.9  # a shared offset: everything looks alike
    np.testing.assert_allclose(cent["similarity"],
                               np.sort(centred[keep] @ centred[i])[::-1][:10], atol=1e-4)
    np.testing.assert_allclose(plain["similarity"],
                               np.sort(unit_vecs[keep] @ unit_vecs[i])[::-1][:10], atol=1e-4)
    assert list(cent["chip_id"] + cent["scene_id"]) != list(plain["chip_id"] + plain["scene_id"])
    assert cent["similarity"].min() < plain["similarity"].min()


def test_cli_json_geojson_and_table(indexed, capsys, tmp_path):
    root, truth = indexed
    args = ["search", "--root", str(root), "--chip-id", QUERY, "--k", "4"]
    assert main([*args, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4 and rows[0]["similarity"] >= rows[-1]["similarity"]
    assert {"chip_id", "scene_id", "date", "similarity", "geometry"} <= set(rows[0])
    assert rows[0]["geometry"]["type"] == "Polygon"
    assert 13 < rows[0]["geometry"]["coordinates"][0][0][0] < 14  # lon first
    assert main([*args, "--format", "geojson", "--max-cloud", "0.05"]) == 0
    fc = json.loads(capsys.readouterr().out)
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 4
    props = fc["features"][0]["properties"]
    assert props["rank"] == 1 and props["similarity"] > 0 and props["cloud_fraction"] <= 0.05
    assert main([*args, "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert "similarity" in out and rows[0]["chip_id"] in out
    out_file = tmp_path / "r.geojson"
    assert main([*args, "--format", "geojson", "--output", str(out_file),
                 "--negative-chip-id", "33UUP_64_0001_0005", "--centre"]) == 0
    assert len(json.loads(out_file.read_text())["features"]) == 4


def test_cli_errors_exit_1(indexed):
    root, _ = indexed
    assert main(["search", "--root", str(root), "--chip-id", "33UUP_64_0001_002"]) == 1
    assert main(["search", "--root", str(root)]) == 1


def test_distinct_gives_one_hit_per_place_with_its_best_acquisition(indexed):
    root, truth = indexed
    every = search(root, chip_ids=[QUERY], k=100)
    assert every["chip_id"].duplicated().any()  # several dates of a place by default
    res = search(root, chip_ids=[QUERY], k=5, distinct=True)
    assert len(res) == 5 and not res["chip_id"].duplicated().any()
    best = every.drop_duplicates("chip_id").head(5)
    assert list(res["chip_id"]) == list(best["chip_id"])
    np.testing.assert_allclose(res["similarity"], best["similarity"], rtol=1e-6)


def test_distinct_counts_overlapping_chips_of_two_tiles_as_one_place(tmp_path,
                                                                     make_embedded_root):
    root = RunRoot.of(tmp_path / "root")
    make_embedded_root(root.path, n_classes=3, per_class=8, dim=16, noise=0.3)
    build_index(root.path)
    plain = search(root.path, chip_ids=[QUERY], k=4, distinct=True)
    first, second = plain["chip_id"].iloc[:2]
    # as if `second` were the other tile's chip of the same ground as `first`
    pairs = pd.DataFrame({"chip_id": [first, second], "other_chip_id": [second, first],
                          "tile": ["33UUP", "33UVP"], "other_tile": ["33UVP", "33UUP"],
                          "share": np.float32([1.0, 1.0])})
    root.analysis_dir.mkdir()
    pairs.to_parquet(root.overlaps_path, index=False)
    res = search(root.path, chip_ids=[QUERY], k=4, distinct=True)
    assert first in set(res["chip_id"]) and second not in set(res["chip_id"])
    assert len(res) == 4
    assert list(res["chip_id"].iloc[1:3]) == list(plain["chip_id"].iloc[2:4])


def _pickled_npy(path):
    np.save(path, np.array([{"a": 1}, [1.0, 2.0]], dtype=object), allow_pickle=True)


@pytest.mark.parametrize("name, write, message", [
    ("broken.json", lambda p: p.write_text('[1.0, 2.0,'), r"broken\.json is not valid JSON"),
    ("words.json", lambda p: p.write_text('["a", "b"]'), r"words\.json does not hold numbers"),
    ("objects.npy", _pickled_npy, r"objects\.npy is not a numeric \.npy array"),
    ("text.npy", lambda p: p.write_text("not numpy"), r"text\.npy is not a numeric \.npy"),
    ("strings.npy", lambda p: np.save(p, np.array(["a", "b"])),
     r"strings\.npy holds <U1 values"),
])
def test_cli_bad_vector_file_exits_1_naming_the_file(indexed, tmp_path, capsys, name, write,
                                                     message):
    root, _ = indexed
    path = tmp_path / name
    write(path)
    assert main(["search", "--root", str(root), "--vector-file", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(message, err), err
    assert str(path) in err


def test_object_npy_is_never_unpickled(tmp_path, monkeypatch):
    from geofm.search.query import read_vector_file

    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("the vector file was unpickled",))

    np.save(tmp_path / "evil.npy", np.array([Boom()], dtype=object), allow_pickle=True)
    info = IndexInfo(embedding="cls", dim=16, model={}, mean=[0.0] * 16, mean_rows=1)
    with pytest.raises(GeofmValueError, match="no object/pickled arrays"):
        read_vector_file(tmp_path / "evil.npy", info)


def test_search_uses_the_calibrated_ann_parameters_unless_told(tmp_path, make_embedded_root):
    from geofm.index.table import query_parameters

    root = tmp_path / "root"
    make_embedded_root(root, n_classes=4, per_class=80, dates=("2021-06-01",), dim=16,
                       noise=0.5)
    build_index(root, ann_min_rows=300)
    cal = IndexInfo.read(RunRoot.of(root)).ann["calibration"]
    query = "33UUP_64_0002_0005"
    used = search(root, chip_ids=[query], k=10).attrs["query"]["ann"]
    assert used == {"nprobes": cal["vector"]["nprobes"],
                    "refine_factor": cal["vector"]["refine_factor"]}
    centred = search(root, chip_ids=[query], k=10, centre=True).attrs["query"]["ann"]
    assert centred == {"nprobes": cal["vector_centred"]["nprobes"],
                       "refine_factor": cal["vector_centred"]["refine_factor"]}
    told = search(root, chip_ids=[query], k=10, nprobes=3, refine_factor=7)
    assert told.attrs["query"]["ann"] == {"nprobes": 3, "refine_factor": 7}
    # an index written before calibration existed: its index-wide values are used
    old = IndexInfo(embedding="cls", dim=16, model={}, mean=[0.0] * 16, mean_rows=1,
                    ann={"nprobes": 32, "refine_factor": 20})
    assert query_parameters(old, "vector") == (32, 20)
    assert query_parameters(old, "vector", nprobes=5) == (5, 20)


def test_exact_search_records_no_ann_parameters(indexed):
    root, _ = indexed
    assert search(root, chip_ids=[QUERY], k=3).attrs["query"]["ann"] is None
