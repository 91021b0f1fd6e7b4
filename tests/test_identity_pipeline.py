"""Model identity across stages: failed chips are run facts, other models are refused.

End to end through ``geofm.cli.main`` on the shared small synthetic run: one truncated
chip makes ``embed`` exit 1, while ``analyze`` and ``index`` run on the rest (exit 0)
and report it; scenes embedded by different models (seed, time/location) are refused by
``analyze`` and ``index`` with the files and the differing fields named.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from geofm.cli import main
from geofm.exceptions import GeofmWarning, ModelMismatchError
from geofm.layout import RunRoot
from geofm.manifest import read_manifest


def _embed(root: Path, *extra: str) -> int:
    with pytest.warns(GeofmWarning, match="RANDOM"):
        return main(["embed", "--root", str(root), "--model", "tiny", "--workers", "0",
                     "--batch-size", "16", "--no-progress", *extra])


def _valid_chips(rr: RunRoot) -> dict[str, list[str]]:
    """Valid chip ids per scene (meta order)."""
    out = {}
    for scene in rr.scene_ids(rr.meta_dir):
        meta = pq.read_table(rr.meta_path(scene), columns=["chip_id", "valid"]).to_pandas()
        out[scene] = meta.loc[meta["valid"], "chip_id"].tolist()
    return out


def _index_keys(root: Path) -> set[str]:
    import lancedb

    table = lancedb.connect(str(root / "index")).open_table("chips")
    return set(table.to_arrow().column("key").to_pylist())


def test_failed_chip_is_reported_and_analyze_and_index_use_the_rest(chipped_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(chipped_root, root)
    rr = RunRoot.of(root)
    valid = _valid_chips(rr)
    scene = max(valid, key=lambda s: len(valid[s]))  # a scene with several chips
    lone = next(s for s in sorted(valid) if len(valid[s]) == 1)  # and one with a single chip
    chip_id, lone_chip = valid[scene][1], valid[lone][0]
    broken, lone_broken = rr.chip_path(scene, chip_id), rr.chip_path(lone, lone_chip)
    for path in (broken, lone_broken):
        path.write_bytes(path.read_bytes()[:200])  # a truncated NetCDF

    assert _embed(root) == 1
    embed_stage = read_manifest(root)["stages"]["embed"]
    assert sorted((f["unit"], f["path"]) for f in embed_stage["failures"]) == sorted(
        [(chip_id, str(broken)), (lone_chip, str(lone_broken))])
    assert not rr.embeddings_path(lone).exists()  # nothing of that scene could be embedded
    stored = json.loads(pq.read_schema(rr.embeddings_path(scene)).metadata[b"geofm"])
    assert stored["run"]["failed_chips"] == [chip_id]
    assert "failed_chips" not in stored["model"]

    assert main(["analyze", "--root", str(root), "--n-components", "4", "--max-plots", "0",
                 "--no-progress"]) == 0
    analyze_stage = read_manifest(root)["stages"]["analyze"]
    assert analyze_stage["status"] == "ok"
    counts = analyze_stage["counts"]
    assert counts["failed_chips"] == 1 and counts["unembedded_scenes"] == 1
    assert analyze_stage["not_analysed"] == {"failed_chips": [f"{scene}/{chip_id}"],
                                             "scenes": [lone]}
    assert analyze_stage["model"]["seed"] == 0 and analyze_stage["model"]["random_init"]

    assert main(["index", "--root", str(root)]) == 0
    index_stage = read_manifest(root)["stages"]["index"]
    assert index_stage["status"] == "ok" and index_stage["failures"] == []
    counts = index_stage["counts"]
    assert counts["failed_chips"] == 1 and counts["unembedded_scenes"] == 1
    assert index_stage["not_indexed"] == {"failed_chips": [f"{scene}/{chip_id}"],
                                          "scenes": [lone]}
    keys = _index_keys(root)
    n_rows = sum(pq.read_metadata(rr.embeddings_path(s)).num_rows
                 for s in rr.scene_ids(rr.embeddings_dir))
    assert len(keys) == n_rows == counts["rows"]
    assert f"{scene}/{chip_id}" not in keys
    assert {k for k in keys if k.startswith(f"{scene}/")} == {
        f"{scene}/{c}" for c in valid[scene] if c != chip_id}  # the scene's other chips are in
    info = json.loads((root / "index" / "geofm_index.json").read_text())
    assert "failed_chips" not in info["model"] and info["model"]["bands"]

    # a second index run over the same embeddings is compatible with the index it built
    assert main(["index", "--root", str(root)]) == 0


@pytest.fixture(scope="module")
def two_scene_root(chipped_root, tmp_path_factory) -> Path:
    """The chipped run cut to its first two scenes (cheap to embed more than once)."""
    root = tmp_path_factory.mktemp("two") / "root"
    shutil.copytree(chipped_root, root)
    rr = RunRoot.of(root)
    keep = [s for s, chips in _valid_chips(rr).items() if chips][:2]
    for scene in rr.scene_ids(rr.meta_dir):
        if scene not in keep:
            rr.meta_path(scene).unlink()
    return root


@pytest.mark.parametrize("option, field, values", [
    (("--seed", "1"), "seed", "0 vs 1"),
    (("--time-location", "encode"), "time_location", "'zero' vs 'encode'"),
])
def test_scenes_of_two_models_are_refused_by_analyze_and_index(two_scene_root, tmp_path,
                                                               caplog, option, field, values):
    first, other = tmp_path / "first", tmp_path / "other"
    shutil.copytree(two_scene_root, first)
    shutil.copytree(two_scene_root, other)
    assert _embed(first) == 0
    assert _embed(other, *option) == 0
    rr = RunRoot.of(first)
    scenes = rr.scene_ids(rr.embeddings_dir)
    # the second scene now holds vectors of the other model
    shutil.copy(RunRoot.of(other).embeddings_path(scenes[1]), rr.embeddings_path(scenes[1]))
    a, b = rr.embeddings_path(scenes[0]), rr.embeddings_path(scenes[1])

    for argv in (["analyze", "--root", str(first), "--no-progress"],
                 ["index", "--root", str(first)]):
        caplog.clear()
        assert main(argv) == 1
        message = caplog.text
        assert str(a) in message and str(b) in message
        assert f"{field} {values}" in message
        assert f"geofm embed --root {first} --overwrite" in message
        stage = read_manifest(first)["stages"][argv[0]]
        assert stage["status"] == "error" and field in stage["error"]
    assert not (first / "analysis" / "changes.parquet").exists()
    assert not (first / "index").exists() or not list((first / "index").iterdir())

    from geofm.index import build_index

    with pytest.raises(ModelMismatchError) as err:
        build_index(first)
    assert err.value.fields == (field,) and err.value.paths == (str(a), str(b))

    # the fix named in the message works
    assert _embed(first, "--overwrite") == 0
    assert main(["index", "--root", str(first)]) == 0
