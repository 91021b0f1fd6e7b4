"""``python -m geofm.steps.chip`` on items sharded across two instances, SageMaker layout."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import geopandas as gpd
import pandas as pd

from geofm.steps import chip as chip_step


def _mount_items(synth_dir: Path, dest: Path, names: list[str]) -> Path:
    """Copy items into an input mount with absolute hrefs (as items on S3 have)."""
    dest.mkdir(parents=True)
    for name in names:
        item = json.loads((synth_dir / "items" / name).read_text())
        for asset in item["assets"].values():
            asset["href"] = os.path.normpath(synth_dir / "items" / asset["href"])
        (dest / name).write_text(json.dumps(item))
    return dest


def _instance(tmp: Path, host: str) -> tuple[Path, Path]:
    """(input dir, run root) of one instance; output folders exist, as SageMaker makes them."""
    base = tmp / host / "opt" / "ml" / "processing"
    for name in ("meta", "thumbnails", "bundles", "manifests"):
        (base / "root" / name).mkdir(parents=True)
    return base / "input", base / "root"


def _meta(folder: Path) -> pd.DataFrame:
    frames = [gpd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))]
    return pd.concat(frames).sort_values(["scene_id", "chip_id"]).reset_index(drop=True)


def test_chip_step_on_two_shards(synth_dir: Path, chipped_root: Path, tmp_path: Path) -> None:
    names = sorted(p.name for p in (synth_dir / "items").glob("*.json"))
    merged = {"meta": tmp_path / "s3" / "meta", "bundles": tmp_path / "s3" / "bundles",
              "manifests": tmp_path / "s3" / "manifests"}
    for shard, host in enumerate(("algo-1", "algo-2")):
        inputs, root = _instance(tmp_path, host)
        items = _mount_items(synth_dir, inputs / "items", names[shard::2])
        code = chip_step.main(["--items", str(items), "--root", str(root), "--host", host,
                               "--chip-size", "64", "--max-cloud", "0.05", "--no-progress"])
        assert code == 0
        scenes = sorted(p.stem for p in (root / "meta").glob("*.parquet"))
        assert scenes == sorted(Path(n).stem for n in names[shard::2])
        assert sorted(p.stem for p in (root / "bundles").glob("*.tar")) == scenes
        assert any((root / "thumbnails").rglob("*.png"))
        manifest = json.loads((root / "manifests" / f"chip-{host}.json").read_text())
        assert manifest["stages"]["chip"]["status"] == "ok"
        assert manifest["stages"]["chip"]["counts"]["scenes"] == len(scenes)
        for key, folder in merged.items():  # what the S3 upload of the outputs does
            folder.mkdir(parents=True, exist_ok=True)
            for f in (root / key).iterdir():
                f.rename(folder / f.name)
    assert sorted(p.name for p in merged["manifests"].iterdir()) == ["chip-algo-1.json",
                                                                     "chip-algo-2.json"]
    # the shards together are the unsharded run, chip for chip
    columns = ["scene_id", "chip_id", "valid", "cloud_fraction", "minx", "maxy"]
    pd.testing.assert_frame_equal(_meta(merged["meta"])[columns],
                                  _meta(chipped_root / "meta")[columns])
    # each bundle holds its scene's metadata and exactly its valid chips
    one = _meta(chipped_root / "meta")
    scene = one["scene_id"].iloc[0]
    with tarfile.open(merged["bundles"] / f"{scene}.tar") as tar:
        members = sorted(tar.getnames())
    valid = sorted(f"chips/{scene}/{c}.nc"
                   for c in one[(one.scene_id == scene) & one.valid]["chip_id"])
    assert members == sorted([f"meta/{scene}.parquet", *valid])


def test_chip_step_reports_failed_scene(synth_dir: Path, tmp_path: Path) -> None:
    names = sorted(p.name for p in (synth_dir / "items").glob("*.json"))[:2]
    inputs, root = _instance(tmp_path, "algo-1")
    items = _mount_items(synth_dir, inputs / "items", names)
    broken = json.loads((items / names[0]).read_text())
    broken["assets"]["red"]["href"] = str(tmp_path / "gone" / "red.tif")
    (items / names[0]).write_text(json.dumps(broken))
    code = chip_step.main(["--items", str(items), "--root", str(root), "--host", "algo-1",
                           "--chip-size", "64", "--no-progress"])
    assert code == 1
    manifest = json.loads((root / "manifests" / "chip-algo-1.json").read_text())
    failures = manifest["stages"]["chip"]["failures"]
    assert [f["unit"] for f in failures] == [Path(names[0]).stem]
    assert [p.stem for p in (root / "bundles").glob("*.tar")] == [Path(names[1]).stem]


def test_chip_step_empty_shard_and_missing_mount(tmp_path: Path) -> None:
    inputs, root = _instance(tmp_path, "algo-3")
    (inputs / "items").mkdir(parents=True)
    assert chip_step.main(["--items", str(inputs / "items"), "--root", str(root)]) == 0
    assert not any((root / "bundles").iterdir())
    assert chip_step.main(["--items", str(tmp_path / "nope"), "--root", str(root)]) == 1
