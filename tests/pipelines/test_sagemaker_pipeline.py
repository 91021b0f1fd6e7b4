"""The SageMaker pipeline definition, built offline (sockets blocked) with the v3 SDK."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import socket
from typing import Any

import pytest

from geofm.exceptions import GeofmValueError
from geofm.steps import _mounts

STAGES = ("chip", "embed", "analyze", "index")


_CONNECTS: list[Any] = []


def _deny(*args: Any, **kwargs: Any) -> None:
    _CONNECTS.append(args)
    raise OSError("network access is blocked in this test")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build the definition twice (library call, then CLI) with the network blocked."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _deny)
        mp.setattr(socket.socket, "connect_ex", _deny)
        mp.setattr(socket, "create_connection", _deny)
        mp.setenv("AWS_DEFAULT_REGION", "eu-west-1")  # the user's region: must be kept
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
            mp.delenv(key, raising=False)
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        sm = importlib.import_module("pipelines.sagemaker_pipeline")
        first = sm.definition()
        out = tmp_path_factory.mktemp("def") / "pipeline.json"
        code = sm.main(["definition", "--out", str(out)])
        after = {"handlers": list(root.handlers), "level": root.level,
                 "region": os.environ["AWS_DEFAULT_REGION"]}
    return {"module": sm, "first": first, "second": out.read_text(), "code": code,
            "json": json.loads(first), "before": {"handlers": handlers, "level": level},
            "after": after, "connects": list(_CONNECTS)}


def _steps(defn: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["Name"]: s for s in defn["Steps"]}


def _inputs(step: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["InputName"]: i["S3Input"] for i in step["Arguments"]["ProcessingInputs"]}


def _outputs(step: dict[str, Any]) -> dict[str, dict[str, Any]]:
    outputs = step["Arguments"]["ProcessingOutputConfig"]["Outputs"]
    return {o["OutputName"]: o["S3Output"] for o in outputs}


def _gets(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["Get"]} if isinstance(node.get("Get"), str) else set()
        return found.union(*(_gets(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_gets(v) for v in node))
    return set()


def test_offline_and_byte_identical(built: dict[str, Any]) -> None:
    assert built["connects"] == []
    assert built["code"] == 0
    assert built["first"] == built["second"]
    assert built["first"].endswith("}\n") and len(built["first"]) > 1000


def test_import_keeps_region_and_logging(built: dict[str, Any]) -> None:
    assert built["after"]["region"] == "eu-west-1"
    assert built["after"]["handlers"] == built["before"]["handlers"]
    assert built["after"]["level"] == built["before"]["level"]


def test_four_processing_steps_wired_output_to_input(built: dict[str, Any]) -> None:
    sm = built["module"]
    steps = _steps(built["json"])
    assert list(steps) == [sm.STEP_NAMES[s] for s in STAGES]
    assert all(s["Type"] == "Processing" for s in steps.values())
    producer = {}  # output folder -> step that writes it
    for stage in STAGES:
        step = steps[sm.STEP_NAMES[stage]]
        inputs = _inputs(step)
        assert tuple(inputs) == _mounts.STEP_INPUTS[stage]
        for name, s3 in inputs.items():
            assert s3["LocalPath"] == _mounts.input_dir(name)
            if name in producer:  # produced upstream: a step-property reference
                expected = (f"Steps.{producer[name]}.ProcessingOutputConfig."
                            f"Outputs['{name}'].S3Output.S3Uri")
                assert s3["S3Uri"] == {"Get": expected}
            else:  # first-hand data: a pipeline parameter
                assert s3["S3Uri"]["Get"].startswith("Parameters.")
        outputs = _outputs(step)
        assert tuple(outputs) == _mounts.STEP_OUTPUTS[stage]
        for name, s3 in outputs.items():
            assert s3["LocalPath"] == _mounts.output_dir(name)
            join = s3["S3Uri"]["Std:Join"]
            assert join["On"] == "/" and join["Values"][-1] == name
            assert join["Values"][:3] == [{"Get": "Parameters.BaseUri"},
                                          {"Get": "Parameters.AoiName"},
                                          {"Get": "Execution.PipelineExecutionId"}]
            producer.setdefault(name, step["Name"])
    # every step after the first consumes something an earlier step produced
    for stage in STAGES[1:]:
        refs = [s["S3Uri"] for s in _inputs(steps[sm.STEP_NAMES[stage]]).values()]
        assert any("Steps." in str(r) for r in refs), stage


def test_every_parameter_used(built: dict[str, Any]) -> None:
    declared = {p["Name"] for p in built["json"]["Parameters"]}
    assert declared == {p.name for p in built["module"].PARAMETERS}
    used = {g.removeprefix("Parameters.") for g in _gets(built["json"]["Steps"])
            if g.startswith("Parameters.")}
    assert used == declared


def test_sharding_and_instance_counts(built: dict[str, Any]) -> None:
    sm = built["module"]
    steps = _steps(built["json"])
    for stage in STAGES:
        step = steps[sm.STEP_NAMES[stage]]
        for name, s3 in _inputs(step).items():
            expected = "ShardedByS3Key" if (stage, name) in {("chip", "items"),
                                                            ("embed", "bundles")} \
                else "FullyReplicated"
            assert s3["S3DataDistributionType"] == expected, (stage, name)
        count = step["Arguments"]["ProcessingResources"]["ClusterConfig"]["InstanceCount"]
        if stage in ("chip", "embed"):
            assert count == {"Get": f"Parameters.{stage.capitalize()}InstanceCount"}
        else:
            assert count == 1  # PCA fitted once; the index consolidates everything


def test_entrypoints_are_existing_step_modules(built: dict[str, Any]) -> None:
    steps = _steps(built["json"])
    for stage in STAGES:
        app = steps[built["module"].STEP_NAMES[stage]]["Arguments"]["AppSpecification"]
        assert app["ContainerEntrypoint"] == ["python", "-m", f"geofm.steps.{stage}"]
        module = app["ContainerEntrypoint"][2]
        assert importlib.util.find_spec(module) is not None
        assert callable(importlib.import_module(module).main)
    role = {json.dumps(s["Arguments"]["RoleArn"]) for s in steps.values()}
    assert role == {json.dumps({"Get": "Parameters.RoleArn"})}
    assert built["json"]["PipelineExperimentConfig"] is None


def test_stage_options_reach_the_step_parsers(built: dict[str, Any]) -> None:
    # The step passes options it does not know to `geofm <stage>`; those must exist there.
    from geofm.cli import build_parser

    steps = _steps(built["json"])
    for stage in STAGES:
        app = steps[built["module"].STEP_NAMES[stage]]["Arguments"]["AppSpecification"]
        flags = [a for a in app.get("ContainerArguments", []) if isinstance(a, str)
                 and a.startswith("--")]
        sub = build_parser(stage)._subparsers._group_actions[0].choices[stage]
        known = {opt for action in sub._actions for opt in action.option_strings}
        assert set(flags) <= known, (stage, set(flags) - known)
    chip_args = steps["Chip"]["Arguments"]["AppSpecification"]["ContainerArguments"]
    assert chip_args[chip_args.index("--bands") + 1] == {"Get": "Parameters.Bands"}


def test_role_must_be_a_full_arn(built: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sm = built["module"]
    monkeypatch.setattr(socket.socket, "connect", _deny)
    with pytest.raises(GeofmValueError, match="'MyRole' is not an IAM role ARN"):
        sm.check_role_arn("MyRole")
    arn = "arn:aws:iam::123456789012:role/geofm"
    assert sm.check_role_arn(arn) == arn
    assert sm.main(["upsert", "--role-arn", "MyRole"]) == 1
    assert "pass the full ARN" in capsys.readouterr().err


def test_parse_parameters(built: dict[str, Any]) -> None:
    sm = built["module"]
    assert sm.parse_parameters(["ChipSize=128", "MaxCloud=0.1", "AoiName=alps"]) == {
        "ChipSize": 128, "MaxCloud": 0.1, "AoiName": "alps"}
    with pytest.raises(GeofmValueError, match="ChipSize takes a int"):
        sm.parse_parameters(["ChipSize=big"])
    with pytest.raises(GeofmValueError, match="NAME one of BaseUri"):
        sm.parse_parameters(["Nope=1"])



def test_start_requires_parameters_without_default(built: dict[str, Any]) -> None:
    sm = built["module"]
    with pytest.raises(GeofmValueError, match="must be given: BaseUri, ItemsUri, Checkpoint"):
        sm.parse_parameters(["ChipSize=128"], require=True)


@pytest.mark.aws
def test_start_sends_typed_parameters(built: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    import boto3
    from botocore.stub import Stubber

    sm = built["module"]
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setattr(socket.socket, "connect", _deny)
    session = sm.session("eu-west-1")
    client = boto3.client("sagemaker", region_name="eu-west-1", aws_access_key_id="test",
                          aws_secret_access_key="test")
    session.sagemaker_client = client
    monkeypatch.setattr(sm, "session", lambda region=None, offline=True: session)
    required = {p.name: f"s3://bucket/{p.name}" for p in sm.PARAMETERS if p.default is None}
    required["RoleArn"] = "arn:aws:iam::123456789012:role/geofm"
    arn = "arn:aws:sagemaker:eu-west-1:123456789012:pipeline/geofm/execution/abc"
    expected = [{"Name": k, "Value": v} for k, v in required.items()]
    expected.append({"Name": "ChipSize", "Value": "128"})
    with Stubber(client) as stub:
        stub.add_response("start_pipeline_execution", {"PipelineExecutionArn": arn},
                          {"PipelineName": "geofm", "PipelineParameters": expected})
        code = sm.main(["start", "--region", "eu-west-1",
                        *(f"--param={k}={v}" for k, v in required.items()),
                        "--param", "ChipSize=128"])
        stub.assert_no_pending_responses()
    assert code == 0
    assert arn in capsys.readouterr().out


@pytest.fixture(scope="module")
def incremental(built: dict[str, Any]) -> dict[str, Any]:
    """The incremental variant's definition, built offline like the default one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _deny)
        mp.setattr(socket, "create_connection", _deny)
        text = built["module"].definition(incremental=True)
    return json.loads(text)


