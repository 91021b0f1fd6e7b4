import json

import numpy as np
import pytest

from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError, SearchIndexError
from geofm.index.table import IndexInfo
from geofm.search.query import read_vector_file, sql_str
from geofm.search.stage import build_filter, parse_bbox

INFO = IndexInfo(embedding="cls", dim=3, model={"preset": "tiny"}, mean=[0.0] * 3,
                 mean_rows=1)


def test_sql_str_escapes_quotes():
    assert sql_str("a'b") == "'a''b'"


def test_filter_clause_has_every_term():
    where = build_filter(exclude=["x'y"], start="2021-06-01", end="2021-06-30",
                         bbox="13,52,14,53", max_cloud=0.1)
    assert "chip_id NOT IN ('x''y')" in where
    assert "date >= timestamp '2021-06-01 00:00:00.000000'" in where
    assert "date <= timestamp '2021-06-30 23:59:59.999999'" in where  # whole end day
    assert "east >= 13.0 AND west <= 14.0" in where and "cloud_fraction <= 0.1" in where
    assert build_filter() is None


def test_bad_bbox_and_dates():
    assert parse_bbox("-120,30,-110,40") == (-120.0, 30.0, -110.0, 40.0)
    with pytest.raises(GeofmValueError, match="four numbers W,S,E,N"):
        parse_bbox("1,2,3")
    with pytest.raises(GeofmValueError, match="cannot parse date '2021-13-45'"):
        build_filter(start="2021-13-45")


def test_vector_files(tmp_path):
    (tmp_path / "v.json").write_text(json.dumps({"vector": [1, 2, 3], "embedding": "cls",
                                                 "model": {"preset": "tiny"}}))
    np.testing.assert_allclose(read_vector_file(tmp_path / "v.json", INFO), [[1, 2, 3]])
    np.save(tmp_path / "m.npy", np.ones((4, 3)))
    assert read_vector_file(tmp_path / "m.npy", INFO).shape == (4, 3)
    (tmp_path / "e.json").write_text(json.dumps({"vector": [1, 2, 3], "embedding": "mean"}))
    with pytest.raises(SearchIndexError, match="computed with embedding 'mean'"):
        read_vector_file(tmp_path / "e.json", INFO)
    (tmp_path / "n.json").write_text("[1, NaN, 3]")
    with pytest.raises(GeofmValueError, match="NaN or infinite"):
        read_vector_file(tmp_path / "n.json", INFO)
    (tmp_path / "v.txt").write_text("1 2 3")
    with pytest.raises(GeofmValueError, match=r"must end in \.npy or \.json"):
        read_vector_file(tmp_path / "v.txt", INFO)
    with pytest.raises(GeofmFileNotFoundError, match="does not exist"):
        read_vector_file(tmp_path / "missing.npy", INFO)
