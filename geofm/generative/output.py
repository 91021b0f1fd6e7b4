"""Hits plus generated text in the search output formats.

- ``json``: the search JSON list, each hit with ``generated`` (single prompt; null where
  generation failed); with a grouped task ``{"results": [...], "grouped": "..."}``
  (``"grouped"`` is null when it failed).
- ``geojson``: the search FeatureCollection; ``generated`` among each Feature's
  properties, ``grouped`` as a member of the collection.
- ``table``: the search table, then the per-hit texts and the grouped answer.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import geopandas as gpd

    from geofm.generative import Generation


def format_generation(hits: gpd.GeoDataFrame, generation: Generation, fmt: str = "table",
                      *, single: bool, grouped: bool) -> str:
    """Render hits with their generated texts.

    Args:
        hits: the result rows (unchanged).
        generation: what was generated (possibly partial).
        fmt: ``table``, ``json`` or ``geojson``.
        single: a single prompt was asked for (adds ``generated`` to each hit).
        grouped: a grouped task was asked for (adds ``grouped``).
    """
    from geofm.search.output import format_results, to_feature_collection, to_records

    texts: list[str | None] = list(generation.single or [None] * len(hits))
    if fmt == "json":
        records = to_records(hits)
        if single:
            for rec, text in zip(records, texts, strict=True):
                rec["generated"] = text
        out: Any = {"results": records, "grouped": generation.grouped} if grouped else records
        return json.dumps(out, indent=2)
    if fmt == "geojson":
        collection = to_feature_collection(hits)
        if single:
            for feature, text in zip(collection["features"], texts, strict=True):
                feature["properties"]["generated"] = text
        if grouped:
            collection["grouped"] = generation.grouped
        return json.dumps(collection, indent=2)
    lines = [format_results(hits, fmt)]
    if single and len(hits):
        lines.append("\nGenerated (one per result):")
        for rank, (chip_id, text) in enumerate(zip(hits["chip_id"], texts, strict=True), 1):
            lines.append(f"[{rank}] {chip_id}: {text if text is not None else '(failed)'}")
    if grouped:
        lines.append(f"\nGrouped answer ({generation.grouped_hits} results):")
        lines.append(generation.grouped if generation.grouped is not None else "(failed)")
    return "\n".join(lines)
