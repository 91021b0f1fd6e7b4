"""Shared plumbing of the processing-job entry points: mounts, run-root assembly, bundles.

How a step sees its data (SageMaker Processing, or the same layout on a laptop):

* Every ProcessingInput is mounted read-only under its own folder,
  ``/opt/ml/processing/input/<name>`` (:func:`input_dir`). A step never writes there.
* The step's **run root** is ``/opt/ml/processing/root`` (``--root``). Input folders that
  hold a run-root folder (``meta``, ``embeddings``, ``analysis``) are *symlinked* into
  the root under that name (:func:`link_inputs`), so the stage reads them in place, with
  no copy; folders the stage writes (``embeddings``, ``analysis``, ``index`` ...) are real
  folders in the root.
* Every ProcessingOutput is a folder of the run root, ``/opt/ml/processing/root/<name>``
  (:func:`output_dir`): SageMaker uploads exactly the folders declared as outputs, so
  symlinked inputs are never uploaded again. The S3 prefix of a run mirrors the run root
  (``meta/``, ``thumbnails/``, ``embeddings/``, ``analysis/``, ``index/``), which keeps the
  root-relative paths stored in the tables valid.
* Sharding. ``ShardedByS3Key`` splits an input by S3 *object*, not by folder, so a scene's
  chips (one object per chip) could land on different instances. The chip step therefore
  also writes one uncompressed tar per scene, ``bundles/<scene_id>.tar`` holding
  ``meta/<scene_id>.parquet`` and ``chips/<scene_id>/`` (:func:`write_bundle`); the embed
  step receives whole scenes by sharding over these bundles and unpacks them into its
  root (:func:`extract_bundles`).
* Incremental analysis. ``analyze`` keeps its reference and the scenes it has analysed
  in ``analysis/`` (``state.json``). Given the previous run's ``analysis/`` (the
  optional ``previous-analysis`` input, read-only), the step copies it into the root's
  own ``analysis/`` before the stage runs (:func:`seed_folder`), so the stage updates it
  (new scenes scored against the stored reference) instead of starting over.
* Manifests. Instances of a sharded step run in parallel and would overwrite each
  other's ``run.json`` in S3, so each step also copies its root's ``run.json`` to
  ``manifests/<stage>-<host>.json`` (:func:`publish_manifest`), ``<host>`` being the
  instance name from SageMaker's resource config (``algo-1`` ...; ``local`` elsewhere).

The ``/opt/ml/...`` paths live here and in the pipeline definition only; the library
stages take plain folders.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tarfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from geofm.exceptions import GeofmFileExistsError, GeofmFileNotFoundError, GeofmValueError
from geofm.ids import decode_id, encode_id
from geofm.io import atomic_path
from geofm.layout import RunRoot

log = logging.getLogger(__name__)

#: Folder under which SageMaker Processing mounts inputs and collects outputs.
PROCESSING_DIR = "/opt/ml/processing"
#: The run root a step assembles and writes (``--root``).
DEFAULT_ROOT = f"{PROCESSING_DIR}/root"
#: SageMaker's description of the cluster (``current_host``, ``hosts``).
RESOURCE_CONFIG = "/opt/ml/config/resourceconfig.json"

#: Step-made output folders (not stage folders of the run root).
BUNDLES = "bundles"
MANIFESTS = "manifests"
CONSOLIDATED = "consolidated"
#: Optional input of the analyze step: the ``analysis/`` folder of the previous run.
PREVIOUS_ANALYSIS = "previous-analysis"

#: What each step reads (input mounts) and writes (output folders of its root), in order.
STEP_INPUTS: dict[str, tuple[str, ...]] = {
    "chip": ("items",),
    "embed": (BUNDLES, "checkpoint"),
    "analyze": ("meta", "embeddings"),
    "index": ("meta", "embeddings", "analysis"),
}
#: Inputs a step takes only when given (``--<name>``; the pipeline's incremental variant).
STEP_OPTIONAL_INPUTS: dict[str, tuple[str, ...]] = {"analyze": (PREVIOUS_ANALYSIS,)}
STEP_OUTPUTS: dict[str, tuple[str, ...]] = {
    "chip": ("meta", "thumbnails", BUNDLES, MANIFESTS),
    "embed": ("embeddings", MANIFESTS),
    "analyze": ("analysis", MANIFESTS),
    "index": ("index", CONSOLIDATED, MANIFESTS),
}


def input_dir(name: str) -> str:
    """Container path where the ProcessingInput ``name`` is mounted."""
    return f"{PROCESSING_DIR}/input/{name}"


def output_dir(name: str, root: str = DEFAULT_ROOT) -> str:
    """Container path of the output folder ``name`` (a folder of the run root)."""
    return f"{root}/{name}"


def step_parser(stage: str, description: str | None) -> argparse.ArgumentParser:
    """Parser with the options every step has (``--root``, ``--host``).

    Options the step does not know are forwarded to the stage's own command line
    (``geofm <stage> --help`` lists them), so a step never re-declares stage options.
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m geofm.steps.{stage}", description=description, allow_abbrev=False,
        epilog=f"Other options are passed to `geofm {stage}` (see `geofm {stage} --help`).",
    )
    parser.add_argument("--root", type=Path, default=Path(DEFAULT_ROOT),
                        help="run root to assemble and write (default: %(default)s)")
    parser.add_argument("--host", default=None,
                        help="instance name used in manifests/<stage>-<host>.json "
                             f"(default: current_host of {RESOURCE_CONFIG}, else 'local')")
    return parser


