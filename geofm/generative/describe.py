"""``geofm index --describe PROMPT``: one generated description per chip, and text search.

For every chip of the index (its latest acquisition: properties and, with
``with_images``, thumbnail) the prompt template is filled as for ``--single-prompt``
and sent to the model. Descriptions are cached in ``index/descriptions.parquet``
(columns ``chip_id prompt_hash provider model prompt description created``), keyed by
``chip_id`` and ``prompt_hash`` = SHA-256 of provider, model, ``with_images`` and the
template: a re-run calls the model only for chips without a description for that key
(new chips, another prompt or model).

The ``chips`` table then gets the text columns of
:data:`geofm.index.table.TEXT_COLUMNS` on every row (``description``; ``search_text`` =
description + chip id, tile, scene id and change status) and LanceDB's native full-text
(BM25) index on ``search_text``, which ``geofm search --text`` queries. ``geofm index
--overwrite`` rebuilds the table without them, and rows that a later plain ``geofm
index`` adds have none; the next ``--describe`` fills them from the cache and calls the
model only for chips it has not described.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from geofm.exceptions import GenerationError, GeofmFileNotFoundError, GeofmValueError
from geofm.generative.prompts import MAX_PROMPT_TOKENS
from geofm.layout import RunRoot

if TYPE_CHECKING:
    import lancedb
    import pandas as pd

    from geofm.generative.providers import Provider
    from geofm.manifest import StageRecord

log = logging.getLogger(__name__)

DESCRIPTIONS_NAME = "descriptions.parquet"
#: chip columns a description template may use (plus ``rank``, ``lon``, ``lat``).
DESCRIBE_COLUMNS = ("chip_id", "scene_id", "tile", "date", "cloud_fraction",
                    "thumbnail_path", "change_status", "change", "change_date", "magnitude")
#: new descriptions between two writes of the cache.
SAVE_EVERY = 25


@dataclass
class DescribeRequest:
    """What ``--describe`` asks for.

    Attributes:
        prompt: the template (placeholders as in :mod:`geofm.generative.prompts`).
        provider: the language model.
        with_images: send each chip's thumbnail.
        max_prompt_tokens: prompt budget (estimated tokens).
    """

    prompt: str
    provider: Provider
    with_images: bool = False
    max_prompt_tokens: int = MAX_PROMPT_TOKENS

    @classmethod
    def of(cls, value: DescribeRequest | Mapping[str, Any]) -> DescribeRequest:
        """A request from itself or from a mapping (``geofm run`` YAML).

        The mapping has ``prompt``, optional ``with_images`` and ``max_prompt_tokens``,
        and ``provider`` plus :func:`~geofm.generative.providers.make_provider`'s options,
        e.g. ``{prompt: "Describe {chip_id}", provider: bedrock, model: ID}``.

        Raises:
            GeofmValueError: not a mapping, no prompt, or bad provider options.
            TemplateError: unknown placeholder in the prompt.
        """
        from geofm.generative import prompts as pr
        from geofm.generative.providers import make_provider

        if isinstance(value, DescribeRequest):
            request = value
        elif isinstance(value, Mapping):
            options = dict(value)
            prompt = options.pop("prompt", None)
            if not isinstance(prompt, str) or not prompt:
                raise GeofmValueError(f"index option 'describe' needs a 'prompt' string, got "
                                      f"{value!r}")
            with_images = bool(options.pop("with_images", False))
            budget = int(options.pop("max_prompt_tokens", MAX_PROMPT_TOKENS))
            try:
                provider = make_provider(str(options.pop("provider", "")), **options)
            except TypeError as exc:
                raise GeofmValueError(f"index option 'describe': {exc}") from exc
            request = cls(prompt=prompt, provider=provider, with_images=with_images,
                          max_prompt_tokens=budget)
        else:
            raise GeofmValueError(f"index option 'describe' must be a mapping with 'prompt' "
                                  f"and 'provider', got {value!r}")
        pr.check_template(request.prompt, sorted({*DESCRIBE_COLUMNS, *pr.DERIVED}))
        return request

    @property
    def key(self) -> str:
        """Cache key of this prompt, provider, model and image choice (16 hex digits)."""
        text = "\n".join([self.provider.name, self.provider.model, str(self.with_images),
                          self.prompt])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def descriptions_path(root: RunRoot) -> Any:
    """Path of the description cache."""
    return root.index_dir / DESCRIPTIONS_NAME


def read_descriptions(root: RunRoot) -> pd.DataFrame:
    """The description cache (empty frame with its columns when absent)."""
    import pandas as pd

    path = descriptions_path(root)
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype=object) for c in
                             ("chip_id", "prompt_hash", "provider", "model", "prompt",
                              "description", "created")})
    return pd.read_parquet(path)


def _write_descriptions(root: RunRoot, frame: pd.DataFrame) -> None:
    from geofm.io import write_bytes_atomic

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes_atomic(descriptions_path(root), buffer.getvalue())


def _latest_rows(table: lancedb.table.Table) -> Any:
    """The latest acquisition of each chip as a GeoDataFrame (EPSG:4326)."""
    import geopandas as gpd
    import shapely

    rows = (table.search().select([*DESCRIBE_COLUMNS, "geometry"]).limit(None)
            .to_arrow().to_pandas())
    rows = rows.sort_values(["chip_id", "date"], kind="stable").groupby("chip_id").tail(1)
    rows["geometry"] = shapely.from_wkb(rows["geometry"].to_numpy())
    return gpd.GeoDataFrame(rows.reset_index(drop=True), geometry="geometry", crs=4326)


def apply_text_index(table: lancedb.table.Table, descriptions: dict[str, str]) -> None:
    """Write ``description``/``search_text`` on every row and (re)build the FTS index.

    Args:
        table: the ``chips`` table.
        descriptions: chip id -> description (chips without one get metadata text only).
    """
    import pyarrow as pa
    from lancedb.index import FTS

    from geofm.index.table import FTS_COLUMN, KEY, TEXT_COLUMNS

    missing = [c for c in TEXT_COLUMNS if c not in table.schema.names]
    if missing:
        table.add_columns(pa.schema([pa.field(c, pa.string()) for c in missing]))
    rows = (table.search().select([KEY, "chip_id", "tile", "scene_id", "change_status"])
            .limit(None).to_arrow().to_pylist())
    if not rows:
        return
    desc = [descriptions.get(r["chip_id"]) for r in rows]
    text = [" ".join(str(v) for v in (d, r["chip_id"], r["tile"], r["scene_id"],
                                      r["change_status"]) if v)
            for d, r in zip(desc, rows, strict=True)]
    update = pa.table({KEY: [r[KEY] for r in rows], TEXT_COLUMNS[0]: pa.array(desc, pa.string()),
                       TEXT_COLUMNS[1]: pa.array(text, pa.string())})
    table.merge_insert(KEY).when_matched_update_all().execute(update)
    table.create_index(FTS_COLUMN, config=FTS(), replace=True)


def describe_chips(root: str | RunRoot, request: DescribeRequest, *,
                   record: StageRecord | None = None) -> dict[str, int]:
    """Describe every indexed chip (cached) and build the full-text index.

    Args:
        root: run root with an index.
        request: prompt, provider and options.
        record: the index stage's record; failed chips are recorded there.

    Returns:
        Counts ``described`` (model calls made), ``cached`` (reused), ``failed``.

    Raises:
        TemplateError: the prompt names an unknown placeholder (before any call).
        SearchIndexError: no index.
    """
    import pandas as pd

    from geofm.generative import prompts as pr
    from geofm.index.table import open_table

    root = RunRoot.of(root)
    pr.check_template(request.prompt, sorted({*DESCRIBE_COLUMNS, *pr.DERIVED}))
    table = open_table(root)
    chips = _latest_rows(table)
    cache = read_descriptions(root)
    key = request.key
    mine = cache[cache["prompt_hash"] == key]
    done = dict(zip(mine["chip_id"], mine["description"], strict=True))
    todo = [i for i, c in enumerate(chips["chip_id"]) if c not in done]
    props = pr.hit_properties(chips)
    provider = request.provider
    new: list[dict[str, Any]] = []
    failed = 0

    def save() -> None:
        if new:
            _write_descriptions(root, pd.concat([read_descriptions(root), pd.DataFrame(new)],
                                                ignore_index=True))
            new.clear()

    described = 0
    try:
        for i in todo:
            chip_id = props[i]["chip_id"]
            try:
                image = pr.thumbnail(root, props[i]) if request.with_images else None
                prompt = pr.single_prompt(request.prompt, props[i], image=image)
                size = pr.estimate_tokens(prompt)
                if size > request.max_prompt_tokens:
                    raise GeofmValueError(f"the description prompt of {chip_id} is about "
                                          f"{size} tokens, over max_prompt_tokens="
                                          f"{request.max_prompt_tokens}; shorten it")
                text = provider.generate(prompt)
            except (GeofmFileNotFoundError, GeofmValueError) as exc:
                failed += 1
                if record is not None:
                    record.fail(chip_id, str(exc))
                log.error("describe %s: %s", chip_id, exc)
                continue
            except GenerationError as exc:
                failed += len(todo) - described - failed
                if record is not None:
                    record.fail(chip_id, f"description failed, later chips not tried: {exc}")
                log.error("describe %s: %s", chip_id, exc)
                break
            described += 1
            done[chip_id] = text
            new.append({"chip_id": chip_id, "prompt_hash": key, "provider": provider.name,
                        "model": provider.model, "prompt": request.prompt,
                        "description": text, "created": pd.Timestamp.now(tz="UTC")})
            if len(new) >= SAVE_EVERY:
                save()
    finally:
        save()
    apply_text_index(table, done)
    if record is not None:
        record.extra["describe"] = {"prompt": request.prompt, "prompt_hash": key,
                                    "provider": provider.name, "model": provider.model,
                                    "with_images": request.with_images}
    counts = {"described": described, "cached": len(chips) - len(todo), "failed": failed}
    log.info("describe: %d chips described, %d from the cache, %d failed", *counts.values())
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--describe`` and the provider options to ``geofm index``."""
    from geofm.generative.cli import add_provider_arguments

    parser.add_argument("--describe", metavar="PROMPT",
                        help="store one generated description per chip (cached) and build "
                        "the full-text index for `geofm search --text`; placeholders as in "
                        "`geofm search --single-prompt`")
    add_provider_arguments(parser)


def request_from_args(args: argparse.Namespace) -> DescribeRequest | None:
    """The describe request of ``geofm index`` options (None without ``--describe``).

    Raises:
        TemplateError: unknown placeholder.
        GeofmValueError: provider options missing.
    """
    from geofm.generative import prompts as pr
    from geofm.generative.cli import provider_from_args

    if args.describe is None:
        if args.generative_provider:
            raise GeofmValueError("--generative-provider needs --describe PROMPT")
        return None
    pr.check_template(args.describe, sorted({*DESCRIBE_COLUMNS, *pr.DERIVED}))
    return DescribeRequest(prompt=args.describe, provider=provider_from_args(args),
                           with_images=args.with_images)
