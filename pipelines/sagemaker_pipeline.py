"""The geofm SageMaker Pipeline: chip -> embed -> analyze -> index as four ProcessingSteps.

Each step runs ``python -m geofm.steps.<stage>`` in a container image (the CPU
processing image for chip, analyze and index, the GPU embedding image for embed); the
entry points and the folder layout they expect are described in
:mod:`geofm.steps._mounts`. Steps are chained through step properties: a step's input is
the previous step's ``properties.ProcessingOutputConfig.Outputs[name].S3Output.S3Uri``.

* chip: items prefix -> ``ShardedByS3Key`` (each instance chips a shard of the items).
* embed: the chip step's ``bundles/`` (one tar per scene) -> ``ShardedByS3Key``, plus the
  checkpoint from S3 (``FullyReplicated``).
* analyze: ``meta/`` and ``embeddings/`` of all shards, one instance (PCA fitted once).
* index: ``meta/``, ``embeddings/``, ``analysis/``, one instance.

Incremental variant (``--incremental``; ``build_pipeline(incremental=True)``): analyze
also takes the previous run's ``analysis/`` (parameter ``PreviousAnalysisUri``, input
``previous-analysis``), so a re-run on a grown item set updates that analysis (same
reference, new scenes scored, alerts kept) instead of starting over. It is a variant,
not an optional parameter, because SageMaker has no optional inputs: every input's S3
prefix must hold objects when the job is created. Upsert it under its own ``--name``
once a first run has written ``analysis/``.

Outputs go to ``<BaseUri>/<AoiName>/<execution id>/<folder>/``, a prefix that mirrors
the run root. Built with the SageMaker Python SDK v3 (the ``sagemaker`` extra)::

    python -m pipelines.sagemaker_pipeline definition [--out pipeline.json]
    python -m pipelines.sagemaker_pipeline upsert --role-arn arn:aws:iam::123456789012:role/X
    python -m pipelines.sagemaker_pipeline start --param ItemsUri=s3://bucket/items/ ...
    python -m pipelines.sagemaker_pipeline upsert --incremental --name geofm-update ...

``definition`` needs no AWS credentials and no network; ``upsert`` and ``start`` do.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geofm.exceptions import GeofmError, GeofmValueError, require_extra
from geofm.steps import _mounts

log = logging.getLogger(__name__)

DEFAULT_NAME = "geofm"
#: Region used to build the definition when none is configured (the definition itself
#: does not depend on it).
FALLBACK_REGION = "us-east-1"
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/\S+$")

#: Step name in the pipeline, per stage.
STEP_NAMES = {"chip": "Chip", "embed": "Embed", "analyze": "Analyze", "index": "Index"}
#: Inputs split across the step's instances by S3 key.
SHARDED_INPUTS = {("chip", "items"), ("embed", _mounts.BUNDLES)}


@dataclass(frozen=True)
class ParameterSpec:
    """One pipeline parameter: its name, type (``str``, ``int``, ``float``) and default.

    A parameter without a default must be given when an execution starts.
    """

    name: str
    kind: type
    default: str | int | float | None
    help: str


#: Pipeline parameters that are stage options, after ``ItemsUri`` in :data:`PARAMETERS`:
#: (stage, option, the pipeline's default where it differs from the library's). Name,
#: type, default and help come from the stage's declaration (:mod:`geofm.options`); the
#: step passes each as the option's flag.
STAGE_PARAMETERS: tuple[tuple[str, str, Any], ...] = (
    ("chip", "chip_size", None),
    ("chip", "bands", "blue,green,red,nir"),  # the library's None = the sensor's defaults
    ("chip", "max_cloud", None),
    ("embed", "batch_size", None),
)

#: The pipeline's own parameters: those before the stage options, and those after.
_FIRST_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("BaseUri", str, None, "S3 prefix for outputs, e.g. s3://bucket/geofm"),
    ParameterSpec("AoiName", str, "aoi", "name of the area of interest (a folder of BaseUri)"),
    ParameterSpec("ItemsUri", str, None, "S3 prefix of the STAC item JSON files (absolute hrefs)"),
)
_LAST_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("CheckpointUri", str, None, "S3 URI of the Clay checkpoint file"),
    ParameterSpec("ProcessingImageUri", str, None, "ECR URI of the CPU processing image"),
    ParameterSpec("EmbeddingImageUri", str, None, "ECR URI of the GPU embedding image"),
    ParameterSpec("ChipInstanceType", str, "ml.m5.2xlarge", "instance type of the chip step"),
    ParameterSpec("ChipInstanceCount", int, 2, "instances of the chip step (items sharded)"),
    ParameterSpec("EmbedInstanceType", str, "ml.g5.xlarge", "instance type of the embed step"),
    ParameterSpec("EmbedInstanceCount", int, 1, "instances of the embed step (scenes sharded)"),
    ParameterSpec("AnalyzeInstanceType", str, "ml.m5.2xlarge", "instance type of analyze"),
    ParameterSpec("IndexInstanceType", str, "ml.m5.xlarge", "instance type of index"),
    ParameterSpec("RoleArn", str, None, "IAM role ARN the processing jobs run as"),
)

#: The one parameter of the incremental variant (see the module doc).
PREVIOUS_ANALYSIS = ParameterSpec(
    "PreviousAnalysisUri", str, None, "S3 prefix of the previous run's analysis/ folder, "
    "e.g. s3://bucket/geofm/aoi/<execution id>/analysis (--incremental pipelines only)")



def parameter_name(option: str) -> str:
    """A stage option's pipeline parameter name: ``chip_size`` -> ``ChipSize``."""
    return "".join(part.capitalize() for part in option.split("_"))