def test_default_pipeline_has_no_previous_analysis(built: dict[str, Any]) -> None:
    analyze = _steps(built["json"])["Analyze"]
    assert _mounts.PREVIOUS_ANALYSIS not in _inputs(analyze)
    assert "PreviousAnalysisUri" not in {p["Name"] for p in built["json"]["Parameters"]}


def test_incremental_variant_feeds_the_previous_analysis_to_analyze(
        built: dict[str, Any], incremental: dict[str, Any]) -> None:
    from geofm.steps import analyze as analyze_step

    sm = built["module"]
    assert _CONNECTS == []
    declared = {p["Name"] for p in incremental["Parameters"]}
    assert declared == {p.name for p in sm.parameters(incremental=True)}
    assert declared - {p["Name"] for p in built["json"]["Parameters"]} == {"PreviousAnalysisUri"}
    steps = _steps(incremental)
    inputs = _inputs(steps["Analyze"])
    name = _mounts.PREVIOUS_ANALYSIS
    assert tuple(inputs) == (*_mounts.STEP_INPUTS["analyze"], name)
    assert inputs[name]["S3Uri"] == {"Get": "Parameters.PreviousAnalysisUri"}
    assert inputs[name]["LocalPath"] == _mounts.input_dir(name)
    assert inputs[name]["S3DataDistributionType"] == "FullyReplicated"
    # only analyze takes it; everything else is the default pipeline's
    others = {k: v for k, v in steps.items() if k != "Analyze"}
    assert others == {k: v for k, v in _steps(built["json"]).items() if k != "Analyze"}
    # the step is told where the mount is, and its parser takes the option
    args = steps["Analyze"]["Arguments"]["AppSpecification"]["ContainerArguments"]
    assert args[args.index("--previous-analysis") + 1] == _mounts.input_dir(name)
    parsed, rest = analyze_step.build_parser().parse_known_args(args)
    assert str(parsed.previous_analysis) == _mounts.input_dir(name) and rest == ["--no-progress"]


def test_incremental_start_requires_the_previous_analysis(built: dict[str, Any]) -> None:
    sm = built["module"]
    given = [f"{p.name}=s3://b/{p.name}" for p in sm.PARAMETERS if p.default is None]
    assert "PreviousAnalysisUri" not in sm.parse_parameters(given, require=True)
    with pytest.raises(GeofmValueError, match="must be given: PreviousAnalysisUri"):
        sm.parse_parameters(given, require=True, incremental=True)
    with pytest.raises(GeofmValueError, match="NAME one of"):
        sm.parse_parameters(["PreviousAnalysisUri=s3://b/a"])  # not a default parameter
    assert sm.parse_parameters(["PreviousAnalysisUri=s3://b/a"], incremental=True) == {
        "PreviousAnalysisUri": "s3://b/a"}
