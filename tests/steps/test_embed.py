"""``python -m geofm.steps.embed`` on scene bundles sharded across two instances."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError, GeofmWarning
from geofm.steps import _mounts
from geofm.steps import embed as embed_step


def _instance(tmp: Path, host: str) -> tuple[Path, Path]:
    base = tmp / host / "opt" / "ml" / "processing"
    for name in ("embeddings", "manifests"):
        (base / "root" / name).mkdir(parents=True)
    return base / "input", base / "root"


def _embeddings(folder: Path) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))]
    return pd.concat(frames).sort_values(["scene_id", "chip_id"]).reset_index(drop=True)


@pytest.mark.slow
def test_embed_step_on_two_shards(chipped_root: Path, embedded_root: Path,
                                  tmp_path: Path) -> None:
    bundles = _mounts.write_bundles(chipped_root, tmp_path / "s3" / "bundles")
    merged = tmp_path / "s3" / "embeddings"
    merged.mkdir()
    for shard, host in enumerate(("algo-1", "algo-2")):
        inputs, root = _instance(tmp_path, host)
        (inputs / "bundles").mkdir(parents=True)
        for bundle in bundles[shard::2]:  # what ShardedByS3Key hands this instance
            shutil.copy(bundle, inputs / "bundles")
        with pytest.warns(GeofmWarning, match="RANDOM WEIGHTS"):
            code = embed_step.main(["--bundles", str(inputs / "bundles"), "--root", str(root),
                                    "--host", host, "--checkpoint-dir", str(inputs / "none"),
                                    "--model", "tiny", "--batch-size", "8", "--no-progress",
                                    "--workers", "0"])
        assert code == 0
        manifest = json.loads((root / "manifests" / f"embed-{host}.json").read_text())
        assert manifest["stages"]["embed"]["status"] == "ok"
        written = sorted(p.name for p in (root / "embeddings").glob("*.parquet"))
        # scenes without valid chips have no embeddings file (as in a local run)
        expected = sorted(f"{b.stem}.parquet" for b in bundles[shard::2]
                          if (embedded_root / "embeddings" / f"{b.stem}.parquet").exists())
        assert written == expected and written
        for f in written:
            shutil.copy(root / "embeddings" / f, merged / f)
    # the shards together are the unsharded run, vector for vector
    got, want = _embeddings(merged), _embeddings(embedded_root / "embeddings")
    pd.testing.assert_frame_equal(got[["scene_id", "chip_id", "date"]],
                                  want[["scene_id", "chip_id", "date"]])
    for a, b in zip(got["embedding"], want["embedding"], strict=True):
        assert list(a) == pytest.approx(list(b), abs=1e-5)


def test_find_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint"
    with pytest.raises(GeofmFileNotFoundError, match="no checkpoint file in .*CheckpointUri"):
        embed_step.find_checkpoint(folder)
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "clay-v1.5.ckpt").write_bytes(b"x")
    (folder / ".hidden").write_bytes(b"x")
    assert embed_step.find_checkpoint(folder) == folder / "sub" / "clay-v1.5.ckpt"
    (folder / "other.pt").write_bytes(b"x")
    with pytest.raises(GeofmValueError, match="2 files in checkpoint folder"):
        embed_step.find_checkpoint(folder)


def test_embed_step_needs_a_checkpoint(chipped_root: Path, tmp_path: Path) -> None:
    inputs, root = _instance(tmp_path, "algo-1")
    bundles = _mounts.write_bundles(chipped_root, inputs / "bundles")
    assert bundles
    code = embed_step.main(["--bundles", str(inputs / "bundles"), "--root", str(root),
                            "--checkpoint-dir", str(inputs / "checkpoint")])
    assert code == 1  # no checkpoint mounted and no --model: refused before any work
    assert not any((root / "embeddings").iterdir())
    # an empty shard is not an error
    (inputs / "empty").mkdir()
    assert embed_step.main(["--bundles", str(inputs / "empty"), "--root",
                            str(tmp_path / "r2")]) == 0


def test_embed_step_reads_checkpoint_from_its_input(chipped_root: Path, tmp_path: Path) -> None:
    import torch

    from geofm.model import load_encoder

    inputs, root = _instance(tmp_path, "algo-1")
    bundles = _mounts.write_bundles(chipped_root, tmp_path / "all")
    (inputs / "bundles").mkdir(parents=True)
    shutil.copy(bundles[0], inputs / "bundles")
    with pytest.warns(GeofmWarning, match="RANDOM WEIGHTS"):
        encoder = load_encoder(preset="tiny")
    (inputs / "checkpoint").mkdir()
    torch.save(encoder.state_dict(), inputs / "checkpoint" / "encoder.pt")
    code = embed_step.main(["--bundles", str(inputs / "bundles"), "--root", str(root),
                            "--checkpoint-dir", str(inputs / "checkpoint"), "--no-progress",
                            "--workers", "0"])
    assert code == 0
    manifest = json.loads((root / "manifests" / "embed-local.json").read_text())
    assert json.dumps(manifest["stages"]["embed"]).count("encoder.pt") >= 1
    assert (root / "embeddings" / f"{bundles[0].stem}.parquet").is_file()
