"""geofm.serve.app: the data endpoints over HTTP (server in a thread, urllib client)."""

import http.client
import json
import socket
import urllib.parse

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from geofm.search import search
from geofm.search.output import to_feature_collection, to_records
from geofm.serve import make_server
from geofm.serve.app import PortInUseError, static_dir


def _snapshot(root):
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_dir()}


def _raw_get(server, path, headers=None):
    """GET ``path`` exactly as written (no client-side normalisation of ``..``)."""
    host, port = server.server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def test_run_summary_counts_the_tables(server, served_root):
    status, run = server.json("/api/run")
    assert status == 200
    meta = pd.concat([pd.read_parquet(p, columns=["chip_id"])
                      for p in (served_root / "meta").glob("*.parquet")])
    changes = pd.read_parquet(served_root / "analysis" / "changes.parquet")
    counts = run["counts"]
    assert counts["scenes"] == len(list((served_root / "meta").glob("*.parquet"))) == 24
    assert counts["chips"] == meta["chip_id"].nunique() == 9
    assert counts["changed"] == int(changes["change"].sum())
    assert counts["changed"] + counts["no_change"] + counts["insufficient"] == 9
    consolidated = pd.read_parquet(served_root / "consolidated.parquet", columns=["chip_id"])
    assert counts["indexed"] == len(consolidated)
    assert run["random_weights"] is True and run["model"]["preset"] == "tiny"
    assert run["analysis"] and run["index"] and run["missing"] == []
    assert run["timeline"]["signal"] == "pc1" and run["timeline"]["threshold"] == 3.0


def test_chip_layer_json_and_binary_footprints_agree(server, served_root, changed_chips):
    status, headers, body = server.get("/api/chips")
    assert status == 200 and headers["Content-Type"] == "application/json"
    layer = json.loads(body)
    status, headers, blob = server.get("/api/chips/footprints.bin")
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    corners = np.frombuffer(blob, dtype="<f4").reshape(layer["n"], 4, 2)
    assert layer["n"] == 9 and layer["chip_ids"] == sorted(layer["chip_ids"])
    assert [c["chip_id"] for c in layer["changes"]] == changed_chips
    changes = gpd.read_parquet(served_root / "analysis" / "changes.parquet").set_index("chip_id")
    for c in layer["changes"]:
        assert layer["chip_ids"][c["i"]] == c["chip_id"]
        assert c["change_date"] == f"{changes.loc[c['chip_id'], 'change_date']:%Y-%m-%d}"
    names = layer["status_names"]
    assert [names[s] for s in layer["status"]] == list(changes.loc[layer["chip_ids"], "status"])
    for i, cid in enumerate(layer["chip_ids"]):  # corners are the chip's footprint corners
        centre = changes.loc[cid, "geometry"].centroid
        assert corners[i, :, 0].min() < centre.x < corners[i, :, 0].max()
        assert corners[i, :, 1].min() < centre.y < corners[i, :, 1].max()


def test_chip_endpoint_and_its_thumbnails(server, changed_chips):
    cid = changed_chips[0]
    status, chip = server.json(f"/api/chip?id={cid}")
    assert status == 200 and chip["chip_id"] == cid and chip["status"] == "change"
    assert chip["timeline"]["dates"] and chip["plot"] == f"analysis/plots/{cid}.png"
    for key in ("before", "after"):
        status, headers, png = server.get("/files/" + chip[key]["thumbnail"])
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert png.startswith(b"\x89PNG")
    status, _, png = server.get("/files/" + chip["plot"])
    assert status == 200 and png.startswith(b"\x89PNG")


def test_unknown_chip_is_404_with_suggestions(server, changed_chips):
    wrong = changed_chips[0][:-1] + "9"
    status, body = server.json("/api/chip?id=" + urllib.parse.quote(wrong))
    assert status == 404 and body["kind"] == "UnknownChipError"
    assert wrong in body["error"] and body["suggestions"]
    status, body = server.json("/api/chip")
    assert status == 400 and "/api/chip?id=CHIP_ID" in body["error"]


def test_search_endpoint_is_geofm_search(server, served_root, changed_chips):
    layer_ids = server.json("/api/chips")[1]["chip_ids"]
    query = [changed_chips[0], layer_ids[4]]
    negative = layer_ids[8]
    status, body = server.json(
        f"/api/search?chip={query[0]}&chip={query[1]}&neg={negative}&k=4&distinct=1"
        "&start=2021-03-01&max_cloud=0.5&bbox=-180,-90,180,90&min_similarity=-1")
    assert status == 200
    want = search(served_root, chip_ids=query, negative_chip_ids=[negative], k=4,
                  distinct=True, start="2021-03-01", max_cloud=0.5,
                  bbox=(-180, -90, 180, 90), min_similarity=-1.0)
    assert body["results"] == json.loads(json.dumps(to_records(want)))
    assert len(body["results"]) == 4
    assert not {r["chip_id"] for r in body["results"]} & {*query, negative}
    assert body["options"]["chip_ids"] == query and body["query"]["negatives"] == [negative]

    status, headers, raw = server.get(f"/api/search?chip={query[0]}&k=3&format=geojson")
    assert status == 200 and headers["Content-Type"] == "application/geo+json"
    assert "attachment" in headers["Content-Disposition"]
    fc = json.loads(raw)
    assert fc == json.loads(json.dumps(to_feature_collection(search(served_root,
                                                                    chip_ids=[query[0]], k=3))))
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 3


