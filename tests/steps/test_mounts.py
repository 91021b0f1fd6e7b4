"""Run-root assembly from SageMaker-style mounts: links, bundles, manifests, host name."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from geofm.exceptions import GeofmFileExistsError, GeofmFileNotFoundError, GeofmValueError
from geofm.steps import _mounts


def test_container_paths_only_as_defaults() -> None:
    assert _mounts.input_dir("meta") == "/opt/ml/processing/input/meta"
    assert _mounts.output_dir("embeddings") == "/opt/ml/processing/root/embeddings"
    parser = _mounts.step_parser("analyze", None)
    assert parser.parse_args([]).root == Path("/opt/ml/processing/root")
    args, rest = parser.parse_known_args(["--root", "/x", "--embedding", "mean"])
    assert args.root == Path("/x") and rest == ["--embedding", "mean"]
    # no abbreviations: a stage option --ro... must not be taken for --root
    assert parser.parse_known_args(["--ro", "1"])[1] == ["--ro", "1"]


def test_link_inputs(tmp_path: Path) -> None:
    meta = tmp_path / "input" / "meta"
    meta.mkdir(parents=True)
    (meta / "a.parquet").write_bytes(b"x")
    root = tmp_path / "root"
    (root / "meta").mkdir(parents=True)  # an empty folder (e.g. made by the platform)
    _mounts.link_inputs(root, {"meta": meta})
    assert (root / "meta").is_symlink() and (root / "meta" / "a.parquet").read_bytes() == b"x"
    _mounts.link_inputs(root, {"meta": meta})  # idempotent
    other = tmp_path / "input" / "other"
    other.mkdir()
    _mounts.link_inputs(root, {"meta": other})  # a stale link is replaced
    assert (root / "meta").resolve() == other.resolve()

    (root / "embeddings").mkdir()
    (root / "embeddings" / "b.parquet").write_bytes(b"y")
    with pytest.raises(GeofmFileExistsError, match="embeddings exists and is not the input"):
        _mounts.link_inputs(root, {"embeddings": meta})
    with pytest.raises(GeofmFileNotFoundError, match="analysis folder .*missing.* does not exist"):
        _mounts.link_inputs(root, {"analysis": tmp_path / "missing"})


def test_bundles_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for scene, chips in (("S1", ["c1", "c2"]), ("S2", [])):
        (root / "meta").mkdir(parents=True, exist_ok=True)
        (root / "meta" / f"{scene}.parquet").write_bytes(scene.encode())
        for c in chips:
            (root / "chips" / scene).mkdir(parents=True, exist_ok=True)
            (root / "chips" / scene / f"{c}.nc").write_bytes(c.encode())
    (root / "thumbnails").mkdir()
    bundles = _mounts.write_bundles(root, root / "bundles")
    assert [b.name for b in bundles] == ["S1.tar", "S2.tar"]
    with tarfile.open(bundles[0]) as tar:
        assert sorted(tar.getnames()) == ["chips/S1/c1.nc", "chips/S1/c2.nc", "meta/S1.parquet"]

    other = tmp_path / "other"
    assert _mounts.extract_bundles(root / "bundles", other) == ["S1", "S2"]
    assert (other / "chips" / "S1" / "c2.nc").read_bytes() == b"c2"
    assert (other / "meta" / "S2.parquet").read_bytes() == b"S2"

    evil = tmp_path / "evil"
    evil.mkdir()
    with tarfile.open(evil / "x.tar", "w") as tar:
        tar.add(root / "meta" / "S1.parquet", arcname="analysis/x.parquet")
    with pytest.raises(GeofmValueError, match="member 'analysis/x.parquet' outside meta/"):
        _mounts.extract_bundles(evil, tmp_path / "third")


def test_bundles_of_an_encoded_scene_id(tmp_path: Path) -> None:
    from geofm.layout import RunRoot

    run = RunRoot.of(tmp_path / "root")
    run.meta_path("S2A/2021").parent.mkdir(parents=True)
    run.meta_path("S2A/2021").write_bytes(b"m")
    run.chip_path("S2A/2021", "c1").parent.mkdir(parents=True)
    run.chip_path("S2A/2021", "c1").write_bytes(b"c")
    (bundle,) = _mounts.write_bundles(run.path, tmp_path / "bundles")
    assert bundle.name == "S2A%2F2021.tar"
    with tarfile.open(bundle) as tar:
        assert sorted(tar.getnames()) == ["chips/S2A%2F2021/c1.nc", "meta/S2A%2F2021.parquet"]
    other = RunRoot.of(tmp_path / "other")
    assert _mounts.extract_bundles(tmp_path / "bundles", other.path) == ["S2A/2021"]
    assert other.chip_path("S2A/2021", "c1").read_bytes() == b"c"


def test_manifest_and_host(tmp_path: Path) -> None:
    assert _mounts.current_host(tmp_path / "none.json") == "local"
    config = tmp_path / "resourceconfig.json"
    config.write_text(json.dumps({"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}))
    assert _mounts.current_host(config) == "algo-2"
    root = tmp_path / "root"
    assert _mounts.publish_manifest(root, "chip", "algo-2") is None
    root.mkdir()
    (root / "run.json").write_text('{"stages": {}}')
    published = _mounts.publish_manifest(root, "chip", "algo-2")
    assert published == root / "manifests" / "chip-algo-2.json"
    assert published.read_text() == '{"stages": {}}'
    assert _mounts.has_option(["--model=tiny"], "--model")
    assert not _mounts.has_option(["--models", "x"], "--model")
