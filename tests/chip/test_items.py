import json

import pytest

from geofm.chip.items import load_items, load_scenes, scene_from_dict
from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError, ItemError

POINT = {"type": "Point", "coordinates": [15.0, 50.5]}


def _item(**props):
    """A minimal located item dict with ``props`` merged into its properties."""
    return {"id": "x", "geometry": POINT,
            "properties": {"datetime": "2022-02-01T00:00:00Z", **props}}


def test_folder_collection_and_single_item_give_the_same_scenes(make_scene, tmp_path):
    first = make_scene("A", date="2021-06-01T10:00:00Z")
    make_scene("B", date="2021-05-01T10:00:00Z", baseline="04.00")
    folder = load_scenes(first.parent)
    assert [s.scene_id for s in folder] == ["B", "A"]  # sorted by date
    assert folder[1].hrefs["red"] == str(tmp_path / "data/assets/A/red.tif")
    fc = {"type": "FeatureCollection",
          "features": [json.loads(p.read_text()) for p in sorted(first.parent.iterdir())]}
    (tmp_path / "data" / "other").mkdir()  # hrefs are relative to the collection file
    (tmp_path / "data" / "other" / "collection.json").write_text(json.dumps(fc))
    coll = load_scenes(tmp_path / "data" / "other" / "collection.json")
    assert [(s.scene_id, s.hrefs) for s in coll] == [(s.scene_id, s.hrefs) for s in folder]
    (single,) = load_scenes(first)
    assert single.tile == "33UUP" and single.epsg == 32633 and single.date.year == 2021


def test_offset_rule():
    def scene(baseline, applied=False):
        return scene_from_dict(_item(**{"s2:processing_baseline": baseline,
                                        "earthsearch:boa_offset_applied": applied}),
                               base=None, source="t")

    assert scene("04.00").remove_offset and scene("05.10").remove_offset
    assert not scene("03.01").remove_offset
    assert not scene("04.00", applied=True).remove_offset


def test_tile_from_mgrs_fields_and_epsg_from_proj_code():
    s = scene_from_dict(_item(**{"mgrs:utm_zone": 3, "mgrs:latitude_band": "U",
                                 "mgrs:grid_square": "UP", "proj:code": "EPSG:32603"}),
                        base=None, source="t")
    assert (s.tile, s.epsg) == ("03UUP", 32603)


def test_missing_asset_message_names_item_and_fix(make_scene):
    (scene,) = load_scenes(make_scene("A"))
    with pytest.raises(ItemError, match="item 'A'.*no asset 'swir16'.*--bands"):
        scene.href("swir16")


def test_bad_inputs(tmp_path, make_scene):
    with pytest.raises(GeofmFileNotFoundError, match="does not exist"):
        load_scenes(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeofmValueError, match="no STAC items found"):
        load_scenes(tmp_path / "empty")
    item = make_scene("A")
    (item.parent / "copy.json").write_text(item.read_text())
    with pytest.raises(GeofmValueError, match="'A' appears twice"):
        load_scenes(item.parent)


def test_pystac_items_resolve_relative_hrefs(make_scene, tmp_path):
    import pystac

    path = make_scene("A")
    (scene,) = load_scenes([pystac.Item.from_file(str(path))])
    assert scene.hrefs["scl"] == str(tmp_path / "data/assets/A/scl.tif")
    assert scene.source == str(path)


# --- malformed items: an ItemError naming the item, its file, the field and the fix -------

def _with(item: dict, path: tuple, value) -> dict:
    """Copy of ``item`` with the field at ``path`` set to ``value`` (``...`` deletes)."""
    item = json.loads(json.dumps(item))
    where = item
    for key in path[:-1]:
        where = where[key]
    if value is ...:
        where.pop(path[-1], None)
    else:
        where[path[-1]] = value
    return item


