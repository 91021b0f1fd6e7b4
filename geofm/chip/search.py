"""Built-in STAC API search for ``geofm chip --stac``: find items, save them, de-duplicate.

:func:`search_items` asks a STAC API (with pystac-client) for the items of one or more
collections in an area (a bbox, or an AOI file's polygons) and a time range, keeps those
at or below a cloud cover, drops the same acquisition published twice, and writes what it
kept into the run root (``items/search-<hash>.json``, a GeoJSON ItemCollection with the
query and the dropped duplicates as foreign member ``geofm:search``). ``chip`` then reads
that file like ``--items``, so a re-run with the same query needs no API (the saved file
is reused unless ``overwrite``).

De-duplication rule: two items are one acquisition when they have the same sensor, tile
and acquisition time to the second (Earth Search's ``sentinel-2-l2a`` and
``sentinel-2-c1-l2a`` copies, or a reprocessed version). The kept one has the highest
processing baseline; on a tie, the newest ``updated`` / ``created`` /
``processing:datetime``; on a tie, the one the API returned first.

The cloud filter (``eo:cloud_cover``, percent) is applied to the items the API returns,
because not every API supports the query or filter extensions; items without
``eo:cloud_cover`` are kept. ``max_items`` counts kept items: the search stops once that
many distinct acquisitions passed the filters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from geofm.chip.harmonise import version
from geofm.chip.items import scene_from_dict
from geofm.exceptions import CatalogError, GeofmValueError, ItemError
from geofm.io import write_json_atomic
from geofm.layout import RunRoot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StacQuery:
    """One STAC API item search.

    Attributes:
        url: the API's root URL.
        collections: collection ids.
        bbox: ``(west, south, east, north)`` in degrees, or ``None``.
        intersects: a GeoJSON geometry (WGS84), or ``None``.
        datetime: ``"START/END"`` (ISO 8601, either side may be ``..``), or ``None``.
        max_cloud_cover: largest ``eo:cloud_cover``, percent (``None``: no filter).
        max_items: most acquisitions to keep (``None``: all).
    """

    url: str
    collections: tuple[str, ...]
    bbox: tuple[float, float, float, float] | None = None
    intersects: dict[str, Any] | None = None
    datetime: str | None = None
    max_cloud_cover: float | None = None
    max_items: int | None = None

    def digest(self) -> str:
        """12 hex digits naming the saved items file; same query -> same file."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def query_options() -> dict[str, Any]:
    """The ``--stac`` search flags (``geofm chip``, ``geofm run``): :class:`StacQuery` fields.

    ``intersects`` has no flag: the ``--aoi`` file stands for it.

    Returns:
        ``{field: geofm.options.Option}``, in flag order.
    """
    from geofm.cliargs import bbox, positive_int
    from geofm.options import Cli, declare

    title = "STAC API search (instead of --items)"
    return declare(StacQuery, {
        "url": Cli(flags=("--stac",), metavar="URL", title=title,
                   help="search this STAC API and chip what it finds (items saved in "
                        "ROOT/items/)"),
        "collections": Cli(flags=("--collection",), metavar="NAME[,NAME]", title=title,
                           convert=_collections,
                           help="collection(s) to search, e.g. sentinel-2-l2a"),
        "bbox": Cli(type=bbox, metavar="W,S,E,N", title=title,
                    help="search area in degrees (or give --aoi)"),
        "datetime": Cli(metavar="START/END", title=title,
                        help="acquisition dates, e.g. 2024-01-01/2024-12-31"),
        "max_cloud_cover": Cli(type=float, metavar="PCT", title=title,
                               help="keep items whose eo:cloud_cover is at most PCT percent"),
        "max_items": Cli(type=positive_int, metavar="N", title=title,
                         help="keep at most N acquisitions"),
    })


def _collections(value: str | None) -> tuple[str, ...] | None:
    """``--collection a,b`` -> ``("a", "b")``."""
    if value is None:
        return None
    return tuple(c.strip() for c in value.split(",") if c.strip())


def aoi_geometry(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The union of an AOI file's polygons as a WGS84 GeoJSON geometry."""
    import shapely

    from geofm.chip.grid import load_aoi

    return json.loads(shapely.to_geojson(load_aoi(str(path), 4326)))


def _check(query: StacQuery) -> None:
    if not query.collections:
        raise GeofmValueError("--stac needs --collection NAME (e.g. sentinel-2-l2a)")
    if query.bbox is not None and query.intersects is not None:
        raise GeofmValueError("give either a bbox or an AOI to search, not both")
    if query.bbox is not None:
        west, south, east, north = query.bbox
        if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south < north <= 90):
            raise GeofmValueError(f"bbox {query.bbox} is not W,S,E,N in degrees (south < "
                                  "north, longitudes -180..180)")
    if query.max_cloud_cover is not None and not 0 <= query.max_cloud_cover <= 100:
        raise GeofmValueError(f"max_cloud_cover is a percentage (0..100), got "
                              f"{query.max_cloud_cover}")
    if query.max_items is not None and query.max_items < 1:
        raise GeofmValueError(f"max_items must be >= 1, got {query.max_items}")


