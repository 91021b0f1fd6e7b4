"""``python -m geofm.steps.analyze`` with meta/ and embeddings/ mounted as separate inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

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
