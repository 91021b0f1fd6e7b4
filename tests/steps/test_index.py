"""``python -m geofm.steps.index`` with meta/, embeddings/, analysis/ as separate inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest

from geofm.steps import index as index_step


@pytest.fixture(scope="module")
def analysed_root(embedded_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from geofm.analyze import analyze

    root = tmp_path_factory.mktemp("analysed") / "root"
    shutil.copytree(embedded_root, root)
    analyze(root, progress=False)
    return root


def test_index_step_on_mounted_inputs(analysed_root: Path, tmp_path: Path) -> None:
    base = tmp_path / "opt" / "ml" / "processing"
    for name in ("meta", "embeddings", "analysis"):
        shutil.copytree(analysed_root / name, base / "input" / name)
    for name in ("index", "consolidated", "manifests"):
        (base / "root" / name).mkdir(parents=True)
    root = base / "root"
    code = index_step.main([*(a for name in ("meta", "embeddings", "analysis")
                              for a in (f"--{name}", str(base / "input" / name))),
                            "--root", str(root), "--host", "algo-1"])
    assert code == 0
    consolidated = gpd.read_parquet(root / "consolidated" / "consolidated.parquet")
    n_embedded = sum(len(pd.read_parquet(p))
                     for p in (base / "input" / "embeddings").glob("*.parquet"))
    assert len(consolidated) == n_embedded > 0
    assert any((root / "index").iterdir())
    manifest = json.loads((root / "manifests" / "index-algo-1.json").read_text())
    assert manifest["stages"]["index"]["status"] == "ok"

    from geofm.search import search

    chip_id = consolidated["chip_id"].iloc[0]
    hits = search(root, chip_ids=[chip_id], k=3)
    assert len(hits) == 3
