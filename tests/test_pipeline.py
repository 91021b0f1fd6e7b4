"""``geofm run``: configuration validation and an end-to-end run on synthetic data."""

import json
import shutil
import warnings

import pandas as pd
import pytest

from geofm.cli import main
from geofm.exceptions import GeofmError, GeofmValueError, GeofmWarning
from geofm.pipeline import PipelineConfig, load_config


def test_unknown_stage_option_lists_valid_ones():
    with pytest.raises(GeofmValueError, match=r"unknown option\(s\) chipsize for stage 'chip'; "
                                              r"valid options: .*chip_size"):
        PipelineConfig.from_mapping({"root": "r", "items": "i", "chip": {"chipsize": 64}})


def test_wrong_type_is_refused():
    with pytest.raises(GeofmValueError, match=r"'embed.batch_size' must be int, got 'big'"):
        PipelineConfig.from_mapping({"root": "r", "stages": ["embed"],
                                     "embed": {"batch_size": "big"}})


def test_unknown_top_level_key_and_stage():
    with pytest.raises(GeofmValueError, match="unknown key"):
        PipelineConfig.from_mapping({"root": "r", "items": "i", "rooot": 1})
    with pytest.raises(GeofmValueError, match="unknown stage"):
        PipelineConfig.from_mapping({"root": "r", "stages": ["embed", "cluster"]})


def test_items_required_for_chip():
    with pytest.raises(GeofmValueError, match="'items' is required"):
        PipelineConfig.from_mapping({"root": "r"})
    config = PipelineConfig.from_mapping({"root": "r", "stages": ["index", "embed"]})
    assert config.stages == ["embed", "index"]  # pipeline order, whatever the file says


def test_stac_instead_of_items():
    config = PipelineConfig.from_mapping({"root": "r", "stac": {
        "url": "http://127.0.0.1:1", "collections": ["sentinel-2-l2a"]}})
    assert config.items is None and config.stac["collections"] == ["sentinel-2-l2a"]
    with pytest.raises(GeofmValueError, match="'items' or 'stac', not both"):
        PipelineConfig.from_mapping({"root": "r", "items": "i", "stac": {
            "url": "u", "collections": "c"}})
    with pytest.raises(GeofmValueError, match="unknown stac key.*valid keys: url"):
        PipelineConfig.from_mapping({"root": "r", "stac": {"url": "u", "collections": "c",
                                                           "cloud": 3}})
    with pytest.raises(GeofmValueError, match="at least 'url' and 'collections'"):
        PipelineConfig.from_mapping({"root": "r", "stac": {"url": "u"}})


def test_yaml_paths_resolve_against_the_file(tmp_path):
    path = tmp_path / "conf" / "pipeline.yaml"
    path.parent.mkdir()
    path.write_text("items: ../data/items\nroot: run\nchip: {chip_size: 64}\n")
    data = load_config(path)
    assert data["items"] == str(path.parent / "../data/items")
    assert PipelineConfig.from_mapping(data).options["chip"] == {"chip_size": 64}