def _stage_option(stage: str, option: str) -> Any:
    from geofm.pipeline import stage_cli_options

    return stage_cli_options(stage)[option]


def parameters(*, incremental: bool = False) -> tuple[ParameterSpec, ...]:
    """The pipeline's parameters; the incremental variant adds :data:`PREVIOUS_ANALYSIS`."""
    return (*_parameters(), PREVIOUS_ANALYSIS) if incremental else _parameters()


@functools.cache
def _parameters() -> tuple[ParameterSpec, ...]:
    """Every parameter of the default pipeline, in definition order (:data:`STAGE_PARAMETERS`
    generated)."""
    specs: list[ParameterSpec] = []
    for stage, option, default in STAGE_PARAMETERS:
        declared = _stage_option(stage, option)
        specs.append(ParameterSpec(parameter_name(option), declared.kind,
                                   declared.default if default is None else default,
                                   declared.cli.help or declared.help))
    return (*_FIRST_PARAMETERS, *specs, *_LAST_PARAMETERS)


def stage_arguments(stage: str, params: dict[str, Any]) -> list[Any]:
    """The step's ``geofm <stage>`` flags for its :data:`STAGE_PARAMETERS`."""
    arguments: list[Any] = []
    for owner, option, _ in STAGE_PARAMETERS:
        if owner == stage:
            declared, value = _stage_option(stage, option), params[parameter_name(option)]
            arguments += [declared.flag, value if declared.kind is str else value.to_string()]
    return arguments


def __getattr__(name: str) -> Any:
    """``PARAMETERS``: :func:`parameters` (built on first use, not at import)."""
    if name == "PARAMETERS":
        return parameters()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextlib.contextmanager