def add_folder_inputs(parser: argparse.ArgumentParser, stage: str) -> argparse.ArgumentParser:
    """Add one ``--<name>`` folder option per run-root input of ``stage`` (analyze, index)."""
    for name in STEP_INPUTS[stage]:
        parser.add_argument(f"--{name}", type=Path, default=Path(input_dir(name)),
                            help=f"the {name}/ folder of the run (default: %(default)s)")
    return parser


def link_folder_inputs(args: argparse.Namespace, stage: str) -> None:
    """Link the folders given by :func:`add_folder_inputs`' options into ``args.root``."""
    link_inputs(args.root, {name: getattr(args, name) for name in STEP_INPUTS[stage]})


def current_host(resource_config: str | os.PathLike[str] = RESOURCE_CONFIG) -> str:
    """Name of this instance: SageMaker's ``current_host``, or ``"local"`` elsewhere."""
    path = Path(resource_config)
    if not path.is_file():
        return "local"
    with open(path, encoding="utf-8") as fh:
        return str(json.load(fh).get("current_host", "local"))


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder, else raise naming the mount that is missing."""
    if not path.is_dir():
        raise GeofmFileNotFoundError(
            f"{what} folder {path} does not exist; mount the ProcessingInput there or "
            f"pass the folder with the step's --{what} option"
        )
    return path


def link_inputs(root: Path, folders: Mapping[str, Path]) -> None:
    """Make each input folder appear in the run root under its name, by symlink.

    Args:
        root: run root (created if missing).
        folders: run-root folder name (``meta``, ``embeddings``, ...) -> input folder.

    Raises:
        GeofmFileExistsError: ``root/<name>`` exists already and is not a link to the
            same folder (a real folder would be silently shadowed otherwise).
    """
    root.mkdir(parents=True, exist_ok=True)
    for name, source in folders.items():
        source = require_dir(Path(source), name).resolve()
        target = root / name
        if target.is_symlink():
            if target.resolve() == source:
                continue
            target.unlink()
        elif target.exists():
            if target.is_dir() and not any(target.iterdir()):
                target.rmdir()
            elif target.resolve() == source:
                continue
            else:
                raise GeofmFileExistsError(
                    f"{target} exists and is not the input folder {source}; use an empty "
                    f"--root or remove {target}"
                )
        target.symlink_to(source, target_is_directory=True)
        log.info("run root %s: %s -> %s", root, name, source)


def seed_folder(root: Path, name: str, source: Path) -> Path:
    """Copy the input folder ``source`` into the run root as ``root/<name>``, to be updated.

    Unlike :func:`link_inputs`, the copy is a real folder the stage writes into (the
    mount is read-only); the output folder of the same name then holds the updated
    version. Used for the previous run's ``analysis/`` (incremental analysis).

    Args:
        root: run root (created if missing).
        name: run-root folder name, e.g. ``"analysis"``.
        source: the mounted folder.

    Returns:
        ``root/<name>``.

    Raises:
        GeofmFileNotFoundError: ``source`` is not a folder.
        GeofmFileExistsError: ``root/<name>`` is a link or a folder that is not empty
            (its contents would be mixed with the previous run's).
    """
    source = require_dir(Path(source), PREVIOUS_ANALYSIS if name == "analysis" else name)
    target = Path(root) / name
    if target.is_symlink() or (target.exists() and (not target.is_dir()
                                                    or any(target.iterdir()))):
        raise GeofmFileExistsError(
            f"{target} exists and is not an empty folder, so the previous {name}/ from "
            f"{source} cannot be copied there; use an empty --root or remove {target}")
    shutil.copytree(source, target, dirs_exist_ok=True)
    log.info("run root %s: %s copied from %s (to be updated)", root, name, source)
    return target


def write_bundle(root: Path, scene_id: str, out_dir: Path) -> Path:
    """Pack one scene's ``meta/<scene_id>.parquet`` and ``chips/<scene_id>/`` into a tar.

    Args:
        root: run root written by ``chip``.
        scene_id: STAC item id.
        out_dir: folder of the bundles.

    Returns:
        ``out_dir/<scene_id>.tar`` (the id as a file name: :func:`geofm.ids.encode_id`;
        uncompressed; members relative to the run root).
    """
    paths = RunRoot.of(root)
    bundle = out_dir / f"{encode_id(scene_id)}.tar"
    meta = paths.meta_path(scene_id)
    with atomic_path(bundle) as tmp, tarfile.open(tmp, "w") as tar:
        tar.add(meta, arcname=meta.relative_to(paths.path).as_posix())
        chips = paths.scene_chips_dir(scene_id)
        if chips.is_dir():
            for nc in sorted(chips.iterdir()):
                tar.add(nc, arcname=nc.relative_to(paths.path).as_posix())
    return bundle


def write_bundles(root: Path, out_dir: Path) -> list[Path]:
    """Bundle every scene of ``root/meta`` (see :func:`write_bundle`); return the tars."""
    paths = RunRoot.of(root)
    return [write_bundle(root, scene_id, out_dir)
            for scene_id in paths.scene_ids(paths.meta_dir)]


def extract_bundles(bundle_dir: Path, root: Path) -> list[str]:
    """Unpack every ``*.tar`` of ``bundle_dir`` into the run root.

    Args:
        bundle_dir: folder of scene bundles (this instance's shard).
        root: run root; ``meta/`` and ``chips/`` are created in it.

    Returns:
        The scene ids unpacked, sorted.

    Raises:
        GeofmValueError: a bundle has a member outside ``meta/`` or ``chips/``.
    """
    scenes = []
    for bundle in sorted(require_dir(bundle_dir, BUNDLES).glob("*.tar")):
        with tarfile.open(bundle) as tar:
            for member in tar.getmembers():
                if member.name.split("/", 1)[0] not in ("meta", "chips"):
                    raise GeofmValueError(
                        f"bundle {bundle} has member {member.name!r} outside meta/ and "
                        "chips/; bundles must be written by `python -m geofm.steps.chip`"
                    )
            tar.extractall(root, filter="data")
        scenes.append(decode_id(bundle.name[: -len(".tar")]))
    log.info("unpacked %d scene bundle(s) from %s into %s", len(scenes), bundle_dir, root)
    return sorted(scenes)


def publish_manifest(root: Path, stage: str, host: str) -> Path | None:
    """Copy ``root/run.json`` to ``root/manifests/<stage>-<host>.json``; None if absent."""
    source = RunRoot.of(root).manifest_path
    if not source.is_file():
        return None
    target = root / MANIFESTS / f"{stage}-{host}.json"
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def run_stage(stage: str, argv: Sequence[str]) -> int:
    """Run ``geofm <stage> argv`` in-process and return its exit code."""
    from geofm.cli import stage_main

    log.info("geofm %s %s", stage, " ".join(argv))
    return stage_main(stage, list(argv))


def has_option(argv: Sequence[str], *names: str) -> bool:
    """True if any of the options ``names`` appears in ``argv`` (``--x v`` or ``--x=v``)."""
    return any(a == n or a.startswith(f"{n}=") for a in argv for n in names)


def run_step(stage: str, args: argparse.Namespace, work: Callable[[], int]) -> int:
    """Run a step's ``work`` with CLI logging, error handling and manifest publishing.

    Args:
        stage: stage name (``chip``, ``embed``, ``analyze``, ``index``).
        args: the step's parsed options (``root``, ``host``).
        work: assembles the root, runs the stage, returns its exit code.

    Returns:
        The exit code: 0 success; 1 the stage failed, some of its units failed, or an
        input folder is missing (the message says which).
    """
    from geofm.exceptions import GeofmError
    from geofm.log import setup_logging

    setup_logging(0)
    try:
        return work()
    except GeofmError as exc:
        log.error("%s", exc)
        return 1
    finally:
        host = args.host or current_host()
        published = publish_manifest(args.root, stage, host)
        if published is not None:
            log.info("manifest: %s", published)
