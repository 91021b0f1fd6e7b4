"""Read the synthetic output back with pystac and rasterio and check it against truth."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from geofm.exceptions import GeofmError, GeofmFileExistsError, GeofmValueError
from geofm.sensors import get_sensor
from geofm.synth import synthesize

S2 = get_sensor("sentinel-2-l2a")
ASSET_KEYS = {"blue", "green", "red", "nir", "rededge1", "rededge2", "rededge3", "nir08",
              "swir16", "swir22", "coastal", "nir09", "scl"}
CLOUD_SCL = (8, 9, 10)
CLEAR_SCL = (4, 5, 6)
#: Tiny run for tests that need their own output.
TINY = dict(size=64, chip_size=32, n_dates=6, start="2021-11-01", cadence_days=40,
            n_events=1)


def _truth(root: Path) -> dict:
    return json.loads((root / "truth.json").read_text())


def _items(root: Path) -> list[pystac.Item]:
    items = [pystac.Item.from_file(str(p)) for p in sorted((root / "items").glob("*.json"))]
    return sorted(items, key=lambda it: it.datetime)


def _read(item: pystac.Item, key: str) -> np.ndarray:
    with rasterio.open(item.assets[key].get_absolute_href()) as ds:
        return ds.read(1)


def _label(root: Path, tile: str) -> np.ndarray:
    truth = _truth(root)
    with rasterio.open(root / truth["tiles"][tile]["label_raster"]) as ds:
        return ds.read(1)


def _up(a: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest upsampling of a coarse grid onto the 10 m grid (shared corner)."""
    return np.repeat(np.repeat(a, factor, 0), factor, 1)[:shape[0], :shape[1]]


def test_items_have_earth_search_shape(synth_dir):
    truth = _truth(synth_dir)
    items = _items(synth_dir)
    assert len(items) == 14 == len(truth["items"])
    for item in items:
        p = item.properties
        assert set(item.assets) == ASSET_KEYS
        assert item.id == f"S2{p['platform'][-1].upper()}_33UUP_{item.datetime:%Y%m%d}_0_L2A"
        # Raw JSON carries both; pystac migrates projection v1.1 items to proj:code only,
        # exactly as it does with real Earth Search items.
        raw = json.loads((synth_dir / "items" / f"{item.id}.json").read_text())["properties"]
        assert raw["proj:epsg"] == 32633 and raw["proj:code"] == "EPSG:32633"
        assert p["proj:code"] == "EPSG:32633"
        assert p["grid:code"] == "MGRS-33UUP"
        assert (p["mgrs:utm_zone"], p["mgrs:latitude_band"], p["mgrs:grid_square"]) == (
            33, "U", "UP")
        assert p["constellation"] == "sentinel-2" and p["earthsearch:boa_offset_applied"] is False
        after = item.datetime.date() >= dt.date(2022, 1, 25)
        assert (p["s2:processing_baseline"] == "04.00") == after
        for key, asset in item.assets.items():
            assert asset.href == f"../assets/{item.id}/{key}.tif"
            assert Path(asset.get_absolute_href()).is_file()
            band = asset.extra_fields["raster:bands"][0]
            assert band["nodata"] == 0
            if key != "scl":
                assert band["data_type"] == "uint16" and band["scale"] == 1e-4
                assert band["offset"] == (-0.1 if after else 0.0)
                assert asset.extra_fields["eo:bands"][0]["name"] == key
        # Footprint: WGS84, around 15 deg E minus a few, 48.7 N; contains the tile centre.
        west, south, east, north = item.bbox
        assert 12 < west < east < 13 and 48 < south < north < 49