def _sdk_import_guard(region: str | None) -> Iterator[None]:
    """Set up what importing the SDK needs and undo what it changes.

    ``sagemaker.mlops`` needs a region at import; a configured one
    (``AWS_DEFAULT_REGION``) is kept. The import also installs a root logging handler
    and warning filters: both are restored afterwards.
    """
    require_extra("sagemaker", "sagemaker")
    if region:
        os.environ.setdefault("AWS_DEFAULT_REGION", region)
    elif not (os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")):
        os.environ["AWS_DEFAULT_REGION"] = FALLBACK_REGION
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        with warnings.catch_warnings():
            yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


@contextlib.contextmanager
def _no_instance_metadata() -> Iterator[None]:
    """Keep botocore from asking the EC2/ECS metadata endpoint for credentials.

    Building a definition creates boto3 clients (some inside the SDK, with default
    sessions); without configured credentials botocore would try the instance metadata
    service, which means network calls and about a minute of time-outs off AWS.
    """
    key = "AWS_EC2_METADATA_DISABLED"
    previous = os.environ.get(key)
    os.environ[key] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


@contextlib.contextmanager
def _quiet_pipeline_session() -> Iterator[None]:
    """Silence the SDK's warning that a PipelineSession starts no job (that is the point)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Running within a PipelineSession",
                                category=UserWarning)
        yield


def _region(region: str | None) -> str:
    return (region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
            or FALLBACK_REGION)


def session(region: str | None = None, *, offline: bool = True) -> Any:
    """A ``sagemaker.core.workflow.pipeline_context.PipelineSession``.

    Args:
        region: AWS region (default: the configured one, else ``us-east-1``).
        offline: ignore local SageMaker config files so the definition depends only on
            the code (what ``definition`` does); ``upsert``/``start`` use ``False``.
    """
    with _sdk_import_guard(region):
        import boto3
        from sagemaker.core.workflow.pipeline_context import PipelineSession

    pipeline_session = PipelineSession(boto_session=boto3.Session(region_name=_region(region)))
    if offline:
        # No SDK defaults from ~/.config/sagemaker: the definition depends on the code
        # only. (An empty dict also skips the SDK's per-lookup JSON-schema validation.)
        pipeline_session.sagemaker_config = {}
    return pipeline_session


def build_pipeline(*, name: str = DEFAULT_NAME, region: str | None = None,
                   pipeline_session: Any = None, incremental: bool = False) -> Any:
    """Build the four-step ``sagemaker.mlops.workflow.pipeline.Pipeline`` (no AWS calls).

    Args:
        name: pipeline name.
        region: AWS region of the session (the definition does not depend on it).
        pipeline_session: a ``PipelineSession`` (default: :func:`session`).
        incremental: build the variant whose analyze step updates the previous run's
            ``analysis/`` (parameter ``PreviousAnalysisUri``; see the module doc).

    Returns:
        The pipeline; ``pipeline.definition()`` is its JSON.
    """
    with _sdk_import_guard(region):
        from sagemaker.core.processing import Processor
        from sagemaker.core.shapes import (
            ProcessingInput,
            ProcessingOutput,
            ProcessingS3Input,
            ProcessingS3Output,
        )
        from sagemaker.core.workflow.execution_variables import ExecutionVariables
        from sagemaker.core.workflow.functions import Join
        from sagemaker.core.workflow.parameters import (
            ParameterFloat,
            ParameterInteger,
            ParameterString,
        )
        from sagemaker.mlops.workflow.pipeline import Pipeline
        from sagemaker.mlops.workflow.steps import ProcessingStep

    sm_session = pipeline_session if pipeline_session is not None else session(region)
    kinds = {str: ParameterString, int: ParameterInteger, float: ParameterFloat}
    params = {p.name: kinds[p.kind](name=p.name, default_value=p.default)
              for p in parameters(incremental=incremental)}
    run_prefix = [params["BaseUri"], params["AoiName"], ExecutionVariables.PIPELINE_EXECUTION_ID]

    def s3_input(stage: str, name: str, source: Any) -> Any:
        distribution = ("ShardedByS3Key" if (stage, name) in SHARDED_INPUTS
                        else "FullyReplicated")
        return ProcessingInput(input_name=name, s3_input=ProcessingS3Input(
            s3_uri=source, local_path=_mounts.input_dir(name), s3_data_type="S3Prefix",
            s3_input_mode="File", s3_data_distribution_type=distribution))

    def s3_output(name: str) -> Any:
        return ProcessingOutput(output_name=name, s3_output=ProcessingS3Output(
            s3_uri=Join(on="/", values=[*run_prefix, name]),
            local_path=_mounts.output_dir(name), s3_upload_mode="EndOfJob"))

    def processing_step(stage: str, *, image: str, instance_type: str, instance_count: Any,
                        sources: dict[str, Any], arguments: list[Any]) -> Any:
        optional = tuple(n for n in _mounts.STEP_OPTIONAL_INPUTS.get(stage, ()) if n in sources)
        assert tuple(sources) == _mounts.STEP_INPUTS[stage] + optional, stage
        processor = Processor(
            role=params["RoleArn"], image_uri=params[image],
            instance_count=instance_count, instance_type=params[instance_type],
            entrypoint=entrypoint(stage), base_job_name=f"geofm-{stage}",
            sagemaker_session=sm_session,
        )
        with _quiet_pipeline_session():  # records the request; starts nothing
            step_args = processor.run(
                inputs=[s3_input(stage, name, source) for name, source in sources.items()],
                outputs=[s3_output(name) for name in _mounts.STEP_OUTPUTS[stage]],
                arguments=arguments,
            )
        return ProcessingStep(name=STEP_NAMES[stage], step_args=step_args)

    def output_of(step: Any, name: str) -> Any:
        return step.properties.ProcessingOutputConfig.Outputs[name].S3Output.S3Uri

    chip = processing_step(
        "chip", image="ProcessingImageUri", instance_type="ChipInstanceType",
        instance_count=params["ChipInstanceCount"], sources={"items": params["ItemsUri"]},
        arguments=[*stage_arguments("chip", params), "--no-progress"],
    )
    embed = processing_step(
        "embed", image="EmbeddingImageUri", instance_type="EmbedInstanceType",
        instance_count=params["EmbedInstanceCount"],
        sources={_mounts.BUNDLES: output_of(chip, _mounts.BUNDLES),
                 "checkpoint": params["CheckpointUri"]},
        arguments=[*stage_arguments("embed", params), "--no-progress"],
    )
    previous = _mounts.PREVIOUS_ANALYSIS
    analyze = processing_step(
        "analyze", image="ProcessingImageUri", instance_type="AnalyzeInstanceType",
        instance_count=1,
        sources={"meta": output_of(chip, "meta"), "embeddings": output_of(embed, "embeddings"),
                 **({previous: params[PREVIOUS_ANALYSIS.name]} if incremental else {})},
        arguments=["--no-progress", *(["--previous-analysis", _mounts.input_dir(previous)]
                                      if incremental else [])],
    )
    index = processing_step(
        "index", image="ProcessingImageUri", instance_type="IndexInstanceType",
        instance_count=1,
        sources={"meta": output_of(chip, "meta"), "embeddings": output_of(embed, "embeddings"),
                 "analysis": output_of(analyze, "analysis")},
        arguments=[],
    )
    return Pipeline(
        name=name, parameters=list(params.values()), steps=[chip, embed, analyze, index],
        sagemaker_session=sm_session, pipeline_experiment_config=None,
    )


def entrypoint(stage: str) -> list[str]:
    """Container entrypoint of a stage's processing job."""
    return ["python", "-m", f"geofm.steps.{stage}"]


def definition(*, name: str = DEFAULT_NAME, region: str | None = None,
               incremental: bool = False) -> str:
    """The pipeline definition as stable JSON (sorted keys, indented); no AWS calls."""
    with _no_instance_metadata(), _quiet_pipeline_session():
        raw = build_pipeline(name=name, region=region, incremental=incremental).definition()
    return json.dumps(json.loads(raw), indent=2, sort_keys=True) + "\n"


def check_role_arn(role_arn: str | None) -> str:
    """Return ``role_arn`` if it is a full IAM role ARN (a bare name costs an IAM call)."""
    if not role_arn or not ROLE_ARN.match(role_arn):
        raise GeofmValueError(
            f"role {role_arn!r} is not an IAM role ARN; pass the full ARN, e.g. "
            "--role-arn arn:aws:iam::123456789012:role/SageMakerPipelineRole"
        )
    return role_arn


def parse_parameters(pairs: Sequence[str], *, require: bool = False,
                     incremental: bool = False) -> dict[str, str | int | float]:
    """Turn ``["ChipSize=128", ...]`` into execution parameters, typed and checked.

    Args:
        pairs: ``NAME=VALUE`` strings; NAME is one of :func:`parameters`.
        require: also check that every parameter without a default is given.
        incremental: the parameters of the incremental variant.
    """
    specs = {p.name: p for p in parameters(incremental=incremental)}
    values: dict[str, str | int | float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in specs:
            raise GeofmValueError(
                f"bad --param {pair!r}: expected NAME=VALUE with NAME one of "
                f"{', '.join(specs)}"
            )
        try:
            values[key] = specs[key].kind(value)
        except ValueError:
            raise GeofmValueError(
                f"bad --param {pair!r}: {key} takes a {specs[key].kind.__name__}"
            ) from None
    missing = [p.name for p in specs.values() if p.default is None and p.name not in values]
    if require and missing:
        raise GeofmValueError(
            f"parameters without a default must be given: {', '.join(missing)}; pass each "
            "as --param NAME=VALUE"
        )
    return values


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m pipelines.sagemaker_pipeline`` command line."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.sagemaker_pipeline",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    params_help = "; ".join(f"{p.name} ({p.kind.__name__}, default {p.default}): {p.help}"
                            for p in parameters(incremental=True))
    for command, help_text in (
        ("definition", "print (or write) the pipeline definition JSON; offline"),
        ("upsert", "create or update the pipeline in SageMaker (needs AWS credentials)"),
        ("start", "start an execution (needs AWS credentials)"),
    ):
        sp = sub.add_parser(command, help=help_text, description=help_text)
        sp.add_argument("--name", default=DEFAULT_NAME, help="pipeline name (default: %(default)s)")
        sp.add_argument("--region", default=None, help="AWS region (default: configured)")
        sp.add_argument("--incremental", action="store_true",
                        help="the variant whose analyze step updates the previous run's "
                             "analysis/ (parameter PreviousAnalysisUri)")
        if command == "definition":
            sp.add_argument("--out", type=Path, default=None, help="write the JSON here")
        if command == "upsert":
            sp.add_argument("--role-arn", required=True,
                            help="IAM role ARN the pipeline runs as (full ARN)")
            sp.add_argument("--description", default="geofm: chip -> embed -> analyze -> index")
        if command == "start":
            sp.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                            help=f"execution parameter (repeatable). {params_help}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "definition":
            text = definition(name=args.name, region=args.region,
                              incremental=args.incremental)
            if args.out is None:
                sys.stdout.write(text)
            else:
                from geofm.io import write_text_atomic

                write_text_atomic(args.out, text)
            return 0
        if args.command == "upsert":
            role_arn = check_role_arn(args.role_arn)
            pipeline = build_pipeline(name=args.name, region=args.region,
                                      pipeline_session=session(args.region, offline=False),
                                      incremental=args.incremental)
            with _quiet_pipeline_session():
                response = pipeline.upsert(role_arn=role_arn, description=args.description)
            print(response.get("PipelineArn", response))
            return 0
        values = parse_parameters(args.param, require=True, incremental=args.incremental)
        pipeline = build_pipeline(name=args.name, region=args.region,
                                  pipeline_session=session(args.region, offline=False),
                                  incremental=args.incremental)
        execution = pipeline.start(parameters=values)
        print(getattr(execution, "arn", execution))
        return 0
    except GeofmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
