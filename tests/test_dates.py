import datetime as dt

import numpy as np
import pandas as pd
import pytest

from geofm.dates import as_utc, parse_utc, utc_index
from geofm.exceptions import GeofmValueError


def test_parse_utc_takes_naive_values_as_utc_and_converts_aware_ones():
    utc = pd.Timestamp("2021-06-01T10:00:00", tz="UTC")
    assert parse_utc("2021-06-01T10:00:00") == utc
    assert parse_utc("2021-06-01T12:00:00+02:00") == utc
    assert parse_utc(dt.datetime(2021, 6, 1, 10)) == utc
    assert parse_utc(pd.Timestamp("2021-06-01 05:00", tz="America/New_York")) == utc - \
        pd.Timedelta(hours=1)
    assert str(parse_utc("2021-06-01").tz) == "UTC"


def test_parse_utc_end_counts_the_whole_day_of_a_bare_date():
    assert parse_utc("2021-06-01", end=True) == pd.Timestamp("2021-06-01T23:59:59.999999Z")
    # a timestamp that happens to be midnight is not widened
    assert parse_utc("2021-06-01T00:00:00", end=True) == pd.Timestamp("2021-06-01", tz="UTC")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "cannot parse date 'notadate'; use YYYY-MM-DD"),
    ({"name": "since", "hint": "use YYYY-MM-DD or an ISO time."},
     "since='notadate' is not a date; use YYYY-MM-DD or an ISO time."),
])
def test_parse_utc_errors_name_the_value_and_carry_fields(kwargs, message):
    with pytest.raises(GeofmValueError) as info:
        parse_utc("notadate", **kwargs)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)
    assert (info.value.name, info.value.value) == (kwargs.get("name"), "notadate")


@pytest.mark.parametrize("bad", ["", None, "2021-02-30", [1, 2]])
def test_parse_utc_refuses_empty_impossible_and_non_dates(bad):
    with pytest.raises(GeofmValueError, match="cannot parse date"):
        parse_utc(bad)


def test_as_utc():
    assert as_utc(pd.Timestamp("2021-06-01 10:00")) == pd.Timestamp("2021-06-01 10:00Z")
    assert as_utc(pd.Timestamp("2021-06-01 12:00+02:00")).tzname() == "UTC"


def test_utc_index_reads_every_kind_of_date_as_utc():
    want = pd.DatetimeIndex(["2021-06-01T10:00Z", "2021-06-02T10:00Z"])
    for dates in (["2021-06-01T10:00", "2021-06-02T10:00"],
                  ["2021-06-01T12:00+02:00", "2021-06-02T12:00+02:00"],
                  [dt.datetime(2021, 6, 1, 10), pd.Timestamp("2021-06-02T10:00Z")],
                  np.array(["2021-06-01T10:00", "2021-06-02T10:00"], dtype="datetime64[ns]"),
                  pd.Series(pd.to_datetime(["2021-06-01T10:00", "2021-06-02T10:00"]))):
        assert (utc_index(dates) == want).all()
    assert len(utc_index("2021-06-01")) == 1


def test_utc_index_refuses_unreadable_and_missing_dates():
    with pytest.raises(GeofmValueError, match="cannot read dates"):
        utc_index(["2021-06-01", "soon"])
    with pytest.raises(GeofmValueError, match="missing date"):
        utc_index(["2021-06-01", None])
