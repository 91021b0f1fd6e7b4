import sys
from dataclasses import replace

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


def _timeline(seed, chip_id, *, change, score=False, scale=1.0, before=None, after=None):
    """A seeded 60-observation timeline; ``change``: a step from observation 40."""
    rng = np.random.default_rng(seed)
    days = 18628.0 + np.arange(60) * 12.0 + rng.uniform(0, 3, 60)
    signal = scale * (np.sin(2 * np.pi * days / 365.25) + rng.normal(0, 0.1, 60))
    if change:
        signal[40:] += 3 * scale
    return Timeline(
        chip_id=chip_id, days=days, signal=signal, baseline=np.arange(60) < 24,
        anomaly=(np.arange(60) >= 40) if change else np.zeros(60, bool),
        coef=np.r_[scale, np.zeros(8)], intercept=0.0, rmse=0.1 * scale, threshold=3.0,
        status="change" if change else "no change",
        change_day=float(days[40]) if change else None, signal_name="pc1", score=score,
        before=before, after=after)


def _pixels(path):
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _has_change_line(pixels):
    """A column with >= 100 tab:red pixels: the dashed change line (markers are ~5 px)."""
    red = (np.abs(pixels.astype(int) - (214, 39, 40)).sum(axis=-1) < 40)
    return bool((red.sum(axis=0) >= 100).any())


def _thumbs(tmp_path):
    from PIL import Image

    paths = []
    for name, colour in (("2021-01-05", (0, 90, 0)), ("2022-06-01", (180, 140, 90))):
        p = tmp_path / "thumbnails" / name / "c.png"
        p.parent.mkdir(parents=True)
        Image.new("RGB", (32, 32), colour).save(p)
        paths.append(p)
    return paths


def test_a_batch_draws_each_chip_as_if_alone(tmp_path):
    from geofm.analyze.plots import plot_timelines

    before, after = _thumbs(tmp_path)
    chips = [
        _timeline(0, "a", change=True, before=before, after=after),
        _timeline(1, "b", change=False, scale=50.0),  # no change after a change
        _timeline(2, "w", change=False, scale=1e4),  # y labels wider than the margin
        _timeline(3, "c", change=True, score=True),
        replace(_timeline(4, "n", change=True), rmse=float("nan")),  # no fit after fits
        _timeline(5, "d", change=False, before=tmp_path / "missing.png", after=after),
        _timeline(6, "e", change=True),  # no thumbnails after thumbnails
    ]
    batch = plot_timelines([(tl, tmp_path / "batch" / f"{tl.chip_id}.png") for tl in chips])
    assert batch == [tmp_path / "batch" / f"{tl.chip_id}.png" for tl in chips]
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == sorted(
        f"{tl.chip_id}.png" for tl in chips)  # atomic writes leave no temporary files
    alone = [plot_timeline(tl, tmp_path / "alone" / f"{tl.chip_id}.png") for tl in chips]
    pixels = [_pixels(p) for p in batch]
    for tl, drawn, single in zip(chips, pixels, alone, strict=True):
        np.testing.assert_array_equal(drawn, _pixels(single), err_msg=tl.chip_id)
    # Same pixel sizes as the constrained-layout figures: 10 x 4.2 / 10 x 6.5 in at 100 dpi.
    assert [p.shape[:2] for p in pixels] == [(650, 1000)] + [(420, 1000)] * 4 + [
        (650, 1000), (420, 1000)]
    assert [_has_change_line(p) for p in pixels] == [True, False, False, True, True, False,
                                                     True]
    assert not np.array_equal(pixels[4], pixels[6])  # each chip its own data
    # d has only its "after" thumbnail, drawn on the left; the right cell stays blank.
    thumb_row = pixels[5][400:]
    assert (np.abs(thumb_row.astype(int) - (180, 140, 90)).sum(axis=-1) < 10).sum() > 10000
    assert (thumb_row[:, 520:] == 255).all()
    titles = pixels[5][342:364].min(axis=-1)  # "after: 2022-06-01" above the left cell only
    assert (titles[:, :500] < 100).sum() > 50 and (titles[:, 500:] == 255).all()


def test_legend_goes_where_there_are_no_data(tmp_path):
    from PIL import Image

    days = 18628.0 + np.arange(60) * 12.0
    signal = np.zeros(60)
    signal[-1] = 10.0  # data along the bottom and up the right edge: upper left is free
    out = plot_timeline(Timeline(
        chip_id="f", days=days, signal=signal, baseline=np.arange(60) < 24,
        anomaly=np.arange(60) == 59, coef=np.zeros(9), intercept=0.0, rmse=0.1,
        threshold=3.0, status="no change", change_day=None, signal_name="pc1"),
        tmp_path / "f.png")
    with Image.open(out) as img:
        pixels = np.asarray(img.convert("L")).astype(int)
    # Axes span x 75-960, y 32-385 px; the legend text is dark, the background white.
    upper_left, upper_right = pixels[40:130, 85:260], pixels[40:130, 700:880]
    assert (upper_left < 100).sum() > 200
    assert (upper_right < 100).sum() < 20


def test_the_change_date_is_in_the_title_so_one_legend_serves_a_run():
    from geofm.analyze.plots import _TimelineFigure

    legends = {}
    figure = _TimelineFigure(thumbs=False, dpi=100, legends=legends)
    changed = _timeline(0, "a", change=True)
    figure.render(changed, [])
    date = str(np.datetime64(int(changed.change_day), "D"))
    assert figure.ax.get_title() == f"a: change, change date {date}"
    assert figure.change.get_visible()
    figure.render(_timeline(1, "b", change=True), [])  # another date, the same legend
    assert len(legends) == 1 and figure.ax.get_title().startswith("b: change, change date")
    figure.render(_timeline(2, "c", change=False), [])
    assert figure.ax.get_title() == "c: no change" and not figure.change.get_visible()
    assert sorted(len(key) for key in legends) == [5, 6]  # without / with "change date"
    assert "change date" in next(key for key in legends if len(key) == 6)
