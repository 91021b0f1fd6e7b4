"""Command-line options for generation, shared by ``geofm search``, ``report`` and ``index``.

Provider options (:func:`add_provider_arguments`): ``--generative-provider``,
``--generative-model``, ``--generative-endpoint``, ``--generative-base-url``,
``--sagemaker-format``, ``--aws-region``, ``--aws-profile``, ``--temperature``,
``--max-tokens``, ``--with-images``. Answer options (:func:`add_arguments`):
``--single-prompt``, ``--grouped-task``, ``--max-hits``, ``--max-prompt-tokens``.

Exit codes: 2 for a bad template or missing provider option (checked before any
search or model call); 1 when a model call fails (the hits are still written, the
failed texts are null).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from geofm.exceptions import GenerationError, GeofmFileNotFoundError, GeofmValueError
from geofm.generative.prompts import DERIVED
from geofm.generative.providers import PROVIDERS, SAGEMAKER_FORMATS

if TYPE_CHECKING:
    import geopandas as gpd

    from geofm.generative.providers import Provider

log = logging.getLogger(__name__)


def provider_options() -> dict[str, Any]:
    """The provider flags: :func:`~geofm.generative.providers.make_provider`'s options.

    Their dests keep the flag names (``generative_model``, ``aws_region``, ...), so
    they do not meet a stage's own ``model`` or ``name``.

    Returns:
        ``{name: geofm.options.Option}``.
    """
    from geofm.generative.providers import make_provider
    from geofm.options import Cli, declare

    return declare(make_provider, {
        "name": Cli(flags=("--generative-provider",), dest="generative_provider",
                    choices=PROVIDERS,
                    help="bedrock (Converse API), sagemaker (real-time endpoint) or "
                         "openai (any OpenAI-compatible chat-completions API)"),
        "model": Cli(flags=("--generative-model",), dest="generative_model", metavar="ID",
                     help="Bedrock model id, or the served model name (openai, sagemaker "
                          "messages format)"),
        "endpoint": Cli(flags=("--generative-endpoint",), dest="generative_endpoint",
                        metavar="NAME", help="SageMaker endpoint name"),
        "base_url": Cli(flags=("--generative-base-url",), dest="generative_base_url",
                        metavar="URL",
                        help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1; the "
                             "key is read from $GEOFM_OPENAI_API_KEY or $OPENAI_API_KEY"),
        "sagemaker_format": Cli(choices=SAGEMAKER_FORMATS),
        "region": Cli(flags=("--aws-region",), dest="aws_region", metavar="REGION",
                      help="AWS region (default: the AWS configuration)"),
        "profile": Cli(flags=("--aws-profile",), dest="aws_profile", metavar="NAME",
                       help="AWS profile (default: the AWS configuration)"),
        "client": Cli(cli=False),
    })


def answer_options() -> dict[str, Any]:
    """The answer flags: :func:`geofm.generative.generate_for_hits`'s options.

    ``max_images`` stays a library option (no flag).

    Returns:
        ``{name: geofm.options.Option}``.
    """
    from geofm.generative import generate_for_hits
    from geofm.options import Cli, declare

    return declare(generate_for_hits, {
        "provider": Cli(cli=False),
        "root": Cli(cli=False),
        "single_prompt": Cli(metavar="TEMPLATE",
                             help="one answer per result; {chip_id}, {date}, {similarity}, "
                                  "{cloud_fraction}, {lon}, {lat}, {change_status}, "
                                  "{change_date} and any other result column are filled in"),
        "grouped_task": Cli(metavar="TASK",
                            help="one answer over all results (their properties, and "
                                 "thumbnails with --with-images)"),
        "with_images": Cli(help="send the chips' RGB thumbnails (PNG) to a multimodal model"),
        "max_images": Cli(cli=False),
    })


def add_provider_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the language-model provider options (and ``--with-images``) to ``parser``."""
    from geofm.options import add_arguments as add_options

    group = parser.add_argument_group("language model")
    add_options(group, provider_options().values())
    add_options(group, [answer_options()["with_images"]])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the answer options (and the provider options) to ``parser``."""
    from geofm.options import add_arguments as add_options

    group = parser.add_argument_group("generative answers")
    answers = answer_options()
    add_options(group, [o for n, o in answers.items() if n != "with_images"])
    add_provider_arguments(parser)


def provider_from_args(args: argparse.Namespace) -> Provider:
    """The provider the options describe.

    Raises:
        GeofmValueError: no provider, or one of its required options is missing.
    """
    from geofm.generative.providers import make_provider

    if not args.generative_provider:
        raise GeofmValueError(f"give --generative-provider ({'|'.join(PROVIDERS)})")
    from geofm.options import library_kwargs

    return make_provider(**library_kwargs(args, provider_options().values()))


def usage_error(exc: Exception) -> int:
    """Log a command-line error and return exit code 2."""
    log.error("%s", exc)
    return 2


@dataclass
class GenerativeRun:
    """What the answer options asked for, checked before searching."""

    provider: Provider
    single_prompt: str | None
    grouped_task: str | None
    with_images: bool
    max_hits: int
    max_prompt_tokens: int
    root: str
    fmt: str
    output: str | None

    def write(self, hits: gpd.GeoDataFrame) -> int:
        """Generate for ``hits``, write hits + texts; 0, or 1 when generation failed."""
        from geofm.generative import Generation, generate_for_hits
        from geofm.generative.output import format_generation
        from geofm.search.output import emit

        code = 0
        try:
            generation = generate_for_hits(
                hits, provider=self.provider, single_prompt=self.single_prompt,
                grouped_task=self.grouped_task, root=self.root, with_images=self.with_images,
                max_hits=self.max_hits, max_prompt_tokens=self.max_prompt_tokens)
        except GenerationError as exc:
            log.error("generation failed: %s", exc)
            generation = exc.partial if isinstance(exc.partial, Generation) else Generation()
            code = 1
        except GeofmFileNotFoundError as exc:  # a thumbnail is missing: nothing was sent
            log.error("generation failed: %s", exc)
            generation, code = Generation(), 1
        text = format_generation(hits, generation, self.fmt,
                                 single=self.single_prompt is not None,
                                 grouped=self.grouped_task is not None)
        emit(text, self.output)
        return code


def prepare(args: argparse.Namespace, columns: Sequence[str]) -> GenerativeRun | None:
    """Check the answer options against the result ``columns``; None when none given.

    Raises:
        TemplateError: the single prompt names a placeholder that is not a column.
        GeofmValueError: provider options missing or out of range.
    """
    from geofm.generative.prompts import check_template

    if args.single_prompt is None and args.grouped_task is None:
        for flag in ("generative_provider", "with_images"):
            if getattr(args, flag):
                raise GeofmValueError(f"--{flag.replace('_', '-')} needs --single-prompt "
                                      "or --grouped-task")
        return None
    if args.single_prompt is not None:
        check_template(args.single_prompt, sorted({*columns, *DERIVED} - {"geometry"}))
    if args.max_hits < 1 or args.max_prompt_tokens < 1:
        raise GeofmValueError("--max-hits and --max-prompt-tokens must be >= 1")
    return GenerativeRun(provider=provider_from_args(args), single_prompt=args.single_prompt,
                         grouped_task=args.grouped_task, with_images=args.with_images,
                         max_hits=args.max_hits, max_prompt_tokens=args.max_prompt_tokens,
                         root=args.root, fmt=args.format, output=args.output)


def add_hit_arguments(parser: argparse.ArgumentParser) -> None:
    """``--format``/``--output`` for a command that prints hits, then the answer options."""
    parser.add_argument("--format", choices=("table", "json", "geojson"), default="table",
                        help="output format (default table)")
    parser.add_argument("--output", metavar="PATH", help="write to PATH instead of stdout")
    add_arguments(parser)


def deliver(hits: Any, generation: GenerativeRun | None, args: argparse.Namespace) -> int:
    """Print ``hits`` as ``--format`` asks, or the generated answers over them; exit code."""
    from geofm.search.output import emit, format_results

    if generation is not None:
        return generation.write(hits)
    emit(format_results(hits, args.format), args.output)
    return 0

