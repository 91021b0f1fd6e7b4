import pytest

from geofm.exceptions import UnsafePathError
from geofm.layout import RunRoot


def test_safe_ids_keep_their_paths(tmp_path):
    run = RunRoot.of(tmp_path / "root")
    assert run.chip_path("S2A_1", "33UUP_64_0000_0001") == \
        tmp_path / "root/chips/S2A_1/33UUP_64_0000_0001.nc"
    assert run.thumbnail_path("S2A_1", "c") == tmp_path / "root/thumbnails/S2A_1/c.png"
    assert run.meta_path("S2A_1") == tmp_path / "root/meta/S2A_1.parquet"
    assert run.embeddings_path("S2A_1") == tmp_path / "root/embeddings/S2A_1.parquet"
    assert run.patches_path("S2A_1") == tmp_path / "root/embeddings/S2A_1_patches.npy"


def test_unusual_ids_are_encoded_and_scene_ids_decodes_them(tmp_path):
    run = RunRoot.of(tmp_path / "root")
    assert run.meta_path("S2A/2021") == tmp_path / "root/meta/S2A%2F2021.parquet"
    assert run.chip_path("S2A/2021", "c").parent.name == "S2A%2F2021"
    run.meta_dir.mkdir(parents=True)
    for scene in ("S2A/2021", "b c", "plain"):
        run.meta_path(scene).touch()
    (run.meta_dir / ".tmp.parquet").touch()  # hidden temporaries are skipped
    assert run.scene_ids(run.meta_dir) == ["S2A/2021", "b c", "plain"]


def test_a_stray_file_name_is_an_error_not_a_scene(tmp_path):
    run = RunRoot.of(tmp_path)
    run.meta_dir.mkdir()
    (run.meta_dir / "has space.parquet").touch()
    with pytest.raises(UnsafePathError, match="'has space' is not an encoded item id"):
        run.scene_ids(run.meta_dir)


@pytest.mark.parametrize("scene_id", ["../../escape", "/abs/id", "a/../../b", "..", ".", ""])
@pytest.mark.parametrize("method", ["meta_path", "embeddings_path", "patches_path",
                                    "scene_chips_dir"])
def test_traversal_scene_ids_get_no_path(tmp_path, scene_id, method):
    with pytest.raises(UnsafePathError) as info:
        getattr(RunRoot.of(tmp_path / "root"), method)(scene_id)
    assert info.value.value == scene_id


@pytest.mark.parametrize("chip_id", ["../../x", "/abs", "a/b", "..", ""])
def test_traversal_chip_ids_get_no_path(tmp_path, chip_id):
    run = RunRoot.of(tmp_path / "root")
    for method in (run.chip_path, run.thumbnail_path):
        with pytest.raises(UnsafePathError, match="chip id"):
            method("S", chip_id)


def test_inside_is_the_last_line_of_defence(tmp_path):
    run = RunRoot.of(tmp_path / "root")
    assert run.inside(run.path / "meta" / "x") == run.path / "meta" / "x"
    for bad in (run.path / ".." / "x", run.path / "meta" / ".." / ".." / "x", tmp_path / "x",
                run.path, run.path / "/etc/passwd"):
        with pytest.raises(UnsafePathError, match="outside the run root"):
            run.inside(bad)


def test_inside_is_lexical_so_linked_mounts_stay_usable(tmp_path):
    mount = tmp_path / "mount"
    mount.mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "meta").symlink_to(mount, target_is_directory=True)
    run = RunRoot.of(tmp_path / "root")
    assert run.meta_path("S").parent.resolve() == mount


def test_relative_roots(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunRoot.of("runs/a")
    assert str(run.meta_path("S")) == "runs/a/meta/S.parquet"
    with pytest.raises(UnsafePathError):
        run.inside(run.path / ".." / "b")
