import numpy as np
import pytest

from geofm.synth.grid import make_canvas, second_tile_offset


def test_single_tile_canvas_covers_coarse_grids():
    canvas = make_canvas(512, 64, 1)
    (tile,) = canvas.tiles
    assert tile.code == "33UUP" and tile.origin == (300000.0, 5400000.0)
    assert tile.shape(10) == (512, 512) and tile.shape(20) == (256, 256)
    assert tile.shape(60) == (86, 86)  # 5160 m: covers the 5120 m extent
    assert canvas.rows % 6 == 0 and canvas.rows == canvas.cols == 516
    assert canvas.cells == (9, 9)
    rows, cols = tile.window(60)
    assert rows.stop <= canvas.shape(60)[0] and cols.stop <= canvas.shape(60)[1]
    assert tile.transform(60) == [60.0, 0.0, 300000.0, 0.0, -60.0, 5400000.0]


@pytest.mark.parametrize(("size", "chip"), [(512, 64), (96, 24), (256, 32), (128, 64)])
def test_second_tile_on_60m_and_chip_lattice(size, chip):
    off = second_tile_offset(size, chip)
    assert off % 6 == 0 and off % chip == 0
    canvas = make_canvas(size, chip, 2)
    second = canvas.tiles[1]
    assert second.code == "33UVP" and second.col_offset == off
    assert second.window(10)[1].stop <= canvas.cols
    if size > np.lcm(6, chip):
        assert off < size  # overlapping, like real MGRS tiles


def test_footprint_is_wgs84_polygon_around_the_tile():
    tile = make_canvas(128, 64, 1).tiles[0]
    ring, bbox = tile.footprint
    assert ring[0] == ring[-1] and len(ring) == 33
    west, south, east, north = bbox
    # 300 km easting in zone 33 (15 E) at 5400 km northing: about 12.3 E, 48.7 N.
    assert 12.2 < west < east < 12.4 and 48.6 < south < north < 48.8
    assert (east - west) * 73_000 == pytest.approx(1280, rel=0.05)  # ~73 km per degree
