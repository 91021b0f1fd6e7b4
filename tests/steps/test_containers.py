"""The container images and the pipeline name only entry points that exist."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"processing": REPO / "containers" / "processing" / "Dockerfile",
               "embedding": REPO / "containers" / "embedding" / "Dockerfile"}
STEP_MODULE = re.compile(r"geofm\.steps\.[a-z_]+")


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip()
             .startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_named_step_modules_exist() -> None:
    sources = [*DOCKERFILES.values(), REPO / "containers" / "README.md",
               REPO / "pipelines" / "sagemaker_pipeline.py"]
    named = {m for path in sources for m in STEP_MODULE.findall(path.read_text())}
    named.discard("geofm.steps._mounts")  # referenced as documentation, not run
    assert {"geofm.steps.chip", "geofm.steps.embed", "geofm.steps.analyze",
            "geofm.steps.index"} <= named
    for module in sorted(named):
        assert importlib.util.find_spec(module) is not None, module
        assert callable(importlib.import_module(module).main), module


def test_dockerfiles_leave_the_entrypoint_to_the_processor() -> None:
    for name, path in DOCKERFILES.items():
        instructions = _instructions(path)
        kinds = [k for k, _ in instructions]
        assert "ENTRYPOINT" not in kinds and "CMD" not in kinds, name
        for kind, args in instructions:
            if kind == "COPY":  # copies only what exists in the build context (repo root)
                for src in args.split()[:-1]:
                    assert (REPO / src).exists(), (name, src)
                    assert not src.endswith((".ckpt", ".pt", ".safetensors")), (name, src)


def test_base_images() -> None:
    processing = dict(_instructions(DOCKERFILES["processing"]))
    assert processing["FROM"] == "python:3.11-slim"
    assert "download.pytorch.org/whl/cpu" in DOCKERFILES["processing"].read_text()
    embedding = DOCKERFILES["embedding"].read_text()
    base = re.search(r"ARG BASE_IMAGE=(\S+)", embedding)
    assert base and "cuda" in base.group(1) and base.group(1).startswith("pytorch/pytorch:")
