import json
import os

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


def _staged(folder, **files):
    from geofm.io import StagedFiles

    group = StagedFiles(folder).begin()
    for name, text in files.items():
        group.path(name.replace("__", "/")).write_text(text)
    return group


def test_staged_files_publish_together(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    group = _staged(tmp_path, **{"a.txt": "new a", "sub__b.txt": "new b"})
    assert (tmp_path / "a.txt").read_text() == "old a"  # nothing visible before commit
    group.commit()
    assert (tmp_path / "a.txt").read_text() == "new a"
    assert (tmp_path / "sub" / "b.txt").read_text() == "new b"
    assert not (tmp_path / ".pending").exists()


def test_staged_files_recover_rolls_back_or_forward(tmp_path, monkeypatch):
    import geofm.io
    from geofm.io import StagedFiles

    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b.txt").write_text("old b")
    _staged(tmp_path, **{"a.txt": "new a", "b.txt": "new b"})  # killed before commit
    assert StagedFiles(tmp_path).recover() is False
    assert (tmp_path / "a.txt").read_text() == "old a" and not (tmp_path / ".pending").exists()

    group = _staged(tmp_path, **{"a.txt": "new a", "b.txt": "new b"})
    calls = []

    def die_after_one(src, dst):
        if calls:
            raise KeyboardInterrupt  # the process stops between two renames
        calls.append(dst)
        os.replace(src, dst)

    monkeypatch.setattr(geofm.io, "_replace", die_after_one)
    with pytest.raises(KeyboardInterrupt):
        group.commit()
    assert (tmp_path / "a.txt").read_text() == "new a"
    assert (tmp_path / "b.txt").read_text() == "old b"  # a mix, until recovery
    monkeypatch.undo()
    assert StagedFiles(tmp_path).recover() is True
    assert (tmp_path / "b.txt").read_text() == "new b"
    assert not (tmp_path / ".pending").exists()


@pytest.mark.parametrize("name", ["../x", "/abs", "COMMITTED"])
def test_staged_names_stay_inside(tmp_path, name):
    from geofm.io import StagedFiles

    with pytest.raises(ValueError, match="must be a relative path"):
        StagedFiles(tmp_path).path(name)


class _GdalError(Exception):
    """Stands in for rasterio's CPLE_* errors: what open_failure reads is their errno."""

    def __init__(self, errno, text):
        super().__init__(text)
        self.errno = errno


def _open_error(errno, text):
    from rasterio.errors import RasterioIOError

    try:
        try:
            raise _GdalError(errno, text)
        except _GdalError:
            raise RasterioIOError(text)  # noqa: B904  (chained like rasterio: __context__)
    except RasterioIOError as exc:
        return exc


@pytest.mark.parametrize(("errno", "text", "href", "reason"), [
    (13, "whatever the wording", "s3://b/k.tif", "missing"),  # CPLE_AWSObjectNotFound
    (14, "whatever the wording", "s3://b/k.tif", "denied"),  # CPLE_AWSAccessDenied
    (15, "whatever the wording", "s3://b/k.tif", "denied"),
    (11, "HTTP response code: 404", "https://h/x.tif", "missing"),
    (11, "HTTP response code: 403", "https://h/x.tif", "denied"),
    (11, "HTTP response code: 401", "https://h/x.tif", "denied"),
    (11, "HTTP response code: 503", "https://h/x.tif", "unreachable"),
    (11, "CURL error: Could not resolve host: h", "https://h/x.tif", "unreachable"),
    (4, "'/vsis3/b/k.tif' does not exist in the file system", "s3://b/k.tif", "missing"),
    (4, "not recognized as being in a supported file format", "https://h/x.tif", "corrupt"),
    (1, "No such file (but not an open error)", "https://h/x.tif", "corrupt"),
])
def test_open_failure_classifies_remote_errors_by_gdal_number(errno, text, href, reason):
    from geofm.io import open_failure

    got, why = open_failure(_open_error(errno, text), href)
    assert got == reason
    assert why.startswith({"missing": "file does not exist", "denied": "access denied",
                           "unreachable": "cannot reach the server",
                           "corrupt": "cannot open ("}[reason])


def test_open_failure_checks_local_files_on_disk(tmp_path):
    """A local path: missing or not a raster from the disk, whatever GDAL's message says."""
    import rasterio

    from geofm.io import open_failure

    missing, junk = tmp_path / "gone.tif", tmp_path / "junk.tif"
    junk.write_text("not a tiff")
    for path, reason in ((missing, "missing"), (junk, "corrupt")):
        with pytest.raises(rasterio.errors.RasterioIOError) as info:
            rasterio.open(path)
        assert open_failure(info.value, str(path))[0] == reason
        # the wording does not decide it: a missing file whose message says otherwise
        assert open_failure(_open_error(4, "No such file or directory"), str(path))[0] == reason
