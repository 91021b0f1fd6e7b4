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
from typing import TYPE_CHECKING

from geofm.exceptions import GenerationError, GeofmFileNotFoundError, GeofmValueError
from geofm.generative.prompts import DERIVED, MAX_GROUPED_HITS, MAX_PROMPT_TOKENS
from geofm.generative.providers import DEFAULT_MAX_TOKENS, PROVIDERS, SAGEMAKER_FORMATS

if TYPE_CHECKING:
    import geopandas as gpd

    from geofm.generative.providers import Provider

log = logging.getLogger(__name__)


def add_provider_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the language-model provider options to ``parser``."""
    group = parser.add_argument_group("language model")
    group.add_argument("--generative-provider", choices=PROVIDERS,
                       help="bedrock (Converse API), sagemaker (real-time endpoint) or "
                       "openai (any OpenAI-compatible chat-completions API)")
    group.add_argument("--generative-model", metavar="ID",
                       help="Bedrock model id, or the served model name (openai, sagemaker "
                       "messages format)")
    group.add_argument("--generative-endpoint", metavar="NAME", help="SageMaker endpoint name")
    group.add_argument("--generative-base-url", metavar="URL",
                       help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1; the "
                       "key is read from $GEOFM_OPENAI_API_KEY or $OPENAI_API_KEY")
    group.add_argument("--sagemaker-format", choices=SAGEMAKER_FORMATS, default="tgi",
                       help="request/response format of the SageMaker container "
                       "(default tgi)")
    group.add_argument("--aws-region", metavar="REGION",
                       help="AWS region (default: the AWS configuration)")
    group.add_argument("--aws-profile", metavar="NAME",
                       help="AWS profile (default: the AWS configuration)")
    group.add_argument("--temperature", type=float, help="sampling temperature, 0..2")
    group.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                       help=f"most tokens generated per answer (default {DEFAULT_MAX_TOKENS})")
    group.add_argument("--with-images", action="store_true",
                       help="send the chips' RGB thumbnails (PNG) to a multimodal model")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the answer options (and the provider options) to ``parser``."""
    group = parser.add_argument_group("generative answers")
    group.add_argument("--single-prompt", metavar="TEMPLATE",
                       help="one answer per result; {chip_id}, {date}, {similarity}, "
                       "{cloud_fraction}, {lon}, {lat}, {change_status}, {change_date} and "
                       "any other result column are filled in")
    group.add_argument("--grouped-task", metavar="TASK",
                       help="one answer over all results (their properties, and thumbnails "
                       "with --with-images)")
    group.add_argument("--max-hits", type=int, default=MAX_GROUPED_HITS,
                       help=f"most results in the grouped call (default {MAX_GROUPED_HITS})")
    group.add_argument("--max-prompt-tokens", type=int, default=MAX_PROMPT_TOKENS,
                       help="prompt budget in estimated tokens (characters/4 + 1600 per "
                       f"image; default {MAX_PROMPT_TOKENS})")
    add_provider_arguments(parser)


def provider_from_args(args: argparse.Namespace) -> Provider:
    """The provider the options describe.

    Raises:
        GeofmValueError: no provider, or one of its required options is missing.
    """
    from geofm.generative.providers import make_provider

    if not args.generative_provider:
        raise GeofmValueError(f"give --generative-provider ({'|'.join(PROVIDERS)})")
    return make_provider(args.generative_provider, model=args.generative_model,
                         endpoint=args.generative_endpoint,
                         base_url=args.generative_base_url, temperature=args.temperature,
                         max_tokens=args.max_tokens, region=args.aws_region,
                         profile=args.aws_profile, sagemaker_format=args.sagemaker_format)


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
