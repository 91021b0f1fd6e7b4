import datetime as dt

import pytest

from geofm.synth import timeline


def test_default_cadence_spans_two_years_on_the_5_day_revisit():
    dates = timeline.acquisition_dates(dt.date(2021, 1, 1), 36, None)
    steps = {(b - a).days for a, b in zip(dates, dates[1:], strict=False)}
    assert len(steps) == 1 and steps.pop() % 5 == 0
    assert 650 <= (dates[-1] - dates[0]).days <= 800
    assert timeline.acquisition_dates(dt.date(2021, 6, 1), 3, 30)[-1] == dt.date(2021, 7, 31)


@pytest.mark.parametrize(("date", "baseline", "offset"), [
    (dt.date(2021, 3, 1), "02.09", 0), (dt.date(2021, 8, 1), "03.01", 0),
    (dt.date(2022, 1, 24), "03.01", 0), (dt.date(2022, 1, 25), "04.00", 1000),
    (dt.date(2023, 5, 1), "04.00", 1000),
])
def test_processing_baseline_switch(date, baseline, offset):
    assert timeline.processing_baseline(date) == baseline
    assert timeline.boa_offset(date) == offset


@pytest.mark.parametrize(("n", "cadence"), [(36, None), (14, 30), (5, 10), (60, 5)])
def test_events_fall_in_monitoring_period_with_three_acquisitions_after(n, cadence):
    dates = timeline.acquisition_dates(dt.date(2021, 6, 1), n, cadence)
    m = timeline.monitor_index(dates)
    assert timeline.label_date(dates) <= dates[m]
    for seed in range(5):
        for ev in timeline.event_timings(dates, 6, seed=seed):
            k = ev.first_index
            assert dates[m] < ev.date and dates[k - 1] < ev.date <= dates[k]
            assert k <= n - 3
            assert ev.date != timeline.BASELINE_SWITCH
            assert 60 <= (ev.regrowth - ev.date).days <= 120


@pytest.mark.parametrize(("n", "cadence", "start"), [
    (36, None, dt.date(2021, 1, 1)), (36, None, dt.date(2021, 6, 1)), (14, 30, dt.date(2021, 6, 1)),
    (60, 5, dt.date(2021, 6, 1)), (24, None, dt.date(2021, 1, 1)),
])
def test_every_event_has_six_acquisitions_and_120_days_after_it(n, cadence, start):
    dates = timeline.acquisition_dates(start, n, cadence)
    timings = [ev for seed in range(20) for ev in timeline.event_timings(dates, 6, seed=seed)]
    for ev in timings:
        assert n - ev.first_index >= timeline.MIN_ACQUISITIONS_AFTER == 6
        assert (dates[-1] - ev.date).days >= timeline.MIN_DAYS_AFTER == 120
    # Still spread over the whole allowed window, not bunched at its start.
    assert len({ev.date for ev in timings}) >= 10


def test_events_are_deterministic_per_seed():
    dates = timeline.acquisition_dates(dt.date(2021, 1, 1), 36, None)
    assert (timeline.event_timings(dates, 6, seed=3)
            == timeline.event_timings(dates, 6, seed=3)
            != timeline.event_timings(dates, 6, seed=4))


def test_too_short_series_falls_back_to_three_acquisitions_after():
    dates = timeline.acquisition_dates(dt.date(2021, 6, 1), 5, 10)
    ks = {ev.first_index for s in range(20) for ev in timeline.event_timings(dates, 3, seed=s)}
    assert ks == {timeline.monitor_index(dates) + 1} and max(ks) <= 2


def test_monitoring_starts_after_first_year_when_series_is_long():
    dates = timeline.acquisition_dates(dt.date(2021, 1, 1), 36, None)
    assert dates[timeline.monitor_index(dates)] >= dt.date(2022, 1, 1)
    assert timeline.label_date(dates) == dt.date(2021, 7, 1)


def test_event_never_on_the_switch_day():
    # 3-day cadence; the switch day is an acquisition inside the event window.
    dates = timeline.acquisition_dates(dt.date(2022, 1, 1), 12, 3)
    assert timeline.BASELINE_SWITCH in dates[timeline.monitor_index(dates) + 1:]
    drawn = {ev.date for s in range(40) for ev in timeline.event_timings(dates, 3, seed=s)}
    assert timeline.BASELINE_SWITCH not in drawn
    assert drawn == {dt.date(2022, 1, d) for d in (20, 21, 22, 23, 24, 26, 27, 28)}


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_short_series_without_events_have_a_label_date(n):
    dates = timeline.acquisition_dates(dt.date(2021, 6, 1), n, 30)
    assert 0 <= timeline.monitor_index(dates) < n
    assert dates[0] <= timeline.label_date(dates) <= dates[-1]
