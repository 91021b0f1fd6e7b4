"""``geofm chip --stac`` against a real STAC API on localhost (``rustac serve``, in memory)."""

import json
from pathlib import Path

import numpy as np
import pytest

from geofm.chip.search import StacQuery, search_items
from geofm.cli import main
from geofm.exceptions import CatalogError, GeofmValueError
from geofm.layout import RunRoot

DATES = ["2024-05-01", "2024-05-11", "2024-05-21", "2024-06-10", "2024-06-20"]
CLOUD = [5.0, 60.0, 10.0, 20.0, 1.0]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, stac_server):
    """Five acquisitions in sentinel-2-l2a (one also republished in sentinel-2-c1-l2a,
    one reprocessed under a second id), served by ``rustac serve``; yields (url, folder)."""
    import rasterio
    from affine import Affine

    folder = tmp_path_factory.mktemp("catalog")
    rng = np.random.default_rng(3)
    items = []
    for i, (day, cover) in enumerate(zip(DATES, CLOUD, strict=True)):
        ident = f"S2A_33UUP_{day.replace('-', '')}_0_L2A"
        assets = {}
        for key, res in (("blue", 10), ("green", 10), ("red", 10), ("nir", 10), ("scl", 20)):
            n = 640 // res
            arr = (np.full((n, n), 4, np.uint8) if key == "scl" else
                   rng.integers(1500, 3000, (n, n)).astype(np.uint16))
            path = folder / "assets" / ident / f"{key}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(path, "w", driver="GTiff", height=n, width=n, count=1,
                               dtype=arr.dtype, crs="EPSG:32633", nodata=0,
                               transform=Affine(res, 0, 500000.0, 0, -res, 5600000.0)) as dst:
                dst.write(arr, 1)
            assets[key] = {"href": str(path), "roles": ["data"]}
        items.append({
            "type": "Feature", "stac_version": "1.0.0", "id": ident,
            "collection": "sentinel-2-l2a", "bbox": [15.0, 50.52, 15.01, 50.53],
            "geometry": {"type": "Polygon", "coordinates": [[[15.0, 50.53], [15.01, 50.53],
                                                             [15.01, 50.52], [15.0, 50.52],
                                                             [15.0, 50.53]]]},
            "properties": {"datetime": f"{day}T10:00:{i:02d}Z", "proj:epsg": 32633,
                           "grid:code": "MGRS-33UUP", "eo:cloud_cover": cover,
                           "s2:processing_baseline": "05.10", "updated": "2024-07-01T00:00:00Z"},
            "assets": assets, "links": []})
    # the first acquisition again: in C1 (newer) and reprocessed in L2A (older baseline)
    c1 = json.loads(json.dumps(items[0]))
    c1.update(id="S2A_T33UUP_20240501T100000_L2A", collection="sentinel-2-c1-l2a")
    c1["properties"]["updated"] = "2025-01-01T00:00:00Z"
    old = json.loads(json.dumps(items[0]))
    old["id"] = "S2A_33UUP_20240501_1_L2A"
    old["properties"]["s2:processing_baseline"] = "05.00"
    # an acquisition elsewhere (bbox filter)
    far = json.loads(json.dumps(items[3]))
    far.update(id="S2A_10SEG_20240610_0_L2A", bbox=[-122.0, 37.0, -121.9, 37.1])
    far["geometry"] = {"type": "Polygon", "coordinates": [[[-122.0, 37.1], [-121.9, 37.1],
                                                          [-121.9, 37.0], [-122.0, 37.0],
                                                          [-122.0, 37.1]]]}
    far["properties"]["grid:code"] = "MGRS-10SEG"
    served = [*items, c1, old, far]
    (folder / "l2a.json").write_text(json.dumps({"type": "FeatureCollection",
                                                 "features": items}))
    with stac_server.serve(folder, served, ["sentinel-2-l2a", "sentinel-2-c1-l2a"]) as url:
        yield url, folder


def _ids(path: Path) -> list[str]:
    return [f["id"] for f in json.loads(path.read_text())["features"]]


