"""Options declared once (geofm.options): every stage's flags, YAML keys and run.json config."""

from __future__ import annotations

import argparse
import importlib
import inspect
from pathlib import Path
from typing import Any, Literal

import pytest

from geofm.cli import build_parser
from geofm.options import MISSING, Cli, declare, docstring_args, library_kwargs

#: command -> (module with cli_options(), library function, its options left off the
#: command line on purpose: objects a flag cannot carry, or flags declared elsewhere).
COMMANDS: dict[str, tuple[str, str, set[str]]] = {
    "chip": ("geofm.chip.stage", "chip", set()),
    "embed": ("geofm.embed.stage", "embed", set()),
    "analyze": ("geofm.analyze.stage", "analyze", set()),
    "index": ("geofm.index.stage", "build_index", {"describe"}),  # --describe + provider
    "search": ("geofm.search.stage", "search", set()),
    "finetune": ("geofm.finetune.stage", "finetune", {"encoder"}),
    "predict": ("geofm.finetune.predict", "predict", {"encoder"}),
    "pretrain": ("geofm.pretrain.stage", "pretrain", {"decoder"}),
    "serve": ("geofm.serve.stage", "serve", set()),
    "report": ("geofm.generative.report", "changed_chips", set()),
}
#: flags whose command-line default differs from the library's, on purpose.
CLI_DEFAULTS = {("embed", "workers"), ("pretrain", "workers"), ("analyze", "plot_chips")}
PIPELINE_STAGES = ("chip", "embed", "analyze", "index")


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser(command)
    sub = parser._subparsers._group_actions[0]  # type: ignore[union-attr]
    return sub.choices[command]  # type: ignore[no-any-return]


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions}


def _declared(command: str) -> dict[str, Any]:
    module, _, _ = COMMANDS[command]
    return importlib.import_module(module).cli_options()  # type: ignore[no-any-return]


def _function(command: str) -> Any:
    module, name, _ = COMMANDS[command]
    return getattr(importlib.import_module(module), name)