def test_search_with_a_tiny_bbox_returns_only_chips_there(server, served_root, changed_chips):
    changes = gpd.read_parquet(served_root / "analysis" / "changes.parquet")
    target = changes[changes["chip_id"] != changed_chips[0]].iloc[0]
    c = target.geometry.centroid
    bbox = f"{c.x - 1e-4},{c.y - 1e-4},{c.x + 1e-4},{c.y + 1e-4}"
    status, body = server.json(f"/api/search?chip={changed_chips[0]}&k=5&bbox={bbox}")
    assert status == 200 and body["results"]
    assert {r["chip_id"] for r in body["results"]} == {target["chip_id"]}


@pytest.mark.parametrize("query, status, message", [
    ("k=3", 400, "at least one query chip"),
    ("chip=X&k=-1", 400, "k=-1 must be between"),
    ("chip=X&format=csv", 400, "format='csv' must be json or geojson"),
    ("chip=33UUP_64_0000_0099", 409, "not in the search index"),
    ("chip=33UUP_64_0000_0000&start=yesterday", 400, "cannot parse date"),
])
def test_bad_search_requests_say_what_is_wrong(server, query, status, message):
    got, body = server.json("/api/search?" + query)
    assert got == status and message in body["error"]


def test_paths_outside_the_root_or_static_folder_are_refused(server):
    for path in ("/files/../run.json", "/files/%2e%2e/%2e%2e/etc/passwd", "/files/run.json",
                 "/files/meta/x.parquet", "/files//etc/hostname.png",
                 "/static/../data.py", "/static/%2e%2e/app.py", "/static/a%00b.js",
                 "/files/a%00b.png", "/nope"):
        status, body = _raw_get(server, path)
        assert status == 404, path
        assert b"run.json" not in body or b"error" in body


def test_requests_for_another_host_name_are_refused(server):
    port = server.server.server_address[1]
    status, body = _raw_get(server, "/api/run", {"Host": f"evil.example:{port}"})
    assert status == 403 and b"addressed to this machine" in body
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert _raw_get(server, "/api/run", {"Host": host})[0] == 200


def test_static_app_and_vendored_leaflet_are_served(server):
    status, headers, html = server.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"/static/vendor/leaflet/leaflet.js" in html and b"/static/app.js" in html
    for path in ("static/app.js", "static/app.css", "static/vendor/leaflet/leaflet.js",
                 "static/vendor/leaflet/leaflet.css", "static/vendor/leaflet/LICENSE"):
        status, _, body = server.get(path)
        assert status == 200 and body == (static_dir() / path[len("static/"):]).read_bytes()
    # the page itself never names an online host: everything comes from this server
    assert b"https://" not in html


def test_root_without_analysis_or_index_serves_what_exists(bare_server, bare_root):
    status, run = bare_server.json("/api/run")
    assert status == 200 and not run["analysis"] and not run["index"]
    missing = {m["stage"]: m["command"] for m in run["missing"]}
    assert missing == {"analyze": f"geofm analyze --root {bare_root.resolve()}",
                       "index": f"geofm index --root {bare_root.resolve()}"}
    assert run["counts"]["chips"] == 9 and run["counts"]["not_analysed"] == 9
    layer = bare_server.json("/api/chips")[1]
    assert set(layer["status"]) == {3} and layer["changes"] == []
    status, chip = bare_server.json("/api/chip?id=" + layer["chip_ids"][0])
    assert status == 200 and chip["timeline"] is None and chip["acquisitions"]
    status, body = bare_server.json(f"/api/search?chip={layer['chip_ids'][0]}")
    assert status == 409 and "geofm index --root" in body["error"]


def test_serving_never_writes_into_the_root(served_root, changed_chips, thread_server):
    before = _snapshot(served_root)
    srv = thread_server(served_root)
    try:
        for path in ("/", "/api/run", "/api/chips", "/api/chips/footprints.bin",
                     f"/api/chip?id={changed_chips[0]}", f"/api/search?chip={changed_chips[0]}",
                     f"/api/search?chip={changed_chips[0]}&format=geojson&centre=1"):
            assert srv.get(path)[0] == 200, path
    finally:
        srv.close()
    assert _snapshot(served_root) == before


def test_port_in_use_is_named(served_root):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError, match=rf"port {port} on 127.0.0.1 is already in "
                                                 "use.*--port") as info:
            make_server(served_root, host="127.0.0.1", port=port)
        assert info.value.port == port and info.value.host == "127.0.0.1"
