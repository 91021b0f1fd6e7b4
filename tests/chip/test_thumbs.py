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


def test_encode_png_round_trips_through_pillow(tmp_path):
    import io

    from PIL import Image

    from geofm.chip.thumbs import encode_png

    rng = np.random.default_rng(2)
    for h, w in ((1, 1), (5, 3), (37, 64), (128, 128)):
        rgb = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
        image = Image.open(io.BytesIO(encode_png(rgb)))
        assert image.mode == "RGB" and image.size == (w, h)
        np.testing.assert_array_equal(np.asarray(image), rgb)
    smooth = np.broadcast_to(np.arange(128, dtype=np.uint8)[None, :, None], (128, 128, 3))
    write_png(tmp_path / "s.png", smooth)
    assert (tmp_path / "s.png").stat().st_size < 128 * 128 * 3 / 4  # compressed
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "s.png")), smooth)


def test_stretch_table_equals_the_float_stretch():
    rng = np.random.default_rng(4)
    for dtype, stretch in ((np.uint16, (0.0, 3000.0)), (np.uint16, (7273.0, 18182.0)),
                           (np.uint8, (0.0, 255.0)), (np.uint16, (13.7, 2999.1))):
        px = rng.integers(0, np.iinfo(dtype).max, size=(4, 24, 16)).astype(dtype)
        mask = rng.random((24, 16)) < 0.2
        lo, hi = stretch
        expected = px[[2, 1, 0]].astype(np.float32)
        expected[:, mask] = lo
        expected = np.clip((expected - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
        got = to_rgb8(px, [2, 1, 0], stretch, nodata_mask=mask)
        np.testing.assert_array_equal(got, expected.transpose(1, 2, 0))
        # the float path (other dtypes) gives the same picture
        np.testing.assert_array_equal(
            to_rgb8(px.astype(np.int32), [2, 1, 0], stretch, nodata_mask=mask), got)