@pytest.mark.parametrize(("path", "value", "field", "match"), [
    (("id",), "../../escape", "id",
     r"item '\.\./\.\./escape' \(f.json#2\): its id has a '\.' or '\.\.' path segment.*rename"),
    (("id",), "/abs/id", "id", r"item '/abs/id' .*its id is an absolute path"),
    (("id",), "a/../../b", "id", r"item 'a/\.\./\.\./b'.*its id has a '\.' or '\.\.' path segment"),
    (("id",), "..", "id", r"is '\.\.'"),
    (("id",), ".hidden", "id", r"starts with '\.'"),
    (("id",), "bad\nid", "id", r"control character"),
    (("id",), 123, "id", r"its id is not a string \(got int 123\)"),
    (("id",), "x" * 300, "id", r"longer than 200"),
    (("properties", "grid:code"), "MGRS-../../../X", "properties.grid:code",
     r"tile code '\.\./\.\./\.\./X'.*outside letters.*MGRS-33UUP"),
    (("properties", "grid:code"), "MGRS-33 UUP", "properties.grid:code", r"holds ' '"),
    (("properties", "grid:code"), 7, "properties.grid:code", r"not a string"),
    (("properties", "datetime"), "yesterday", "properties.datetime",
     r"'yesterday' is not an ISO 8601.*2021-06-01T10:00:00Z"),
    (("properties", "datetime"), ..., "properties.datetime", r"has no datetime"),
    (("properties", "proj:epsg"), "abc", "properties.proj:epsg",
     r"proj:epsg 'abc' is not an EPSG code.*32633"),
    (("properties", "proj:epsg"), ..., None, None),  # then proj:code is used
    (("properties", "s2:processing_baseline"), "new", "properties.s2:processing_baseline",
     r"'new' is not a version.*04\.00"),
    (("properties", "earthsearch:boa_offset_applied"), "false",
     "properties.earthsearch:boa_offset_applied", r"not true or false"),
    (("bbox",), ["a", 1, 2, 3], "bbox", r"bbox \['a', 1, 2, 3\] is not 4 \(or 6\) numbers"),
    (("bbox",), [1, 2, 3], "bbox", r"not 4 \(or 6\) numbers"),
    (("geometry",), None, "geometry", r"geometry is null.*WGS84 footprint"),
    (("geometry",), {"type": "Circle"}, "geometry", r"'Circle' is not a GeoJSON geometry"),
    (("properties",), ..., "properties", r"'properties' is null, not an object"),
    (("properties",), [1], "properties", r"'properties' is a list, not an object"),
    (("assets",), [{"href": "a.tif"}], "assets", r"'assets' is a list, not an object"),
    (("assets", "red"), {"type": "image/tiff"}, "assets.red.href",
     r"asset 'red' has no href.*path or URL"),
    (("assets", "red"), "red.tif", "assets.red", r"asset 'red' is a string, not an object"),
])
def test_malformed_item_fields_raise_item_errors_with_fields(path, value, field, match):
    good = _item(**{"proj:code": "EPSG:32633", "proj:epsg": 32633, "grid:code": "MGRS-33UUP"})
    good["assets"] = {"red": {"href": "red.tif"}}
    good["bbox"] = [14.9, 50.4, 15.1, 50.6]
    item = _with(good, path, value)
    if match is None:
        assert scene_from_dict(item, base=None, source="f.json").epsg == 32633
        return
    with pytest.raises(ItemError, match=match) as info:
        scene_from_dict(item, base=None, source="f.json#2", path="f.json")
    err = info.value
    assert (err.field, err.path) == (field, "f.json")
    assert "f.json#2" in str(err)  # the file (and entry) is named
    assert err.item == (str(value) if field == "id" else "x")


def test_safe_ids_are_kept_and_unusual_ids_accepted():
    for item_id in ("S2A_33UUP_20210601_0_L2A", "S2A/2021", "a b:c", "100%"):
        assert scene_from_dict(dict(_item(), id=item_id), base=None, source="t").scene_id \
            == item_id


