import numpy as np

from geofm.synth import clouds


def test_schedule_has_clear_partly_cloudy_and_overcast_dates():
    sky = clouds.schedule(0, 2000)
    amount = np.array([s.amount for s in sky])
    assert 0.07 < np.mean(amount == 1.0) < 0.13
    assert 0.36 < np.mean(amount < 0.05) < 0.48
    assert 0.11 < np.mean([s.swath > 0 for s in sky]) < 0.19
    assert sky == clouds.schedule(0, 2000) and sky != clouds.schedule(1, 2000)


def test_cloud_field_covers_the_drawn_amount_and_shadow_is_displaced():
    sky = clouds.DateSky(amount=0.3, cirrus=False, swath=0.0)
    f = clouds.sky_fields(sky, (192, 192), seed=0, index=0, chip_size=64)
    assert abs(np.mean(f.opacity > 0.5) - 0.3) < 0.05
    assert f.opacity.min() >= 0 and f.opacity.max() <= 1
    # Shadows fall where there is no cloud, and there are some.
    shaded = f.shadow > 0.5
    assert shaded.mean() > 0.02 and np.all(f.opacity[shaded] < 0.5)
    overcast = clouds.sky_fields(clouds.DateSky(1.0, False, 0.0), (60, 60), seed=0, index=1,
                                 chip_size=64)
    assert overcast.opacity.min() > 0.7
    clear = clouds.sky_fields(clouds.DateSky(0.0, False, 0.0), (60, 60), seed=0, index=2,
                              chip_size=64)
    assert clear.opacity.max() == 0 and clear.shadow.max() == 0


def test_swath_edge_is_the_same_line_at_every_resolution():
    sky = clouds.DateSky(amount=0.0, cirrus=False, swath=0.4)
    m10 = clouds.swath_mask(sky, (120, 120), 1, seed=0, index=3)
    m60 = clouds.swath_mask(sky, (120, 120), 6, seed=0, index=3)
    assert abs(m10.mean() - 0.4) < 0.02
    up = np.repeat(np.repeat(m60, 6, 0), 6, 1)
    assert np.mean(up != m10) < 0.08  # they differ only along the edge
    assert clouds.swath_mask(clouds.DateSky(0.0, False, 0.0), (12, 12), 1, seed=0,
                             index=0) is None


def test_scl_precedence():
    op = np.array([[0.9, 0.5, 0.0, 0.0, 0.0]], np.float32)
    sh = np.array([[0.0, 0.0, 0.9, 0.0, 0.0]], np.float32)
    ci = np.array([[0.0, 0.0, 0.0, 0.5, 0.0]], np.float32)
    clear = np.array([[4, 4, 4, 4, 6]], np.uint8)
    np.testing.assert_array_equal(clouds.scl_clouds(op, sh, ci, clear), [[9, 8, 3, 10, 6]])
