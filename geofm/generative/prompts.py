"""Prompts from hits: templates with ``{column}`` placeholders, grouped tasks, size limits.

A hit's properties are its result columns (``chip_id``, ``scene_id``, ``date``,
``similarity``, ``cloud_fraction``, ``change_status``, ``change_date``, ...) plus
``rank`` (1 = best) and ``lon``/``lat`` (WGS84 degrees of the footprint centroid).
Values are written as: dates ``YYYY-MM-DD`` (with ``THH:MM:SSZ`` when not midnight
UTC), floats with 4 decimals, ``lon``/``lat`` with 5, missing values ``unknown``. A
placeholder may carry a format spec applied to the raw value (``{similarity:.2f}``,
``{date:%d %B %Y}``); ``{{`` and ``}}`` are literal braces. Attribute and index access
(``{chip_id.x}``, ``{x[0]}``) and positional ``{}`` are refused.

Size accounting: a prompt's size is estimated as ``ceil(characters / 4)`` tokens plus
:data:`IMAGE_TOKENS` per image; prompts above ``max_prompt_tokens`` (default
:data:`MAX_PROMPT_TOKENS`) are refused (single prompts, descriptions), and grouped
prompts leave out the lowest-ranked hits that do not fit, with a warning.
"""

from __future__ import annotations

import math
import string
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from geofm.exceptions import GeofmFileNotFoundError, GeofmWarning, TemplateError
from geofm.generative.providers import ImagePart, Prompt

if TYPE_CHECKING:
    import geopandas as gpd

    from geofm.layout import RunRoot

#: most hits sent in one grouped call (the rest are left out with a warning).
MAX_GROUPED_HITS = 50
#: most images in one call (Bedrock's Converse accepts up to 20 per request).
MAX_IMAGES = 20
#: estimated tokens of one image (upper end of Claude's ``width * height / 750``).
IMAGE_TOKENS = 1_600
#: default prompt budget, estimated tokens.
MAX_PROMPT_TOKENS = 16_000
#: properties of a hit that are never put into prompts (paths mean nothing to a model).
HIDDEN = ("thumbnail_path", "generated")
DERIVED = ("rank", "lon", "lat")


def estimate_tokens(prompt: Prompt) -> int:
    """Estimated prompt tokens: ``ceil(characters / 4) + IMAGE_TOKENS * images``."""
    return math.ceil(len(prompt.text) / 4) + IMAGE_TOKENS * len(prompt.images)


def hit_properties(hits: gpd.GeoDataFrame) -> list[dict[str, Any]]:
    """One dict per hit (best first): every column but ``geometry``, ``rank``, ``lon``, ``lat``.

    Args:
        hits: results in EPSG:4326 (search or report rows).

    Returns:
        Raw values (numpy scalars as Python values, pandas timestamps kept).
    """
    import shapely

    rows = []
    geoms = hits.geometry.to_numpy() if "geometry" in hits.columns else [None] * len(hits)
    for rank, (row, geom) in enumerate(zip(hits.drop(columns="geometry", errors="ignore")
                                           .to_dict("records"), geoms, strict=True), start=1):
        props: dict[str, Any] = {k: (v.item() if hasattr(v, "item") else v)
                                 for k, v in row.items()}
        props["rank"] = rank
        if geom is not None and not shapely.is_empty(geom):
            centre = geom.centroid
            props["lon"], props["lat"] = float(centre.x), float(centre.y)
        else:
            props["lon"] = props["lat"] = None
        rows.append(props)
    return rows


def placeholders_of(hits: gpd.GeoDataFrame) -> list[str]:
    """Placeholders a template may use for these hits, sorted."""
    names = [c for c in hits.columns if c != "geometry"]
    return sorted({*names, *DERIVED})


def _missing(value: Any) -> bool:
    import pandas as pd

    if value is None or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def render_value(name: str, value: Any) -> str:
    """A property value as prompt text (see the module docstring for the rules)."""
    import pandas as pd

    if _missing(value):
        return "unknown"
    if isinstance(value, pd.Timestamp):
        ts = value.tz_convert("UTC") if value.tzinfo else value
        return f"{ts:%Y-%m-%d}" if ts == ts.normalize() else f"{ts:%Y-%m-%dT%H:%M:%SZ}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.5f}" if name in ("lon", "lat") else f"{value:.4f}"
    return str(value)


