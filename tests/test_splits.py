import pytest

from geofm.exceptions import GeofmValueError
from geofm.splits import split_locations


def test_split_by_location_is_disjoint_seeded_and_complete():
    locations = [f"33UUP_64_{r:04d}_{c:04d}" for r in range(4) for c in range(5)]
    samples = locations * 3  # every location at three dates
    train, val = split_locations(samples, val_fraction=0.25, seed=0)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(locations)
    assert len(val) == 5
    assert (train, val) == split_locations(list(reversed(samples)), val_fraction=0.25, seed=0)
    assert val != split_locations(samples, val_fraction=0.25, seed=1)[1]


def test_split_errors():
    with pytest.raises(GeofmValueError, match="at least 2 chip locations"):
        split_locations(["a", "a"], val_fraction=0.5)
    with pytest.raises(GeofmValueError, match=r"val_fraction must be in \(0, 1\), got 1.5"):
        split_locations(["a", "b"], val_fraction=1.5)