def test_rasters_grid_dtype_nodata_per_band(synth_dir):
    truth = _truth(synth_dir)
    x0, y0 = truth["tiles"]["33UUP"]["origin"]
    assert x0 % 60 == 0 and y0 % 60 == 0
    item = _items(synth_dir)[0]
    for key, asset in item.assets.items():
        res = S2.band(key).resolution
        with rasterio.open(asset.get_absolute_href()) as ds:
            assert ds.crs.to_epsg() == 32633
            assert ds.res == (res, res)
            assert (ds.transform.c, ds.transform.f) == (x0, y0)  # shared upper-left corner
            assert ds.nodata == 0
            assert ds.dtypes[0] == ("uint8" if key == "scl" else "uint16")
            assert list(ds.shape) == asset.extra_fields["proj:shape"]
            assert list(ds.transform)[:6] == asset.extra_fields["proj:transform"]
            assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            # Coarser grids cover the 10 m extent: 128 px -> 64 at 20 m, 22 at 60 m.
            assert ds.width == -(-128 * 10 // int(res))


def test_scl_matches_cloud_pixels_and_cloud_cover(synth_dir):
    label = _label(synth_dir, "33UUP")
    cloudy_blue, clear_blue, n_cloudy_items = [], [], 0
    for item in _items(synth_dir):
        scl = _read(item, "scl")
        valid = scl != 0
        frac = np.isin(scl, CLOUD_SCL).sum() / max(valid.sum(), 1)
        assert item.properties["eo:cloud_cover"] == pytest.approx(100 * frac, abs=0.01)
        scl10 = _up(scl, 2, label.shape)
        blue = _read(item, "blue").astype(float)
        # Same land-cover class on both sides of the comparison.
        for code in np.unique(label):
            cls = label == code
            cloudy = cls & np.isin(scl10, (8, 9))
            clear = cls & np.isin(scl10, CLEAR_SCL)
            if cloudy.sum() > 50 and clear.sum() > 50:
                cloudy_blue.append(np.median(blue[cloudy]))
                clear_blue.append(np.median(blue[clear]))
        n_cloudy_items += frac > 0.5
    assert n_cloudy_items >= 1  # the seed has overcast dates
    assert len(cloudy_blue) >= 3
    assert np.all(np.array(cloudy_blue) > np.array(clear_blue) + 2000)


def test_shadows_are_dark(synth_dir):
    label20 = _label(synth_dir, "33UUP")[::2, ::2]
    darker = []
    for item in _items(synth_dir):
        scl = _read(item, "scl")
        offset = 1000 if item.properties["s2:processing_baseline"] >= "04.00" else 0
        nir = _read(item, "nir08").astype(float) - offset
        for code in np.unique(label20):
            lit = (scl == 4) & (label20 == code)
            shade = (scl == 3) & (label20 == code)
            if shade.sum() > 20 and lit.sum() > 20:
                darker.append(np.median(nir[shade]) / np.median(nir[lit]))
    assert darker and max(darker) < 0.75


def test_partial_swath_blanks_every_band(synth_dir):
    partial = [it for it in _items(synth_dir) if it.properties["s2:nodata_pixel_percentage"] > 0]
    assert partial  # seed 0 has partial-swath dates
    for item in partial:
        blue = _read(item, "blue")
        scl = _read(item, "scl")
        nodata10 = blue == 0
        assert 0.1 < nodata10.mean() < 0.9
        for key in ("red", "nir"):
            np.testing.assert_array_equal(_read(item, key) == 0, nodata10)
        # 20 m: a nodata SCL pixel has nodata in swir16 too, and vice versa.
        np.testing.assert_array_equal(_read(item, "swir16") == 0, scl == 0)
        # The 10 m and 20 m edges agree except along the diagonal edge itself.
        assert np.mean(_up(scl == 0, 2, blue.shape) != nodata10) < 0.03


def test_baseline_offset_adds_1000(synth_dir):
    truth = _truth(synth_dir)
    label = _label(synth_dir, "33UUP")
    items = _items(synth_dir)
    switch = dt.date(2022, 1, 25)
    before = [it for it in items if it.datetime.date() < switch][-2:]
    after = [it for it in items if it.datetime.date() >= switch][:2]
    event_cells = {(e["row"], e["col"]) for e in truth["events"]}
    stable = np.isin(label, (1, 4, 5, 6))  # no crop phenology
    for r, c in event_cells:
        stable[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64] = False
    diffs = []
    for b_item in before:
        for a_item in after:
            clear = (stable & np.isin(_up(_read(b_item, "scl"), 2, label.shape), CLEAR_SCL)
                     & np.isin(_up(_read(a_item, "scl"), 2, label.shape), CLEAR_SCL))
            if clear.sum() < 500:
                continue
            red_b = _read(b_item, "red").astype(float)[clear]
            red_a = _read(a_item, "red").astype(float)[clear]
            diffs.append(np.median(red_a - red_b))
            # Applying the item's own offset/scale removes the jump.
            off_a = a_item.assets["red"].extra_fields["raster:bands"][0]["offset"]
            off_b = b_item.assets["red"].extra_fields["raster:bands"][0]["offset"]
            refl = np.median((red_a * 1e-4 + off_a) - (red_b * 1e-4 + off_b))
            assert abs(refl) < 0.02
    assert diffs
    assert all(850 < d < 1150 for d in diffs)


def test_label_raster_and_cells_match_truth(synth_dir):
    truth = _truth(synth_dir)
    codes = {name: int(code) for code, name in truth["classes"].items()}
    assert sorted(codes) == ["bare", "cropland", "forest", "pasture", "urban", "water"]
    blue_item = _items(synth_dir)[0]
    with rasterio.open(synth_dir / truth["tiles"]["33UUP"]["label_raster"]) as ds, \
            rasterio.open(blue_item.assets["blue"].get_absolute_href()) as ref:
        label = ds.read(1)
        assert ds.transform == ref.transform and ds.crs == ref.crs and ds.shape == ref.shape
        assert ds.dtypes[0] == "uint8" and ds.nodata == 0
    assert set(np.unique(label)) <= set(range(1, 7))
    cs = truth["chip_size"]
    x0, y0 = truth["tiles"]["33UUP"]["origin"]
    assert len(truth["cells"]) == 4
    for cell in truth["cells"]:
        r, c = cell["row"], cell["col"]
        block = label[r * cs:(r + 1) * cs, c * cs:(c + 1) * cs]
        assert np.mean(block == codes[cell["class"]]) >= 0.85
        assert (cell["minx"], cell["maxy"]) == (x0 + c * cs * 10, y0 - r * cs * 10)
        assert cell["maxx"] - cell["minx"] == cs * 10
    assert truth["label_date"] < min(e["date"] for e in truth["events"])


def _cell_mean(item: pystac.Item, key: str, r: int, c: int, cs: int) -> tuple[float, float]:
    """(mean DN minus the item's offset, clear share) of cell (r, c) at 20 m."""
    f = 2
    a = _read(item, key).astype(float)[r * cs // f:(r + 1) * cs // f,
                                      c * cs // f:(c + 1) * cs // f]
    scl = _read(item, "scl")[r * cs // f:(r + 1) * cs // f, c * cs // f:(c + 1) * cs // f]
    clear = np.isin(scl, CLEAR_SCL)
    offset = 1000 if item.properties["s2:processing_baseline"] >= "04.00" else 0
    return (float(a[clear].mean() - offset) if clear.any() else np.nan, float(clear.mean()))


def test_planted_event_changes_the_cell_and_nothing_else(synth_dir):
    truth = _truth(synth_dir)
    cs = truth["chip_size"]
    (event,) = truth["events"]
    assert event["sequence"] == ["forest", "bare", "pasture"]
    items = _items(synth_dir)
    ids = [it.id for it in items]
    k = ids.index(event["first_changed_item"])
    assert items[k].datetime.date().isoformat() == event["first_changed_date"]
    assert items[k - 1].datetime.date().isoformat() < event["date"] <= event["first_changed_date"]
    assert len(items) - k >= 3
    stable_forest = [(cell["row"], cell["col"]) for cell in truth["cells"]
                     if cell["class"] == "forest" and cell["event"] is None]
    assert stable_forest
    (cell,) = [c for c in truth["cells"] if c["event"] is not None]
    assert (cell["row"], cell["col"], cell["class"]) == (event["row"], event["col"], "forest")

    def clear_swir(r, c, subset):
        vals = [_cell_mean(it, "swir16", r, c, cs) for it in subset]
        return [v for v, share in vals if share > 0.9]

    pre_e = clear_swir(event["row"], event["col"], items[:k])
    post_e = clear_swir(event["row"], event["col"], items[k:])
    pre_s = clear_swir(*stable_forest[0], items[:k])
    post_s = clear_swir(*stable_forest[0], items[k:])
    assert pre_e and post_e and pre_s and post_s
    # Forest SWIR ~1400 DN; bare soil ~3300, pasture ~2000-2400.
    assert np.mean(post_e) - np.mean(pre_e) > 500
    assert abs(np.mean(post_s) - np.mean(pre_s)) < 250


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = synthesize(tmp_path / "a", seed=3, **TINY)
    b = synthesize(tmp_path / "b", seed=3, **TINY)
    c = synthesize(tmp_path / "c", seed=4, **TINY)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 6 * 14 + 2
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    item = _items(c)[0]
    first_a = _items(a)[0]
    assert not np.array_equal(_read(item, "red"), _read(first_a, "red"))
    assert _truth(a)["cells"] != _truth(c)["cells"] or _truth(a)["events"] != _truth(c)["events"]


def test_two_tiles_overlap_with_identical_ground(tmp_path):
    out = synthesize(tmp_path / "two", seed=1, size=96, chip_size=24, n_dates=3, n_events=0,
                     n_tiles=2)
    truth = _truth(out)
    assert sorted(truth["tiles"]) == ["33UUP", "33UVP"]
    (xa, ya), (xb, yb) = truth["tiles"]["33UUP"]["origin"], truth["tiles"]["33UVP"]["origin"]
    assert ya == yb and 0 < xb - xa < 960 and (xb - xa) % 60 == 0
    items = _items(out)
    by_tile = {t: [it for it in items if it.properties["grid:code"] == f"MGRS-{t}"]
               for t in truth["tiles"]}
    assert [it.datetime for it in by_tile["33UUP"]] == [it.datetime for it in by_tile["33UVP"]]
    shift = int(xb - xa) // 10
    for ia, ib in zip(by_tile["33UUP"], by_tile["33UVP"], strict=True):
        assert ia.id != ib.id
        np.testing.assert_array_equal(_read(ia, "nir")[:, shift:], _read(ib, "nir")[:, :-shift])
        np.testing.assert_array_equal(_read(ia, "scl")[:, shift // 2:],
                                      _read(ib, "scl")[:, :-shift // 2])
    la, lb = _label(out, "33UUP"), _label(out, "33UVP")
    np.testing.assert_array_equal(la[:, shift:], lb[:, :-shift])


def test_refuses_non_empty_folder_unless_overwrite(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "something.txt").write_text("x")
    with pytest.raises(GeofmFileExistsError, match=r"not empty; use --overwrite"):
        synthesize(out, **TINY)
    synthesize(out, overwrite=True, **TINY)
    assert (out / "truth.json").is_file() and (out / "something.txt").is_file()
    # Overwriting with another seed leaves no stale items behind.
    synthesize(out, overwrite=True, seed=9, **{**TINY, "n_dates": 5, "cadence_days": 60})
    assert len(list((out / "items").glob("*.json"))) == 5


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(size=100, chip_size=64), r"size=100 is not a multiple of chip_size=64; pass --size 64"),
    (dict(size=32, chip_size=64), r"size=32 is smaller than chip_size=64; pass --size 64"),
    (dict(n_dates=0), r"n_dates must be at least 1.*--n-dates"),
    (dict(start="2021-13-01"), r"start='2021-13-01' is not a date; pass --start YYYY-MM-DD"),
    (dict(size=128, n_events=3), r"n_events=3 is more than the forest cells.*--n-events 2"),
    (dict(n_dates=4, n_events=1), r"n_dates=4 is too few to place events.*--n-dates 5"),
    (dict(n_tiles=3), r"n_tiles must be 1 or 2"),
    (dict(seed=-1), r"seed must be a non-negative integer"),
    (dict(cadence_days=0), r"cadence_days must be at least 1 day"),
    (dict(chip_size=4, size=8), r"chip_size=4 is too small"),
])
def test_bad_arguments_say_what_to_pass(tmp_path, kwargs, match):
    with pytest.raises(GeofmValueError, match=match) as info:
        synthesize(tmp_path / "bad", **kwargs)
    assert isinstance(info.value, GeofmError) and isinstance(info.value, ValueError)
    assert not (tmp_path / "bad").exists()  # nothing written before validation


def test_cleared_cell_regrows_to_young_pasture_brighter_than_mature(tmp_path):
    from geofm.synth import spectra
    from geofm.synth.landcover import FOREST, PASTURE

    out = synthesize(tmp_path / "s", seed=0, size=128, n_dates=36, n_events=1, chip_size=64)
    truth = _truth(out)
    (event,) = truth["events"]
    forest = next((c["row"], c["col"]) for c in truth["cells"]
                  if c["class"] == "forest" and c["event"] is None)
    dormant, peak = spectra.spectra_tables()
    j = spectra.BANDS.index("red")
    excess = []
    for item in _items(out):
        day = item.datetime.date()
        if day.isoformat() < event["regrowth_date"]:
            continue
        cells = [_cell_mean(item, "scl", r, c, 64)[1] for r, c in
                 ((event["row"], event["col"]), forest)]
        if min(cells) < 0.99:
            continue
        red = _read(item, "red").astype(float)
        mean = [red[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64].mean()
                for r, c in ((event["row"], event["col"]), forest)]
        doy = spectra.day_of_year(day)
        table = {code: dormant[code, j] + spectra.seasonal_weight(code, doy)
                 * (peak[code, j] - dormant[code, j]) for code in (FOREST, PASTURE)}
        # Mature pasture would sit (pasture - forest) above the forest cell; young
        # pasture shows 20 % bare soil (~1950 DN red) on top of that.
        excess.append(mean[0] - mean[1] - (table[PASTURE] - table[FOREST]))
    assert excess
    assert min(excess) > 150