def check_template(template: str, available: Sequence[str]) -> list[str]:
    """Check a template's placeholders; return the field names it uses.

    Raises:
        TemplateError: a placeholder is not available, positional, or uses attribute /
            index access, or the braces do not match. The message lists the available
            placeholders.
    """
    listed = ", ".join("{" + a + "}" for a in sorted(available))
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"template {template!r} has unmatched braces ({exc}); write "
                            "{{ and }} for literal braces", template=template, placeholder="",
                            available=sorted(available)) from exc
    fields = []
    for _, name, _, conversion in parsed:
        if name is None:
            continue
        if name not in available or conversion is not None:
            why = ("positional {} is not allowed" if name == "" else
                   f"conversion !{conversion} is not allowed" if name in available else
                   f"unknown placeholder {{{name}}}")
            raise TemplateError(f"template {template!r}: {why}; available placeholders: "
                                f"{listed}", template=template, placeholder=name,
                                available=sorted(available))
        fields.append(name)
    return fields


def fill_template(template: str, props: dict[str, Any]) -> str:
    """Fill a checked template with one hit's properties (see the module docstring)."""
    out = []
    for literal, name, spec, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is None:
            continue
        value = props.get(name)
        if spec and not _missing(value):
            out.append(format(value, spec))
        else:
            out.append(render_value(name, value))
    return "".join(out)


def describe_hit(props: dict[str, Any]) -> str:
    """One line with a hit's known properties: ``chip_id: X; date: Y; ...``."""
    items = [f"{k}: {render_value(k, v)}" for k, v in props.items()
             if k not in HIDDEN and k != "rank" and not _missing(v)]
    return "; ".join(items)


def thumbnail(root: RunRoot, props: dict[str, Any]) -> ImagePart:
    """The hit's RGB thumbnail as an :class:`ImagePart`.

    Raises:
        GeofmFileNotFoundError: the hit has no thumbnail or the file is missing.
    """
    rel = props.get("thumbnail_path")
    if _missing(rel) or not rel:
        raise GeofmFileNotFoundError(
            f"hit {props.get('chip_id')!r} has no thumbnail_path; run `geofm chip` with "
            "thumbnails, or drop --with-images")
    path = (root.path / str(rel)).resolve()
    if not path.is_relative_to(root.path.resolve()):
        raise GeofmFileNotFoundError(f"thumbnail {rel!r} is outside the run root {root.path}")
    if not path.is_file():
        raise GeofmFileNotFoundError(
            f"thumbnail {path} of {props.get('chip_id')!r} does not exist; re-run "
            "`geofm chip` for its scene, or drop --with-images")
    label = f"{props.get('chip_id')} {render_value('date', props.get('date'))}"
    return ImagePart(png=path.read_bytes(), label=label)


def single_prompt(template: str, props: dict[str, Any], *, image: ImagePart | None = None
                  ) -> Prompt:
    """One hit's prompt: the filled template, then its thumbnail when given."""
    parts: list[str | ImagePart] = [fill_template(template, props)]
    if image is not None:
        parts.append(image)
    return Prompt(parts)


def grouped_prompt(task: str, props: Sequence[dict[str, Any]], *,
                   images: Sequence[ImagePart | None] = (),
                   max_prompt_tokens: int = MAX_PROMPT_TOKENS,
                   total: int | None = None) -> tuple[Prompt, int]:
    """The grouped-task prompt: the task, then one line (and image) per hit.

    Args:
        task: the task text.
        props: hit properties, best first.
        images: thumbnails for the first hits (``None``: no image for that hit).
        max_prompt_tokens: budget (see :func:`estimate_tokens`); hits that do not fit
            are left out from the end, with a :class:`GeofmWarning`.
        total: hits in the whole result (for the header), default ``len(props)``.

    Returns:
        ``(prompt, n)``: the prompt and how many hits it carries.
    """
    total = len(props) if total is None else total

    def build(n: int) -> Prompt:
        head = (f"{task}\n\nThe {n} search results below are satellite image chips "
                f"(lon/lat in WGS84 degrees), best match first"
                f"{f' (the first {n} of {total})' if n < total else ''}:\n")
        parts: list[str | ImagePart] = [head]
        for i in range(n):
            parts.append(f"\n[{i + 1}] {describe_hit(props[i])}\n")
            image = images[i] if i < len(images) else None
            if image is not None:
                parts.append(f"Thumbnail of [{i + 1}] (RGB):\n")
                parts.append(image)
        return Prompt(parts)

    n = len(props)
    prompt = build(n)
    while n > 1 and estimate_tokens(prompt) > max_prompt_tokens:
        # drop about the share that is over budget, at least one hit
        over = estimate_tokens(prompt) / max_prompt_tokens
        n = max(1, min(n - 1, int(n / over)))
        prompt = build(n)
    if n < len(props) and estimate_tokens(prompt) <= max_prompt_tokens:
        warnings.warn(f"the grouped prompt carries {n} of {len(props)} hits: the others "
                      f"exceed max_prompt_tokens={max_prompt_tokens} (estimated)",
                      GeofmWarning, stacklevel=3)
    return prompt, n
