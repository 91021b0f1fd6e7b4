import datetime as dt

from geofm.synth.grid import make_canvas
from geofm.synth.stac import asset_href, item_id, make_item


def _item(date, offset, baseline):
    tile = make_canvas(128, 64, 2).tiles[1]
    return make_item(tile=tile, date=date, time="10:06:10.000000Z", platform="sentinel-2b",
                     baseline=baseline, baseline_offset=offset, cloud_cover=12.5,
                     nodata_percentage=0.0)


def test_item_id_and_hrefs():
    tile = make_canvas(128, 64, 1).tiles[0]
    assert item_id(tile, dt.date(2021, 1, 5), "sentinel-2b") == "S2B_33UUP_20210105_0_L2A"
    assert asset_href("X", "red") == "../assets/X/red.tif"


def test_item_properties_and_assets():
    item = _item(dt.date(2022, 3, 1), 1000, "04.00")
    p = item["properties"]
    assert item["id"] == "S2B_33UVP_20220301_0_L2A"
    assert p["grid:code"] == "MGRS-33UVP" and p["mgrs:grid_square"] == "VP"
    assert p["datetime"] == "2022-03-01T10:06:10.000000Z" and p["eo:cloud_cover"] == 12.5
    assert p["proj:epsg"] == 32633 and p["proj:code"] == "EPSG:32633"
    red, swir, coastal, scl = (item["assets"][k] for k in ("red", "swir16", "coastal", "scl"))
    assert red["raster:bands"][0]["offset"] == -0.1 and red["raster:bands"][0]["scale"] == 1e-4
    assert red["proj:shape"] == [128, 128] and swir["proj:shape"] == [64, 64]
    assert coastal["proj:shape"] == [22, 22] and coastal["proj:transform"][0] == 60.0
    x0 = red["proj:transform"][2]
    assert swir["proj:transform"][2] == coastal["proj:transform"][2] == x0
    assert scl["raster:bands"][0]["data_type"] == "uint8" and "eo:bands" not in scl
    assert item["assets"]["rededge2"]["eo:bands"][0]["common_name"] == "rededge"
    before = _item(dt.date(2021, 3, 1), 0, "02.09")
    assert before["assets"]["red"]["raster:bands"][0]["offset"] == 0.0
