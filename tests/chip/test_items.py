import json

import pytest

from geofm.chip.items import load_scenes
from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError, ItemError


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
    from geofm.chip.items import scene_from_dict

    def scene(baseline, applied=False):
        return scene_from_dict({"id": "x", "properties": {
            "datetime": "2022-02-01T00:00:00Z", "s2:processing_baseline": baseline,
            "earthsearch:boa_offset_applied": applied}}, base=None, source="t")

    assert scene("04.00").remove_offset and scene("05.10").remove_offset
    assert not scene("03.01").remove_offset
    assert not scene("04.00", applied=True).remove_offset


def test_tile_from_mgrs_fields_and_epsg_from_proj_code():
    from geofm.chip.items import scene_from_dict

    s = scene_from_dict({"id": "x", "properties": {
        "datetime": "2022-02-01T00:00:00Z", "mgrs:utm_zone": 3, "mgrs:latitude_band": "U",
        "mgrs:grid_square": "UP", "proj:code": "EPSG:32603"}}, base=None, source="t")
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
