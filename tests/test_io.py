import json

import pytest

from geofm.io import atomic_path, is_remote, resolve_href, write_json_atomic


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".json" and tmp != target
        tmp.write_text("x")
        assert not target.exists()
    assert target.read_text() == "x"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_atomic_path_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_json_is_stable(tmp_path):
    a = write_json_atomic(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    b = write_json_atomic(tmp_path / "b.json", {"a": [1, 2], "b": 1})
    assert a.read_bytes() == b.read_bytes()
    assert json.loads(a.read_text()) == {"a": [1, 2], "b": 1}


@pytest.mark.parametrize(("href", "base", "expected"), [
    ("../assets/x/red.tif", "/data/items/item.json", "/data/assets/x/red.tif"),
    ("red.tif", "/data/items", "/data/items/red.tif"),
    ("file:///abs/red.tif", "/elsewhere", "/abs/red.tif"),
    ("s3://bucket/key/red.tif", "/data", "s3://bucket/key/red.tif"),
    ("https://host/red.tif", None, "https://host/red.tif"),
    ("/abs/red.tif", "/data/items", "/abs/red.tif"),
])
def test_resolve_href(href, base, expected):
    assert resolve_href(href, base) == expected


def test_is_remote():
    assert is_remote("s3://b/k") and is_remote("https://h/x")
    assert not is_remote("/tmp/x") and not is_remote("file:///tmp/x")