def test_missing_and_broken_yaml(tmp_path, caplog):
    assert main(["run", "--config", str(tmp_path / "none.yaml")]) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("items: [unclosed\n")
    with pytest.raises(GeofmError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.slow
def test_run_end_to_end_counts_agree(synth_dir, tmp_path):
    root = tmp_path / "run"
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"items: {synth_dir / 'items'}\nroot: {root}\n"
        "chip: {chip_size: 64}\nembed: {model: tiny, batch_size: 16}\n")
    with warnings.catch_warnings():
        # only the random-weights warning of the tiny encoder is expected here
        warnings.filterwarnings("ignore", message="RANDOM WEIGHTS", category=GeofmWarning)
        assert main(["run", "--config", str(config), "--no-progress"]) == 0
    stages = json.loads((root / "run.json").read_text())["stages"]
    assert [stages[s]["status"] for s in ("chip", "embed", "analyze", "index")] == ["ok"] * 4
    meta = pd.concat(pd.read_parquet(p) for p in sorted((root / "meta").glob("*.parquet")))
    emb = pd.concat(pd.read_parquet(p) for p in sorted((root / "embeddings").glob("*.parquet")))
    assert len(emb) == int(meta["valid"].sum()) > 0
    assert set(emb["chip_id"]) <= set(meta["chip_id"])
    timeseries = pd.read_parquet(root / "analysis" / "timeseries.parquet")
    assert len(timeseries) == len(emb)
    changes = pd.read_parquet(root / "analysis" / "changes.parquet")
    assert set(changes["chip_id"]) == set(emb["chip_id"])
    consolidated = pd.read_parquet(root / "consolidated.parquet")
    assert len(consolidated) == len(emb)

    # a re-run resumes: nothing is recomputed, no file changes
    # (run.json records the re-run; the writer lock file names its holder on every run)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()
              and p.name not in ("run.json", ".geofm.lock")}
    with warnings.catch_warnings():
        # only the random-weights warning of the tiny encoder is expected here
        warnings.filterwarnings("ignore", message="RANDOM WEIGHTS", category=GeofmWarning)
        assert main(["run", "--config", str(config), "--no-progress"]) == 0
    after = {p: p.stat().st_mtime_ns for p in before}
    changed = [str(p) for p in before if before[p] != after[p]]
    assert not changed, changed


@pytest.mark.slow
def test_run_with_a_bad_scene_keeps_the_rest_and_fails(synth_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    first = sorted((data / "assets").iterdir())[0]
    (first / "red.tif").write_bytes(b"not a tiff")
    root = tmp_path / "run"
    with warnings.catch_warnings():
        # only the random-weights warning of the tiny encoder is expected here
        warnings.filterwarnings("ignore", message="RANDOM WEIGHTS", category=GeofmWarning)
        code = main(["run", "--items", str(data / "items"), "--root", str(root),
                     "--chip-size", "64", "--model", "tiny", "--no-progress"])
    assert code == 1
    stages = json.loads((root / "run.json").read_text())["stages"]
    assert stages["chip"]["status"] == "failed"
    assert first.name in json.dumps(stages["chip"]["failures"])
    assert stages["index"]["status"] == "ok"


@pytest.mark.slow
def test_run_on_a_growing_item_set_does_only_new_work(synth_dir, tmp_path):
    """The monitoring loop: `geofm run` again after new acquisitions arrive."""
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    items = sorted((data / "items").glob("*.json"),
                   key=lambda p: json.loads(p.read_text())["properties"]["datetime"])
    later = data / "later"
    later.mkdir()
    for p in items[-3:]:  # the last three acquisitions arrive later
        p.rename(later / p.name)
    root = tmp_path / "run"
    argv = ["run", "--items", str(data / "items"), "--root", str(root), "--chip-size", "64",
            "--model", "tiny", "--no-progress"]
    with warnings.catch_warnings():
        # only the random-weights warning of the tiny encoder is expected here
        warnings.filterwarnings("ignore", message="RANDOM WEIGHTS", category=GeofmWarning)
        assert main(argv) == 0
        embedded = {p.name for p in (root / "embeddings").glob("*.parquet")}
        for p in later.iterdir():
            p.rename(data / "items" / p.name)
        assert main(argv) == 0
    stages = json.loads((root / "run.json").read_text())["stages"]
    assert stages["chip"]["counts"]["skipped_scenes"] == len(items) - 3
    updates = stages["analyze"]["updates"]
    assert [u["kind"] for u in updates] == ["reference", "update"]
    added = {p.name for p in (root / "embeddings").glob("*.parquet")} - embedded
    assert updates[1]["scenes_added"] == len(added) > 0  # (a cloudy scene has no file)
    assert stages["analyze"]["counts"]["embeddings"] < stages["analyze"]["counts"][
        "observations"]  # only the new files were read
    emb = pd.concat(pd.read_parquet(p) for p in sorted((root / "embeddings").glob("*.parquet")))
    assert len(pd.read_parquet(root / "analysis" / "timeseries.parquet")) == len(emb)
    assert len(pd.read_parquet(root / "consolidated.parquet")) == len(emb) > 0
