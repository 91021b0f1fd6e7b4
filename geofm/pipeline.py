"""``geofm run``: chip -> embed -> analyze -> index in one process, from YAML or flags.

The configuration file maps each stage to the keyword arguments of its library
function, so the schema *is* the library API and cannot drift from it::

    items: data/items          # folder of STAC items, an ItemCollection, or one item
    # or, instead of items, search a STAC API first (geofm.chip.search.StacQuery fields):
    # stac: {url: https://earth-search.aws.element84.com/v1, collections: [sentinel-2-c1-l2a],
    #        bbox: [-55.2, -9.9, -55.0, -9.7], datetime: 2023-01-01/2023-12-31,
    #        max_cloud_cover: 30, max_items: 100}     # (aoi: FILE instead of bbox)
    root: runs/amazon-2023     # run root
    stages: [chip, embed, analyze, index]
    overwrite: false
    chip:    {chip_size: 256, bands: blue,green,red,nir, max_cloud: 0.05}
    embed:   {model: tiny, batch_size: 64}          # or checkpoint: clay-v1.5.ckpt
    analyze: {embedding: cls, signal: pc1}
    index:   {embedding: cls}

Unknown keys and values of the wrong type (or outside an option's choices) are errors
that list what is valid. Command line flags override the file: the shared stage flags
(:data:`RUN_FLAGS`, e.g. ``--chip-size``, ``--device``), the ``--stac`` search flags (the
``stac`` section), and ``--set embed.batch_size=32`` for any option. Every flag and key
comes from the stage's declaration (:mod:`geofm.options`), so its name, type, choices
and help are those of ``geofm <stage>``.
Re-running resumes: every stage skips work whose output is complete. Re-running on a
grown item set (a STAC search window moved forward) does only the new work: chip and
embed process the new scenes, analyze updates incrementally against its reference
(alerts for what changed, see :mod:`geofm.analyze.alerts`), index appends.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError
from geofm.manifest import StageRecord

log = logging.getLogger(__name__)

#: stage name -> (module, library function); the order is the pipeline's.
STAGES: dict[str, tuple[str, str]] = {
    "chip": ("geofm.chip", "chip"),
    "embed": ("geofm.embed", "embed"),
    "analyze": ("geofm.analyze", "analyze"),
    "index": ("geofm.index", "build_index"),
}
_TOP_LEVEL = ("items", "stac", "root", "stages", "overwrite", "progress")
#: ``geofm run`` flags shared with the stages: option -> the stages it sets (the flag,
#: type, choices and help are the first stage's declaration, :mod:`geofm.options`).
RUN_FLAGS: dict[str, tuple[str, ...]] = {
    "chip_size": ("chip",), "bands": ("chip",), "aoi": ("chip",), "max_cloud": ("chip",),
    "workers": ("chip",), "checkpoint": ("embed",), "model": ("embed",),
    "batch_size": ("embed",), "device": ("embed",), "embedding": ("analyze", "index"),
}


def stac_keys() -> tuple[str, ...]:
    """Keys of the ``stac`` mapping: the ``--stac`` flags' fields, and ``aoi``.

    The fields are :class:`~geofm.chip.search.StacQuery`'s; ``aoi`` is a file that
    stands for ``intersects``.
    """
    from geofm.chip.search import query_options

    keys = list(query_options())
    keys.insert(keys.index("bbox") + 1, "aoi")
    return tuple(keys)


def stage_cli_options(stage: str) -> dict[str, Any]:
    """The declared options of ``stage`` (its ``cli_options()``, :mod:`geofm.options`)."""
    module_name, _ = STAGES[stage]
    options: dict[str, Any] = importlib.import_module(f"{module_name}.stage").cli_options()
    return options


def stage_function(stage: str) -> Callable[..., StageRecord]:
    """Return the library function of ``stage``."""
    module_name, func_name = STAGES[stage]
    func: Callable[..., StageRecord] = getattr(importlib.import_module(module_name), func_name)
    return func


def stage_options(stage: str) -> dict[str, inspect.Parameter]:
    """Keyword-only options of a stage's library function, by name."""
    params = inspect.signature(stage_function(stage)).parameters
    return {n: p for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


@dataclass
class PipelineConfig:
    """A validated pipeline configuration.

    Attributes:
        items: STAC items (folder, ItemCollection or one item); needed when ``chip`` runs,
            unless ``stac`` is given.
        stac: a STAC API search (:func:`stac_keys`) whose saved items ``chip`` reads.
        root: run root.
        stages: stages to run, in pipeline order.
        overwrite: recompute outputs that exist.
        progress: show progress bars.
        options: per-stage keyword arguments for the library functions.
    """

    root: Path
    items: Path | None = None
    stac: dict[str, Any] | None = None
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    overwrite: bool = False
    progress: bool = True
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "configuration"
                     ) -> PipelineConfig:
        """Validate a plain mapping (from YAML or flags) against the stage signatures."""
        unknown = set(data) - set(_TOP_LEVEL) - set(STAGES)
        if unknown:
            raise GeofmValueError(
                f"{source}: unknown key(s) {', '.join(sorted(unknown))}; valid top-level keys: "
                f"{', '.join(_TOP_LEVEL + tuple(STAGES))}")
        if not data.get("root"):
            raise GeofmValueError(f"{source}: 'root' (the run root folder) is required; "
                                  "set it in the file or pass --root")
        stages = list(data.get("stages") or STAGES)
        bad = [s for s in stages if s not in STAGES]
        if bad:
            raise GeofmValueError(f"{source}: unknown stage(s) {', '.join(bad)}; "
                                  f"valid stages: {', '.join(STAGES)}")
        stages = [s for s in STAGES if s in stages]
        stac = data.get("stac")
        if stac is not None:
            if not isinstance(stac, Mapping) or not stac.get("url") or \
                    not stac.get("collections"):
                raise GeofmValueError(f"{source}: 'stac' must be a mapping with at least "
                                      "'url' and 'collections'")
            valid_keys = stac_keys()
            bad_keys = sorted(set(stac) - set(valid_keys))
            if bad_keys:
                raise GeofmValueError(f"{source}: unknown stac key(s) {', '.join(bad_keys)}; "
                                      f"valid keys: {', '.join(valid_keys)}")
            if data.get("items"):
                raise GeofmValueError(f"{source}: give 'items' or 'stac', not both")
        if "chip" in stages and not data.get("items") and stac is None:
            raise GeofmValueError(f"{source}: 'items' is required when the chip stage runs; "
                                  "set it in the file or pass --items (or give 'stac')")
        options: dict[str, dict[str, Any]] = {}
        for stage in stages:
            given = data.get(stage) or {}
            if not isinstance(given, Mapping):
                raise GeofmValueError(f"{source}: '{stage}' must be a mapping of options, "
                                      f"got {type(given).__name__}")
            options[stage] = _validate_options(stage, dict(given), source=source)
        items = Path(data["items"]) if data.get("items") else None
        return cls(root=Path(data["root"]), items=items,
                   stac=dict(stac) if stac is not None else None, stages=stages,
                   overwrite=bool(data.get("overwrite", False)),
                   progress=bool(data.get("progress", True)), options=options)