def test_filters_paging_and_deduplication(catalog, tmp_path):
    url, _ = catalog
    everything = StacQuery(url=url, collections=("sentinel-2-l2a", "sentinel-2-c1-l2a"),
                           bbox=(14.9, 50.4, 15.1, 50.6))
    path = search_items(tmp_path / "a", everything, page_size=2)  # 7 hits: four pages
    assert path == RunRoot.of(tmp_path / "a").search_items_path(everything.digest())
    ids = _ids(path)
    assert "S2A_10SEG_20240610_0_L2A" not in ids  # outside the bbox
    # one acquisition in three copies: C1 is the newest of the highest baseline
    assert ids == ["S2A_T33UUP_20240501T100000_L2A", *[f"S2A_33UUP_{d.replace('-', '')}_0_L2A"
                                                       for d in DATES[1:]]]
    saved = json.loads(path.read_text())["geofm:search"]
    assert sorted(d["dropped"] for d in saved["duplicates"]) == [
        "S2A_33UUP_20240501_0_L2A", "S2A_33UUP_20240501_1_L2A"]
    only_l2a = search_items(tmp_path / "b", StacQuery(
        url=url, collections=("sentinel-2-l2a",), bbox=(14.9, 50.4, 15.1, 50.6),
        datetime="2024-05-01/2024-05-31", max_cloud_cover=20), page_size=2)
    assert _ids(only_l2a) == ["S2A_33UUP_20240501_0_L2A", "S2A_33UUP_20240521_0_L2A"]
    few = search_items(tmp_path / "c", StacQuery(url=url, collections=("sentinel-2-l2a",),
                                                 max_items=3), page_size=2)
    assert len(_ids(few)) == 3


def test_stac_gives_exactly_the_chips_of_items(catalog, tmp_path, capsys, same_chips):
    url, folder = catalog
    common = ["--chip-size", "32", "--no-progress", "--max-cloud", "1.0"]
    assert main(["chip", "--stac", url, "--collection", "sentinel-2-l2a",
                 "--bbox=14.9,50.4,15.1,50.6", "--datetime", "2024-01-01/2024-12-31",
                 "--out", str(tmp_path / "stac"), *common]) == 0
    assert main(["chip", "--items", str(folder / "l2a.json"), "--out",
                 str(tmp_path / "items"), *common]) == 0
    assert len(same_chips(tmp_path / "stac", tmp_path / "items", ["blue", "nir"])) == 5
    a = RunRoot.of(tmp_path / "stac")
    # the saved items make a re-run independent of the API
    assert len(list(a.items_dir.glob("search-*.json"))) == 1


def test_search_errors(catalog, tmp_path, capsys, geofm_log, stac_server):
    url, _ = catalog
    with pytest.raises(GeofmValueError, match="found no items.*widen"):
        search_items(tmp_path, StacQuery(url=url, collections=("sentinel-2-l2a",),
                                         bbox=(100.0, 10.0, 101.0, 11.0)))
    down = f"http://127.0.0.1:{stac_server.free_port()}"
    with pytest.raises(CatalogError, match="cannot reach the STAC API") as err:
        search_items(tmp_path, StacQuery(url=down, collections=("sentinel-2-l2a",)))
    assert err.value.url == down
    assert main(["chip", "--stac", down, "--collection", "x", "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 1
    assert "cannot reach the STAC API" in geofm_log.text
    # an empty search is bad data (exit 1) naming the query and the fix, nothing chipped
    assert main(["chip", "--stac", url, "--collection", "sentinel-2-l2a",
                 "--bbox=100,10,101,11", "--out", str(tmp_path / "empty"),
                 "--no-progress"]) == 1
    assert "found no items" in geofm_log.text and "widen" in geofm_log.text
    assert not (tmp_path / "empty" / "chips").exists()
    assert main(["chip", "--stac", url, "--out", str(tmp_path / "r")]) == 2
    assert "--stac needs --collection" in capsys.readouterr().err
    assert main(["chip", "--out", str(tmp_path / "r")]) == 2
    assert main(["chip", "--items", "x", "--bbox=1,2,3,4", "--out", str(tmp_path / "r")]) == 2
    with pytest.raises(SystemExit) as exit_:
        main(["chip", "--stac", url, "--collection", "x", "--bbox", "1,2", "--out", "r"])
    assert exit_.value.code == 2
    assert not (tmp_path / "r").exists()


def test_pipeline_yaml_searches_then_chips(catalog, tmp_path):
    from geofm.pipeline import PipelineConfig, run_pipeline

    url, _ = catalog
    config = PipelineConfig.from_mapping({
        "root": str(tmp_path / "run"), "stages": ["chip"], "progress": False,
        "stac": {"url": url, "collections": "sentinel-2-l2a", "bbox": [14.9, 50.4, 15.1, 50.6],
                 "datetime": "2024-06-01/2024-06-30"},
        "chip": {"chip_size": 32, "max_cloud": 1.0}})
    record = run_pipeline(config)["chip"]
    assert record.failures == [] and record.counts["scenes"] == 2
    assert record.config["items"].endswith(".json") and "/items/search-" in \
        record.config["items"]


def test_an_api_error_answer_carries_its_http_status(tmp_path):
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b'{"code": "BadGateway", "description": "upstream down"}'
            self.send_response(502)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(CatalogError, match="answered an error") as err:
            search_items(tmp_path, StacQuery(url=url, collections=("sentinel-2-l2a",)))
    finally:
        server.shutdown()
    assert (err.value.url, err.value.status) == (url, 502)
