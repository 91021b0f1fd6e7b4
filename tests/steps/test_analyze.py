"""``python -m geofm.steps.analyze`` with meta/ and embeddings/ mounted as separate inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from geofm.steps import analyze as analyze_step


def _mount(src_root: Path, tmp: Path, names: tuple[str, ...]) -> tuple[Path, Path]:
    """Copy run-root folders into SageMaker-style input mounts; make the output folders."""
    base = tmp / "opt" / "ml" / "processing"
    for name in names:
        shutil.copytree(src_root / name, base / "input" / name)
    for name in ("analysis", "manifests"):
        (base / "root" / name).mkdir(parents=True)
    return base / "input", base / "root"


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_analyze_step_on_mounted_inputs(embedded_root: Path, tmp_path: Path) -> None:
    inputs, root = _mount(embedded_root, tmp_path, ("meta", "embeddings"))
    before = {name: _listing(inputs / name) for name in ("meta", "embeddings")}
    code = analyze_step.main(["--meta", str(inputs / "meta"),
                              "--embeddings", str(inputs / "embeddings"),
                              "--root", str(root), "--host", "algo-1", "--no-progress"])
    assert code == 0
    # the stage read the mounts through the root and wrote only its own folder
    assert (root / "meta").is_symlink() and (root / "embeddings").is_symlink()
    assert {name: _listing(inputs / name) for name in before} == before
    series = pd.read_parquet(root / "analysis" / "timeseries.parquet")
    n_embedded = sum(len(pd.read_parquet(p)) for p in (inputs / "embeddings").glob("*.parquet"))
    assert len(series) == n_embedded > 0
    manifest = json.loads((root / "manifests" / "analyze-algo-1.json").read_text())
    assert manifest["stages"]["analyze"]["status"] == "ok"


def test_analyze_step_missing_mount(tmp_path: Path) -> None:
    code = analyze_step.main(["--meta", str(tmp_path / "meta"), "--embeddings",
                              str(tmp_path / "embeddings"), "--root", str(tmp_path / "root")])
    assert code == 1
    assert not (tmp_path / "root" / "manifests").exists()


#: Seven baseline dates (2021: min_baseline is 6), then five monitoring dates (2022).
DATES = ("2021-02-01", "2021-03-01", "2021-04-01", "2021-06-01", "2021-08-01", "2021-10-01",
         "2021-11-01", "2022-02-01", "2022-03-01", "2022-04-01", "2022-06-01", "2022-07-01")


def _copy_scenes(src: Path, dst: Path, scenes: list[str]) -> None:
    """Copy the meta/embeddings files of ``scenes`` (mtimes kept, like one S3 object)."""
    for folder in ("meta", "embeddings"):
        (dst / folder).mkdir(parents=True, exist_ok=True)
        for scene in scenes:
            shutil.copy2(src / folder / f"{scene}.parquet", dst / folder / f"{scene}.parquet")


def _results(analysis: Path) -> dict[str, pd.DataFrame]:
    changes = pd.read_parquet(analysis / "changes.parquet").drop(columns=["geometry"])
    series = pd.read_parquet(analysis / "timeseries.parquet")
    for col in ("chip_id", "scene_id"):
        series[col] = series[col].astype(str)
    return {"changes": changes.sort_values("chip_id").reset_index(drop=True),
            "timeseries": series.sort_values(["chip_id", "date"]).reset_index(drop=True)}


def test_previous_analysis_makes_the_step_incremental(make_embedded_root, tmp_path: Path
                                                      ) -> None:
    """Second step run, given the first's analysis/, updates it like the library does."""
    from geofm.analyze import analyze

    full = tmp_path / "full"
    make_embedded_root(full, dates=DATES, per_class=4)
    scenes = sorted(p.stem for p in (full / "embeddings").glob("*.parquet"))
    old, new = scenes[:10], scenes[10:]
    opts = ["--n-components", "3", "--max-plots", "0", "--no-progress"]

    # the library: analyse the first scenes, add the others, analyse again (an update)
    lib = tmp_path / "lib"
    _copy_scenes(full, lib, old)
    analyze(lib, n_components=3, max_plots=0, progress=False)
    _copy_scenes(full, lib, new)
    second = analyze(lib, n_components=3, max_plots=0, progress=False)
    assert second.counts["embeddings"] == sum(
        len(pd.read_parquet(full / "embeddings" / f"{s}.parquet")) for s in new)

    # the step, run 1: no previous analysis
    run1 = tmp_path / "run1"
    _copy_scenes(full, run1 / "input", old)
    args1 = ["--meta", str(run1 / "input" / "meta"), "--embeddings",
             str(run1 / "input" / "embeddings"), "--root", str(run1 / "root"), *opts]
    assert analyze_step.main(args1) == 0
    # run 2: more scenes, and run 1's analysis/ mounted read-only as previous-analysis
    run2 = tmp_path / "run2"
    _copy_scenes(full, run2 / "input", scenes)
    previous = run2 / "input" / "previous-analysis"
    shutil.copytree(run1 / "root" / "analysis", previous)
    before = _listing(previous)
    args2 = ["--meta", str(run2 / "input" / "meta"), "--embeddings",
             str(run2 / "input" / "embeddings"), "--previous-analysis", str(previous),
             "--root", str(run2 / "root"), "--host", "algo-1", *opts]
    assert analyze_step.main(args2) == 0
    assert _listing(previous) == before  # the mount is only read

    manifest = json.loads((run2 / "root" / "manifests" / "analyze-algo-1.json").read_text())
    entry = manifest["stages"]["analyze"]
    assert entry["status"] == "ok"
    assert entry["counts"]["embeddings"] == second.counts["embeddings"]  # new files only
    assert [u["kind"] for u in entry["updates"]] == ["reference", "update"]
    assert entry["updates"][1]["scene_ids"] == new
    state = json.loads((run2 / "root" / "analysis" / "state.json").read_text())
    assert state["reference"]["id"] == json.loads(
        (run1 / "root" / "analysis" / "state.json").read_text())["reference"]["id"]
    ours, theirs = _results(run2 / "root" / "analysis"), _results(lib / "analysis")
    assert set(ours["changes"]["status"]) == {"no change"}  # every chip was assessed
    for name in ours:
        pd.testing.assert_frame_equal(ours[name], theirs[name])

    # without it the same inputs are analysed from scratch: a new reference, one update
    run3 = tmp_path / "run3"
    assert analyze_step.main([*args2[:4], "--root", str(run3), *opts]) == 0
    fresh = json.loads((run3 / "analysis" / "state.json").read_text())
    assert len(fresh["updates"]) == 1


def test_previous_analysis_is_not_mixed_into_a_used_root(tmp_path: Path) -> None:
    from geofm.exceptions import GeofmFileExistsError
    from geofm.steps import _mounts

    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "state.json").write_text("{}")
    root = tmp_path / "root"
    (root / "analysis").mkdir(parents=True)
    (root / "analysis" / "changes.parquet").write_bytes(b"other run")
    with pytest.raises(GeofmFileExistsError, match="is not an empty folder"):
        _mounts.seed_folder(root, "analysis", previous)
    (root / "analysis" / "changes.parquet").unlink()  # empty (SageMaker's output folder)
    assert (_mounts.seed_folder(root, "analysis", previous) / "state.json").read_text() == "{}"
    code = analyze_step.main(["--meta", str(tmp_path), "--embeddings", str(tmp_path),
                              "--previous-analysis", str(tmp_path / "gone"),
                              "--root", str(tmp_path / "root2")])
    assert code == 1  # a missing mount is an error, not a silent fresh start