def _validate_options(stage: str, given: dict[str, Any], *, source: str) -> dict[str, Any]:
    valid = stage_options(stage)
    reserved = {"overwrite", "progress"}
    unknown = sorted(set(given) - set(valid) - reserved)
    if unknown:
        choices = ", ".join(n for n in valid if n not in reserved)
        raise GeofmValueError(f"{source}: unknown option(s) {', '.join(unknown)} for stage "
                              f"'{stage}'; valid options: {choices}")
    declared = stage_cli_options(stage)
    for name, value in given.items():
        allowed = declared[name].choices if name in declared else None
        if allowed is not None and value is not None and value not in allowed:
            raise GeofmValueError(f"{source}: option '{stage}.{name}' must be one of "
                                  f"{', '.join(map(str, allowed))}, got {value!r}")
        default = valid[name].default if name in valid else None
        if value is None or default is None or default is inspect.Parameter.empty:
            continue
        expected = type(default)
        ok = isinstance(value, expected) or (expected is float and isinstance(value, int)) or (
            expected in (tuple, list) and isinstance(value, (list, tuple, str)))
        if isinstance(value, bool) and expected is not bool:
            ok = False
        if not ok:
            raise GeofmValueError(f"{source}: option '{stage}.{name}' must be "
                                  f"{expected.__name__}, got {value!r}")
    return given


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a pipeline YAML file into a mapping (relative paths resolved against it)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise GeofmFileNotFoundError(f"pipeline configuration {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise GeofmValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise GeofmValueError(f"{path}: the top level must be a mapping of keys")
    for key in ("items", "root"):
        if data.get(key) and not Path(str(data[key])).is_absolute() and "://" not in str(data[key]):
            data[key] = str(path.parent / str(data[key]))
    stac = data.get("stac")
    if isinstance(stac, dict) and stac.get("aoi") and not Path(str(stac["aoi"])).is_absolute():
        stac["aoi"] = str(path.parent / str(stac["aoi"]))
    return data


def run_pipeline(config: PipelineConfig) -> dict[str, StageRecord]:
    """Run the configured stages in order; return each stage's record.

    A stage with failed units (a bad scene, an unreadable chip) does not stop the run:
    later stages work on what was written, and the failures stay in ``run.json``. A
    fatal error (bad checkpoint, empty input) stops the run with that error.

    The run root's writer lock (:mod:`geofm.lock`) is held from the first stage to the
    last, so no other writer can slip in between two stages.

    Raises:
        RootLockedError: another process is writing into the run root.
    """
    from geofm.lock import root_lock

    with root_lock(config.root, stage="run"):
        return _run_stages(config)


def _run_stages(config: PipelineConfig) -> dict[str, StageRecord]:
    records: dict[str, StageRecord] = {}
    for stage in config.stages:
        kwargs = dict(config.options.get(stage, {}))
        accepted = stage_options(stage)
        for name, value in (("overwrite", config.overwrite), ("progress", config.progress)):
            if name in accepted:
                kwargs.setdefault(name, value)
        log.info("stage %s: %s", stage, kwargs)
        func = stage_function(stage)
        if stage == "chip":
            items = config.items if config.stac is None else _search(config)
            records[stage] = func(items, config.root, **kwargs)
        else:
            records[stage] = func(config.root, **kwargs)
        failures = records[stage].failures
        if failures:
            log.error("stage %s: %d unit(s) failed (see %s); continuing with the rest",
                      stage, len(failures), Path(config.root) / "run.json")
    return records


def _search(config: PipelineConfig) -> Path:
    """Run the configuration's STAC search; the saved items file (see ``geofm.chip.search``)."""
    from geofm.chip.search import StacQuery, aoi_geometry, search_items

    stac = dict(config.stac or {})
    collections = stac.pop("collections")
    aoi = stac.pop("aoi", None)
    bbox = stac.pop("bbox", None)
    query = StacQuery(
        collections=(collections,) if isinstance(collections, str) else tuple(collections),
        bbox=None if bbox is None else tuple(float(v) for v in bbox),  # type: ignore[arg-type]
        intersects=aoi_geometry(aoi) if aoi else None, **stac)
    return search_items(config.root, query, overwrite=config.overwrite)


def _parse_set(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        stage, dot, option = key.partition(".")
        if not sep or not dot:
            raise GeofmValueError(f"--set {pair!r}: expected STAGE.OPTION=VALUE, "
                                  "e.g. --set embed.batch_size=32")
        out.setdefault(stage, {})[option] = yaml.safe_load(value)
    return out


def _run_flag_options() -> list[Any]:
    """The declared options behind :data:`RUN_FLAGS`, in that order."""
    return [stage_cli_options(stages[0])[name] for name, stages in RUN_FLAGS.items()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``geofm run``; the stage flags come from the stages' declarations."""
    from geofm.chip.search import query_options
    from geofm.options import add_arguments as add_options

    parser.add_argument("--config", type=Path, help="pipeline YAML (see `geofm.pipeline`)")
    parser.add_argument("--items", help="STAC items: folder, ItemCollection or one item")
    parser.add_argument("--root", help="run root folder")
    parser.add_argument("--stages", help="comma list of stages (default: chip,embed,analyze,index)")
    add_options(parser, _run_flag_options(), override=True)
    group = parser.add_argument_group("STAC API search (instead of --items; the 'stac' "
                                      "section of the YAML)")
    add_options(group, query_options().values(), override=True)
    parser.add_argument("--set", action="append", default=[], metavar="STAGE.OPTION=VALUE",
                        help="any stage option, e.g. --set analyze.threshold=4 (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="recompute existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _stac_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``stac`` mapping the ``--stac`` flags give (None without any).

    Raises:
        GeofmValueError: search flags without ``--stac``.
    """
    from geofm.chip.search import query_options
    from geofm.options import library_kwargs

    given = library_kwargs(args, query_options().values(), given_only=True)
    if not given:
        return None
    if "url" not in given:
        raise GeofmValueError(f"{', '.join(query_options()[k].flag for k in given)} go(es) "
                              "with --stac URL; add it or drop them")
    if args.aoi and "bbox" not in given:
        given["aoi"] = args.aoi  # as in `geofm chip --stac`: the AOI is the search area
    return given


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Merge a YAML file (if any) with command-line overrides and validate."""
    from geofm.options import library_kwargs

    data: dict[str, Any] = load_config(args.config) if args.config else {}
    source = str(args.config) if args.config else "command line"
    for key in ("items", "root"):
        if getattr(args, key):
            data[key] = getattr(args, key)
    if args.stages:
        data["stages"] = [s.strip() for s in args.stages.split(",") if s.strip()]
    if args.overwrite:
        data["overwrite"] = True
    if args.no_progress:
        data["progress"] = False
    stac = _stac_from_args(args)
    if stac is not None:
        data["stac"] = {**(data.get("stac") or {}), **stac}
    for name, value in library_kwargs(args, _run_flag_options(), given_only=True).items():
        for stage in RUN_FLAGS[name]:
            data.setdefault(stage, {})[name] = value
    for stage, opts in _parse_set(args.set).items():
        data.setdefault(stage, {}).update(opts)
    return PipelineConfig.from_mapping(data, source=source)


def run_cli(args: argparse.Namespace) -> int:
    """``geofm run``: exit 0 if every stage succeeded, 1 if any unit failed, 2 if misused."""
    import sys

    try:
        _stac_from_args(args)
    except GeofmValueError as exc:
        print(f"geofm run: error: {exc}", file=sys.stderr)
        return 2
    records = run_pipeline(config_from_args(args))
    for stage, record in records.items():
        counts = ", ".join(f"{k}={v}" for k, v in record.counts.items())
        status = "FAILED" if record.failures else "ok"
        print(f"{stage:8s} {status:6s} {counts}")
    return 1 if any(r.failures for r in records.values()) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m geofm.pipeline`` = ``geofm run``."""
    from geofm.cli import stage_main

    return stage_main("run", argv)
