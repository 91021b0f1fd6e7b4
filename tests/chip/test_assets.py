from geofm.chip.assets import resolve_bands
from geofm.sensors import get_sensor

S2 = get_sensor("sentinel-2-l2a")


def _resolve(assets):
    return resolve_bands(assets, {k: f"/x/{k}" for k in assets}, S2)


def test_metadata_beats_keys_and_ranking_rules():
    assets = {
        # a key that looks like blue but whose metadata says red
        "blue": {"href": "a", "eo:bands": [{"name": "B04", "common_name": "red"}]},
        "b2_coarse": {"href": "b", "gsd": 60, "bands": [{"name": "B02"}]},
        "b2_fine": {"href": "c.jp2", "gsd": 10, "type": "image/jp2",
                    "bands": [{"name": "B02"}]},
        "b2_fine_cog": {"href": "d.tif", "gsd": 10, "type": "image/tiff",
                        "bands": [{"name": "B02"}], "raster:bands": [
                            {"scale": 0.0001, "offset": -0.1, "nodata": 0}]},
        "preview": {"href": "e", "roles": ["thumbnail"], "eo:bands": [{"name": "B03"}]},
        "SCL_20m": {"href": "f", "roles": ["data"]},
        "SCL_60m": {"href": "g", "roles": ["data"]},
    }
    found = _resolve(assets)
    assert found["red"].key == "blue" and found["blue"].key == "b2_fine_cog"
    assert found["blue"].offset == -0.1 and found["blue"].how == "band name B02"
    assert "green" not in found  # only a thumbnail holds it
    assert found["scl"].key == "SCL_20m" and found["scl"].resolution == 20


def test_ambiguous_common_names_are_not_used():
    # Earth Search / PC call B05, B06, B07 all "rededge": without names nothing is guessed
    assets = {k: {"href": k, "eo:bands": [{"common_name": "rededge"}]} for k in ("x", "y", "z")}
    assert not {"rededge1", "rededge2", "rededge3"} & set(_resolve(assets))


def test_stac_1_1_fields_on_the_asset():
    assets = {"B8A_20m": {"href": "h", "bands": [{"name": "B8A", "eo:common_name": "nir08"}],
                          "nodata": 0, "data_type": "uint16", "raster:scale": 0.0001,
                          "raster:offset": -0.1}}
    band = _resolve(assets)["nir08"]
    assert (band.scale, band.offset, band.nodata, band.data_type, band.resolution) == \
        (0.0001, -0.1, 0, "uint16", 20)
