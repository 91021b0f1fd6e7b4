import sys

import numpy as np

from geofm.analyze.plots import Timeline, plot_timeline


def test_timeline_png_with_thumbnails(tmp_path):
    from PIL import Image

    before, after = tmp_path / "b" / "x.png", tmp_path / "a" / "x.png"
    for p, colour in ((before, (0, 90, 0)), (after, (180, 140, 90))):
        p.parent.mkdir()
        Image.new("RGB", (16, 16), colour).save(p)
    days = 18628.0 + np.arange(20) * 30.0
    signal = np.sin(2 * np.pi * days / 365.25)
    signal[15:] += 3
    had_pyplot = "matplotlib.pyplot" in sys.modules
    out = plot_timeline(Timeline(
        chip_id="c", days=days, signal=signal, baseline=np.arange(20) < 12,
        anomaly=np.arange(20) >= 15, coef=np.r_[1.0, np.zeros(8)], intercept=0.0, rmse=0.1,
        threshold=3.0, status="change", change_day=float(days[15]), signal_name="pc1",
        before=before, after=after), tmp_path / "plots" / "c.png")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[1] > 500  # timeline + thumbnail row
    no_thumbs = plot_timeline(Timeline(
        chip_id="d", days=days, signal=signal, baseline=np.arange(20) < 12,
        anomaly=np.zeros(20, bool), coef=np.zeros(9), intercept=0.0, rmse=1.0, threshold=3.0,
        status="no change", change_day=None, signal_name="score", score=True),
        tmp_path / "plots" / "d.png")
    with Image.open(no_thumbs) as img:
        assert img.size[1] < 500
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot  # no pyplot, no global state