def _same(a: Any, b: Any) -> bool:
    """Equal, counting a tuple default and the list argparse gives as one."""
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return list(a) == list(b)
    return bool(a == b)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_library_option_has_a_flag_with_its_default_and_help(command: str) -> None:
    func, declared = _function(command), _declared(command)
    left_off = COMMANDS[command][2]
    keyword_only = {n for n, p in inspect.signature(func).parameters.items()
                    if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keyword_only <= set(declared)
    actions = _actions(_subparser(command))
    assert {n for n, o in declared.items() if not o.cli.cli} == left_off
    for name in left_off:  # declared elsewhere on the parser, or an object
        assert name not in actions or name == "describe"
    for name, option in declared.items():
        if not option.cli.cli:
            continue
        action = actions[option.dest]
        assert option.flag in action.option_strings, (command, name)
        assert action.help == option.help_text(), (command, name)
        assert option.help  # the docstring's entry is the help unless the table says
        assert option.help.rstrip(".").replace("%", "%%") in (action.help or "") \
            or option.cli.help, (command, name)
        if option.choices is not None:
            assert tuple(action.choices or ()) == option.choices, (command, name)
        if (command, name) in CLI_DEFAULTS:
            assert option.cli.default is not MISSING
        elif option.default is not MISSING:
            assert _same(action.default, option.default), (command, name, action.default)


@pytest.mark.parametrize("command", COMMANDS)
def test_only_the_required_flags_give_the_library_defaults(command: str) -> None:
    declared = _declared(command)
    grouped = {o.cli.group for o in declared.values() if o.cli.group}
    argv: list[str] = []
    seen: set[str] = set()
    for option in declared.values():
        if not (option.cli.required and option.cli.cli):
            continue
        if option.cli.group:
            if option.cli.group in seen:
                continue
            seen.add(option.cli.group)
        argv += [option.flag, "tiny" if option.name == "model" else "x"]
    assert len(seen) == len(grouped)
    args = build_parser(command).parse_args([command, *argv])
    kwargs = library_kwargs(args, declared.values())
    for name, option in declared.items():
        if not option.cli.cli or option.cli.required or option.default is MISSING \
                or (command, name) in CLI_DEFAULTS:
            continue
        assert _same(kwargs[name], option.default), (command, name, kwargs[name])


def test_flags_keep_their_names() -> None:
    # flags users and scripts already write (the CLI must not change for them)
    expected = {
        "chip": ["--items", "--out", "--root", "--chip-size", "--bands", "--aoi", "--max-cloud",
                 "--max-nodata", "--grid-origin", "--no-cloud-mask", "--workers",
                 "--overwrite", "--no-progress", "--stac", "--collection", "--bbox",
                 "--datetime", "--max-cloud-cover", "--max-items"],
        "embed": ["--root", "--checkpoint", "--model", "--batch-size", "--device", "--patches",
                  "--precision", "--compile", "--workers", "--max-invalid", "--time-location",
                  "--seed", "--overwrite", "--no-progress"],
        "analyze": ["--root", "--embedding", "--baseline-start", "--monitor-start", "--signal",
                    "--n-components", "--threshold", "--consecutive", "--min-baseline",
                    "--center", "--tsne", "--plot-chips", "--max-plots", "--pca", "--refit",
                    "--overwrite", "--no-rasters", "--since", "--alerts-format",
                    "--no-progress"],
        "index": ["--root", "--embedding", "--overwrite", "--ann-min-rows", "--describe",
                  "--generative-provider", "--with-images"],
        "search": ["--root", "--chip-id", "--date", "--vector-file", "--negative-chip-id", "--k",
                   "--min-similarity", "--start", "--end", "--bbox", "--max-cloud", "--centre",
                   "--embedding", "--nprobes", "--refine-factor", "--distinct", "--format",
                   "--output", "--text", "--single-prompt", "--grouped-task", "--max-hits",
                   "--max-prompt-tokens", "--generative-provider", "--generative-model",
                   "--generative-endpoint", "--generative-base-url", "--sagemaker-format",
                   "--aws-region", "--aws-profile", "--temperature", "--max-tokens",
                   "--with-images"],
        "finetune": ["--root", "--labels", "--out", "--task", "--checkpoint", "--model",
                     "--epochs", "--batch-size", "--lr", "--weight-decay", "--class-weights",
                     "--patience", "--val-fraction", "--date-window-days", "--label-date",
                     "--n-classes", "--class-names", "--bands", "--pool", "--hidden",
                     "--out-channels", "--decoder", "--no-augment", "--sampling",
                     "--no-pixel-stats", "--epoch-samples", "--token-dropout", "--no-baseline",
                     "--no-whiten", "--cache", "--time-location", "--layers", "--device",
                     "--seed", "--overwrite", "--no-progress"],
        "predict": ["--root", "--head", "--out", "--checkpoint", "--model", "--batch-size",
                    "--device", "--scenes", "--overwrite", "--no-progress"],
        "pretrain": ["--root", "--out", "--model", "--checkpoint", "--epochs", "--mask-ratio",
                     "--batch-size", "--lr", "--val-fraction", "--device", "--precision",
                     "--time-location", "--workers", "--max-invalid", "--seed", "--overwrite",
                     "--no-progress"],
        "serve": ["--root", "--host", "--port"],
        "report": ["--root", "--all", "--limit", "--format", "--output", "--single-prompt",
                   "--generative-provider"],
        "run": ["--config", "--items", "--root", "--stages", "--chip-size", "--bands", "--aoi",
                "--max-cloud", "--workers", "--checkpoint", "--model", "--batch-size",
                "--device", "--embedding", "--set", "--overwrite", "--no-progress", "--stac"],
    }
    for command, flags in expected.items():
        known = {s for a in _subparser(command)._actions for s in a.option_strings}
        assert set(flags) <= known, (command, set(flags) - known)


def test_model_choices_agree() -> None:
    from geofm.model.presets import PRESETS

    for command in ("embed", "finetune", "predict", "pretrain", "run"):
        assert tuple(_actions(_subparser(command))["model"].choices or ()) == tuple(PRESETS)
    assert build_parser("finetune").parse_args(
        ["finetune", "--root", "r", "--labels", "l", "--out", "o", "--model", "tiny"]).model \
        == "tiny"
    with pytest.raises(SystemExit) as exc:
        build_parser("finetune").parse_args(
            ["finetune", "--root", "r", "--labels", "l", "--out", "o", "--model", "huge"])
    assert exc.value.code == 2


# --- geofm run: YAML keys and flags --------------------------------------------------


@pytest.mark.parametrize("stage", PIPELINE_STAGES)
def test_every_stage_option_is_a_run_yaml_key_with_its_default(stage: str) -> None:
    from geofm.pipeline import PipelineConfig, stage_cli_options, stage_options

    declared = stage_cli_options(stage)
    assert set(stage_options(stage)) <= set(declared)
    given = {n: o.default for n, o in declared.items()
             if n in stage_options(stage) and o.default is not MISSING}
    config = PipelineConfig.from_mapping({"root": "r", "items": "i", "stages": [stage],
                                          stage: given})
    assert config.options[stage] == given


def test_run_flags_share_the_stage_declarations() -> None:
    from geofm.pipeline import RUN_FLAGS, stage_cli_options

    run = _actions(_subparser("run"))
    for name, stages in RUN_FLAGS.items():
        option = stage_cli_options(stages[0])[name]  # the declaring stage
        stage_action = _actions(_subparser(stages[0]))[option.dest]
        assert run[name].help == stage_action.help == option.help_text(), name
        assert run[name].default is None  # not given: the YAML's or the library's
        for stage in stages:  # every stage the flag sets takes the same values
            stage_action = _actions(_subparser(stage))[option.dest]
            assert run[name].option_strings == stage_action.option_strings, name
            assert run[name].choices == stage_action.choices, name
            assert run[name].type == stage_action.type, name


def test_run_device_accepts_what_the_library_accepts_and_run_choices_are_checked() -> None:
    from geofm.exceptions import GeofmValueError
    from geofm.pipeline import PipelineConfig, config_from_args

    args = build_parser("run").parse_args(
        ["run", "--root", "r", "--stages", "embed", "--device", "cuda:1", "--model", "tiny",
         "--embedding", "mean"])
    config = config_from_args(args)
    assert config.options["embed"] == {"device": "cuda:1", "model": "tiny"}
    with pytest.raises(GeofmValueError, match=r"'embed.model' must be one of tiny, small"):
        PipelineConfig.from_mapping({"root": "r", "stages": ["embed"],
                                     "embed": {"model": "huge"}})


def test_run_stac_flags_make_the_stac_section(tmp_path: Path) -> None:
    from geofm.pipeline import config_from_args, stac_keys

    aoi = tmp_path / "aoi.geojson"
    args = build_parser("run").parse_args(
        ["run", "--root", "r", "--stac", "http://127.0.0.1:1", "--collection", "a,b",
         "--datetime", "2024-01-01/2024-12-31", "--max-items", "5", "--aoi", str(aoi)])
    config = config_from_args(args)
    assert config.items is None
    assert config.stac == {"url": "http://127.0.0.1:1", "collections": ("a", "b"),
                           "datetime": "2024-01-01/2024-12-31", "max_items": 5,
                           "aoi": str(aoi)}
    assert config.options["chip"] == {"aoi": str(aoi)}
    assert set(config.stac) <= set(stac_keys())
    bare = build_parser("run").parse_args(["run", "--root", "r", "--items", "i",
                                           "--collection", "a"])
    from geofm.exceptions import GeofmValueError

    with pytest.raises(GeofmValueError, match="--collection go.*with --stac URL"):
        config_from_args(bare)


def test_run_bad_stac_flags_exit_2_with_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    from geofm.cli import main

    assert main(["run", "--root", "r", "--items", "i", "--max-items", "3"]) == 2
    assert "geofm run: error: --max-items go(es) with --stac URL" in capsys.readouterr().err


# --- SageMaker pipeline parameters ---------------------------------------------------


def test_sagemaker_stage_parameters_come_from_the_declarations() -> None:
    sm = importlib.import_module("pipelines.sagemaker_pipeline")
    from geofm.pipeline import stage_cli_options

    class Param(str):
        def to_string(self) -> str:
            return f"{self}.to_string()"

    specs = {p.name: p for p in sm.PARAMETERS}
    for stage, name, default in sm.STAGE_PARAMETERS:
        option = stage_cli_options(stage)[name]
        spec = specs[sm.parameter_name(name)]
        assert spec.kind is option.kind
        assert spec.default == (option.default if default is None else default)
        assert spec.help == (option.cli.help or option.help)
        arguments = sm.stage_arguments(stage, {n: Param(n) for n in specs})
        given = arguments[arguments.index(option.flag) + 1]
        assert given == (spec.name if spec.kind is str else f"{spec.name}.to_string()")
    assert [p.name for p in sm.PARAMETERS][:8] == [
        "BaseUri", "AoiName", "ItemsUri", "ChipSize", "Bands", "MaxCloud", "BatchSize",
        "CheckpointUri"]


# --- run.json config -----------------------------------------------------------------


class _Stop(Exception):
    """Raised by the captured StageRecord: the config is known, nothing else is needed."""


def _capture(monkeypatch: pytest.MonkeyPatch, module: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def record(root: Any, stage: str, *, config: dict[str, Any]) -> Any:
        seen.update(config)
        raise _Stop

    monkeypatch.setattr(importlib.import_module(module), "StageRecord", record)
    return seen


def _stage_calls(synth_dir: Path, chipped: Path, embedded: Path, tmp: Path
                 ) -> dict[str, tuple[str, Any]]:
    import warnings

    warnings.simplefilter("ignore")  # random weights
    return {
        "chip": ("root", lambda f: f(synth_dir / "items", tmp / "new", progress=False)),
        "embed": ("root", lambda f: f(chipped, model="tiny", progress=False)),
        "analyze": ("root", lambda f: f(embedded, progress=False)),
        "index": ("root", lambda f: f(embedded)),
        "finetune": ("out", lambda f: f(chipped, [tmp / "labels.tif"], tmp / "head",
                                        model="tiny", progress=False)),
        "predict": ("out", lambda f: f(chipped, tmp / "best.pt", tmp / "maps", model="tiny",
                                       progress=False)),
        "pretrain": ("root", lambda f: f(chipped, out=tmp / "pre", model="tiny",
                                         progress=False)),
    }


@pytest.mark.parametrize("command", ["chip", "embed", "analyze", "index", "finetune",
                                     "predict", "pretrain"])
def test_run_json_config_lists_every_option(command: str, monkeypatch: pytest.MonkeyPatch,
                                            synth_dir: Path, chipped_root: Path,
                                            embedded_root: Path, writable_copy: Any,
                                            tmp_path: Path) -> None:
    import warnings

    module = COMMANDS[command][0]
    seen = _capture(monkeypatch, module)
    chipped, embedded = writable_copy(chipped_root), tmp_path / "embedded"
    import shutil

    shutil.copytree(embedded_root, embedded)
    root_param, call = _stage_calls(synth_dir, chipped, embedded, tmp_path)[command]
    with warnings.catch_warnings(), pytest.raises(_Stop):
        call(_function(command))
    expected = set(inspect.signature(_function(command)).parameters) - {root_param}
    assert expected <= set(seen), expected - set(seen)
    if command == "finetune":
        assert {"pool", "bands", "n_classes", "class_names"} <= set(seen)


# --- the machinery -------------------------------------------------------------------


def _example(root: str, *, size: int = 8, mode: Literal["a", "b"] = "a",
             names: tuple[str, ...] = (), fast: bool = True, note: str | None = None) -> None:
    """Example.

    Args:
        root: the root.
        size: edge in ``pixels``; see :func:`~geofm.options.declare` and
            :class:`the table <geofm.options.Cli>`.
        mode: the mode.
        names: names to use.
        fast: go fast.
        note: a note with 100% coverage.

    Returns:
        Nothing.
    """


def test_declare_reads_signature_docstring_and_literal() -> None:
    assert docstring_args(_example)["size"] == ("edge in pixels; see declare and the table.")
    options = declare(_example, {"root": Cli(required=True)})
    assert list(options) == ["root", "size", "mode", "names", "fast", "note"]
    assert options["mode"].choices == ("a", "b")
    assert options["size"].kind is int and options["note"].kind is str
    assert options["fast"].flag == "--no-fast" and options["size"].flag == "--size"
    parser = argparse.ArgumentParser()
    from geofm.options import add_arguments

    add_arguments(parser, options.values())
    args = parser.parse_args(["--root", "r", "--size", "3", "--no-fast", "--note", "n"])
    assert library_kwargs(args, options.values()) == {
        "root": "r", "size": 3, "mode": "a", "names": (), "fast": False, "note": "n"}
    assert "(default 8)" in options["size"].help_text()
    assert "100%% coverage" in options["note"].help_text()  # argparse-escaped
    assert "--no-fast turns it off" in options["fast"].help_text()


def test_declare_refuses_undocumented_options_and_unknown_table_entries() -> None:
    def bad(root: str, *, secret: int = 1) -> None:
        """No Args section."""

    with pytest.raises(TypeError, match="option 'secret' has no Args: entry"):
        declare(bad)
    with pytest.raises(TypeError, match="has no parameter"):
        declare(_example, {"nope": Cli()})
