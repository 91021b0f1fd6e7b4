import numpy as np

from geofm.chip.thumbs import rgb_indices, to_rgb8, write_png


def test_rgb_order_and_fixed_stretch():
    bands = ["blue", "green", "red", "nir"]
    assert rgb_indices(bands) == [2, 1, 0]
    px = np.stack([np.full((4, 4), v, np.uint16) for v in (0, 1500, 3000, 9000)])
    px[0, 0, 0] = 7
    mask = np.zeros((4, 4), bool)
    mask[3, 3] = True
    rgb = to_rgb8(px, rgb_indices(bands), (0.0, 3000.0), nodata_mask=mask)
    assert rgb.shape == (4, 4, 3)
    assert tuple(rgb[1, 1]) == (255, 127, 0)
    assert tuple(rgb[3, 3]) == (0, 0, 0)


def test_large_chips_shrink_by_block_mean(tmp_path):
    from PIL import Image

    px = np.zeros((3, 256, 256), np.uint16)
    px[:, :, 128:] = 3000
    px[:, 0, 0] = 3000  # one bright pixel in the first 2 x 2 block -> quarter grey
    rgb = to_rgb8(px, [0, 1, 2], (0.0, 3000.0))
    assert rgb.shape == (128, 128, 3)
    assert rgb[0, 0, 0] == 63 and rgb[5, 63, 0] == 0 and rgb[5, 64, 0] == 255
    write_png(tmp_path / "t.png", rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "t.png")), rgb)
