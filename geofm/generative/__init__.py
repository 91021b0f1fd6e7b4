"""Generative answers over search hits and change events (retrieval-augmented generation).

Search first (``geofm search``, or the changed chips of ``geofm report``), then a
language model answers:

- **single prompt**: one generation per hit, from a template whose ``{placeholders}``
  are filled from the hit (``"Describe {chip_id} on {date}"``; see
  :mod:`geofm.generative.prompts`);
- **grouped task**: one generation over all hits (at most ``max_hits``, default
  :data:`~geofm.generative.prompts.MAX_GROUPED_HITS`); the prompt carries each hit's
  properties and, with ``with_images``, its RGB thumbnail (at most
  :data:`~geofm.generative.prompts.MAX_IMAGES`).

Providers (Amazon Bedrock, a SageMaker endpoint, any OpenAI-compatible API) are in
:mod:`geofm.generative.providers`. Generation never changes the hits: it returns the
texts beside them (:class:`Generation`). A failed call raises
:class:`~geofm.exceptions.GenerationError` whose ``partial`` holds what was generated
before it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from geofm.exceptions import GenerationError, GeofmValueError, GeofmWarning
from geofm.generative.prompts import MAX_GROUPED_HITS, MAX_IMAGES, MAX_PROMPT_TOKENS
from geofm.generative.providers import ImagePart, Prompt, Provider, make_provider
from geofm.layout import RunRoot

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = ["Generation", "generate_for_hits", "make_provider", "Provider", "Prompt",
           "ImagePart", "MAX_GROUPED_HITS", "MAX_IMAGES", "MAX_PROMPT_TOKENS"]


@dataclass
class Generation:
    """Texts generated for a set of hits (the hits themselves are not touched).

    Attributes:
        single: one text per hit, in hit order (None where it was not generated), or
            None when no single prompt was asked for.
        grouped: the grouped answer, or None.
        grouped_hits: how many hits (best first) the grouped call carried.
        provider: provider name.
        model: model id / endpoint.
        prompts: the prompts sent, in order (for inspection and tests).
    """

    single: list[str | None] | None = None
    grouped: str | None = None
    grouped_hits: int = 0
    provider: str = ""
    model: str = ""
    prompts: list[Prompt] = field(default_factory=list)


def _refuse_size(prompt: Prompt, provider: Provider, budget: int, what: str) -> None:
    from geofm.generative.prompts import estimate_tokens

    size = estimate_tokens(prompt)
    if size > budget:
        raise GenerationError(
            f"the {what} is about {size} tokens, over max_prompt_tokens={budget}",
            provider=provider.name, model=provider.model, reason="prompt_too_large",
            fix="shorten the template/task, use fewer hits or images, or raise "
            "--max-prompt-tokens if the model takes more")


def generate_for_hits(hits: gpd.GeoDataFrame, *, provider: Provider,
                      single_prompt: str | None = None, grouped_task: str | None = None,
                      root: str | os.PathLike[str] | RunRoot | None = None,
                      with_images: bool = False, max_hits: int = MAX_GROUPED_HITS,
                      max_images: int = MAX_IMAGES,
                      max_prompt_tokens: int = MAX_PROMPT_TOKENS) -> Generation:
    """Generate per-hit and/or grouped answers for search or report hits.

    Args:
        hits: result rows (EPSG:4326), best first, as :func:`geofm.search.search`
            returns them; not modified.
        provider: the language model (:func:`make_provider`).
        single_prompt: template filled per hit (``{chip_id}``, ``{date}``, ... ; see
            :mod:`geofm.generative.prompts`): one call per hit.
        grouped_task: task for one call over the first ``max_hits`` hits.
        root: run root the hits' ``thumbnail_path`` is relative to (needed for images).
        with_images: attach each hit's RGB thumbnail (PNG).
        max_hits: most hits in the grouped call (>= 1); the rest are left out with a
            :class:`~geofm.exceptions.GeofmWarning`.
        max_images: most images in one grouped call; later hits go as text only.
        max_prompt_tokens: prompt budget in estimated tokens (characters / 4 +
            ``IMAGE_TOKENS`` per image).

    Returns:
        The :class:`Generation`.

    Raises:
        TemplateError: the template names a placeholder the hits lack (before any call).
        GeofmValueError: neither ``single_prompt`` nor ``grouped_task``, bad limits, or
            images without ``root``.
        GeofmFileNotFoundError: a thumbnail is missing (with ``with_images``).
        GenerationError: a model call failed; ``partial`` has what was generated.
    """
    from geofm.generative import prompts as pr

    if single_prompt is None and grouped_task is None:
        raise GeofmValueError("give a single prompt (--single-prompt) and/or a grouped task "
                              "(--grouped-task)")
    if max_hits < 1 or max_images < 0 or max_prompt_tokens < 1:
        raise GeofmValueError(f"max_hits ({max_hits}) and max_prompt_tokens "
                              f"({max_prompt_tokens}) must be >= 1, max_images >= 0")
    if with_images and root is None:
        raise GeofmValueError("with_images needs the run root the thumbnails are in")
    run_root = RunRoot.of(root) if root is not None else None
    if single_prompt is not None:
        pr.check_template(single_prompt, pr.placeholders_of(hits))
    props = pr.hit_properties(hits)
    result = Generation(provider=provider.name, model=provider.model)

    def image(i: int) -> ImagePart | None:
        return pr.thumbnail(run_root, props[i]) if with_images and run_root else None

    try:
        if single_prompt is not None:
            result.single = [None] * len(props)
            prepared = [pr.single_prompt(single_prompt, p, image=image(i))
                        for i, p in enumerate(props)]
            for prompt in prepared:
                _refuse_size(prompt, provider, max_prompt_tokens, "single prompt")
            for i, prompt in enumerate(prepared):
                result.prompts.append(prompt)
                result.single[i] = provider.generate(prompt)
        if grouped_task is not None and props:
            chosen = props[:max_hits]
            if len(props) > max_hits:
                warnings.warn(f"the grouped task gets the best {max_hits} of {len(props)} "
                              f"hits (max_hits={max_hits})", GeofmWarning, stacklevel=2)
            n_img = min(len(chosen), max_images) if with_images else 0
            if with_images and len(chosen) > max_images:
                warnings.warn(f"thumbnails go with the best {max_images} hits only "
                              f"(max_images={max_images})", GeofmWarning, stacklevel=2)
            images = [image(i) for i in range(n_img)]
            prompt, n = pr.grouped_prompt(grouped_task, chosen, images=images,
                                          max_prompt_tokens=max_prompt_tokens,
                                          total=len(props))
            _refuse_size(prompt, provider, max_prompt_tokens, "grouped prompt")
            result.prompts.append(prompt)
            result.grouped_hits = n
            result.grouped = provider.generate(prompt)
    except GenerationError as exc:
        exc.partial = result
        raise
    return result