def _acquisition(item: dict[str, Any], url: str) -> tuple[Any, ...]:
    """The de-duplication key of an item, and its rank (larger is better)."""
    try:
        scene = scene_from_dict(item, base=None, source=url)
    except ItemError:  # chip reports it; never merged with another item
        return ("unparsed", str(item.get("id"))), ((0,), "")
    props = item.get("properties") or {}
    stamp = max((str(props.get(k) or "") for k in ("updated", "created",
                                                   "processing:datetime")), default="")
    baseline = version(scene.harmonisation.baseline) if scene.harmonisation.baseline \
        else (0,)
    key = (scene.sensor, scene.tile, scene.date.replace(microsecond=0).isoformat())
    return key, (baseline, stamp)


def _run_search(query: StacQuery, page_size: int) -> tuple[list[dict], list[dict]]:
    """``(kept items, dropped duplicates)`` from the API."""
    import requests
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    try:
        client = Client.open(query.url)
        search = client.search(collections=list(query.collections), bbox=query.bbox,
                               intersects=query.intersects, datetime=query.datetime,
                               limit=page_size)
        kept: dict[tuple[Any, ...], tuple[Any, int, dict]] = {}
        dropped: list[dict] = []
        for n, item in enumerate(search.items_as_dicts()):
            cover = (item.get("properties") or {}).get("eo:cloud_cover")
            if query.max_cloud_cover is not None and isinstance(cover, int | float) \
                    and cover > query.max_cloud_cover:
                continue
            key, rank = _acquisition(item, query.url)
            if key in kept:
                old_rank, _, old = kept[key]
                better = rank > old_rank  # a tie keeps the one returned first
                loser, winner = (old, item) if better else (item, old)
                dropped.append({"dropped": loser.get("id"), "kept": winner.get("id")})
                if better:
                    kept[key] = (rank, n, item)
                continue
            if query.max_items is not None and len(kept) >= query.max_items:
                break
            kept[key] = (rank, n, item)
    except requests.exceptions.ConnectionError as exc:
        raise CatalogError(f"cannot reach the STAC API {query.url} ({type(exc).__name__}); "
                           "check the URL and the network, or chip saved items with "
                           "--items", url=query.url) from None
    except requests.exceptions.RequestException as exc:
        raise CatalogError(f"the STAC API {query.url} failed: {exc}; check the URL",
                           url=query.url) from None
    except APIError as exc:
        status = getattr(exc, "status_code", None)
        if status is None:  # no HTTP answer at all
            raise CatalogError(f"cannot reach the STAC API {query.url} "
                               f"({str(exc).split('(Caused by')[-1].strip(' ()')[:200]}); "
                               "check the URL and the network, or chip saved items with "
                               "--items", url=query.url) from None
        raise CatalogError(f"the STAC API {query.url} answered an error: {str(exc)[:300]}; "
                           "check --collection, --bbox and --datetime", url=query.url,
                           status=int(status)) from None
    except (ValueError, TypeError) as exc:  # pystac-client: bad bbox/datetime, not STAC JSON
        raise CatalogError(f"searching {query.url} failed: {exc}; check the URL is a STAC API "
                           "and the search arguments", url=query.url) from None
    def order(item: dict) -> tuple[str, str]:
        props = item.get("properties") or {}
        return str(props.get("datetime") or props.get("start_datetime")), str(item.get("id"))

    return sorted((entry[2] for entry in kept.values()), key=order), dropped


def search_items(root: str | os.PathLike[str] | RunRoot, query: StacQuery, *,
                 page_size: int = 100, overwrite: bool = False) -> Path:
    """Search a STAC API and save the items found into the run root.

    Args:
        root: run root; the items go to :meth:`RunRoot.search_items_path`.
        query: what to search (see :class:`StacQuery`).
        page_size: items per API page (``limit``); the search follows ``next`` links.
        overwrite: search again even if this query's saved items exist.

    Returns:
        The saved ItemCollection file (give it to :func:`geofm.chip.chip`).

    Raises:
        GeofmValueError: bad query arguments, or the search found no item.
        CatalogError: the API cannot be reached or answers with an error.
    """
    _check(query)
    run = RunRoot.of(root)
    path = run.search_items_path(query.digest())
    if path.exists() and not overwrite:
        log.info("reusing the items saved for this search: %s", path)
        return path
    items, dropped = _run_search(query, page_size)
    if not items:
        raise GeofmValueError(
            f"the search of {query.url} found no items (collections "
            f"{', '.join(query.collections)}, bbox {query.bbox}, datetime {query.datetime}, "
            f"max cloud cover {query.max_cloud_cover}); widen the area, the dates or the "
            "cloud limit, or check the collection name")
    for pair in dropped:
        log.info("search: %s is the same acquisition as %s; keeping %s", pair["dropped"],
                 pair["kept"], pair["kept"])
    write_json_atomic(path, {"type": "FeatureCollection", "features": items,
                             "geofm:search": {"query": asdict(query), "found": len(items),
                                              "duplicates": dropped}})
    log.info("search: %d items saved to %s", len(items), path)
    return path