def test_items_file_that_is_a_json_list_is_accepted(make_scene, tmp_path):
    a, b = make_scene("A"), make_scene("B", date="2021-05-01T10:00:00Z")
    listing = tmp_path / "data" / "items" / "list.json"
    listing.write_text(json.dumps([json.loads(a.read_text()), json.loads(b.read_text())]))
    assert [s.scene_id for s in load_scenes(listing)] == ["B", "A"]


@pytest.mark.parametrize(("content", "match"), [
    (b"\xff\xfe{not utf8", r"is not UTF-8 text.*re-save it as UTF-8"),
    (b"{oops", r"is not valid JSON"),
    (b'"a string"', r"neither a STAC Item.*\(a string\)"),
    (b'{"type": "Catalog"}', r"neither a STAC Item.*type 'Catalog'"),
    (b'{"type": "FeatureCollection", "features": 3}', r"'features' is a number"),
])
def test_unreadable_items_file_fails_alone_in_a_folder(make_scene, tmp_path, content, match):
    make_scene("A")
    bad = tmp_path / "data" / "items" / "bad.json"
    bad.write_bytes(content)
    loaded = load_items(bad.parent)
    assert [s.scene_id for s in loaded.scenes] == ["A"]
    (err,) = loaded.errors
    assert err.path == str(bad) and err.item is None and str(bad) in str(err)
    with pytest.raises(ItemError, match=match):
        load_items(bad).require_scenes()  # the only file: the whole input is unusable
    with pytest.raises(ItemError, match=match):
        load_scenes(bad.parent)  # the strict loader raises the first error


def test_require_scenes_summarises_when_every_item_is_bad(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"type": "Feature", "id": f"../{name}", "geometry": POINT, "properties": {}}))
    loaded = load_items(tmp_path)
    assert not loaded.scenes and [e.item for e in loaded.errors] == ["../a", "../b"]
    with pytest.raises(ItemError, match=r"none of the 2 items.*\n.*'\.\./a'.*\n.*'\.\./b'"):
        loaded.require_scenes()


def test_in_memory_items_that_are_not_objects_are_item_errors():
    loaded = load_items([_item(), 5])
    assert [s.scene_id for s in loaded.scenes] == ["x"]
    assert "in-memory item #1" in str(loaded.errors[0]) and "not a JSON object" in str(
        loaded.errors[0])


def test_item_error_keeps_its_fields_when_pickled():
    import pickle

    err = pickle.loads(pickle.dumps(ItemError("m", item="i", path="p", field="f", asset="a")))
    assert (str(err), err.item, err.path, err.field, err.asset) == ("m", "i", "p", "f", "a")


def test_an_item_without_id_is_named_by_its_file():
    item = _item()
    del item["id"]
    with pytest.raises(ItemError, match=r"STAC item in f.json#0: has no 'id'") as info:
        scene_from_dict(item, base=None, source="f.json#0", path="f.json")
    assert (info.value.item, info.value.path, info.value.field) == (None, "f.json", "id")


def test_an_asset_that_cannot_be_opened_is_a_raster_error_with_fields(tmp_path):
    """Missing vs corrupt local COGs: told apart by the disk, carried as fields."""
    import pickle

    from geofm.chip.scene import _open
    from geofm.exceptions import RasterError

    (tmp_path / "red.tif").write_text("not a tiff")
    scene = scene_from_dict({
        "type": "Feature", "id": "S2A_X", "collection": "sentinel-2-l2a",
        "geometry": {"type": "Point", "coordinates": [15, 50]},
        "properties": {"datetime": "2021-06-01T10:00:00Z", "proj:epsg": 32633},
        "assets": {"red": {"href": "red.tif"}, "blue": {"href": "gone.tif"}}},
        base=tmp_path, source="mem")
    for key, reason, text in (("blue", "missing", "file does not exist"),
                              ("red", "corrupt", "truncated or corrupt")):
        with pytest.raises(RasterError, match=text) as info:
            _open(scene, key)
        err = pickle.loads(pickle.dumps(info.value))
        assert (err.item, err.asset, err.reason) == ("S2A_X", key, reason)
        assert err.path == str(tmp_path / f"{'gone' if key == 'blue' else 'red'}.tif")
