"""Load STAC items and read the facts chipping needs: CRS, tile, date, bands, harmonisation.

Items come from the internet, so every field geofm uses is checked where it enters
(docs/contracts.md, "Items geofm accepts"): a malformed item raises :class:`ItemError`
naming the item, its file, the field and the fix, never a bare ``TypeError``. The item
id and tile code must be usable as file names (:mod:`geofm.ids`). Bands are found by the
item's own metadata (:mod:`geofm.chip.assets`), the Sentinel-2 offset is decided from all
its evidence (:mod:`geofm.chip.harmonise`), so every provider's original items work.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from geofm.chip.assets import AssetBand, resolve_bands
from geofm.chip.harmonise import Harmonisation, decide, version
from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError, ItemError
from geofm.ids import ID_FIX, TILE_FIX, id_problem, tile_problem
from geofm.io import resolve_href
from geofm.sensors import SENSORS, Sensor, get_sensor, sensor_for_collection

#: Sensor assumed when an item's collection is not one geofm knows.
DEFAULT_SENSOR = "sentinel-2-l2a"


@dataclass(frozen=True)
class Scene:
    """One acquisition (STAC item) reduced to what chipping needs; picklable.

    Attributes:
        scene_id: the STAC item id.
        date: acquisition time, timezone-aware UTC.
        tile: grid code, e.g. ``"33UUP"`` (falls back to ``"EPSG<code>"``).
        sensor: geofm sensor name, e.g. ``"sentinel-2-l2a"``.
        epsg: EPSG code from ``proj:epsg`` / ``proj:code`` (``None`` if the item has none).
        hrefs: asset key -> local path or remote URI, resolved against the item's location.
        baseline: the processing baseline the offset decision used (e.g. ``"05.11"``,
            see ``harmonisation.baseline_source``), ``None`` for other sensors.
        offset_applied: ``earthsearch:boa_offset_applied`` as the item states it (evidence
            only: ``harmonisation`` decides).
        source: where the item was read from (for messages).
        bbox: the item's WGS84 ``bbox`` (west, south, east, north), if it has one.
        bands: band name -> the asset holding it (:func:`geofm.chip.assets.resolve_bands`).
        harmonisation: the offset decision and its evidence (:mod:`geofm.chip.harmonise`).
        collection: the item's ``collection`` (``None`` if it names none).
        cloud_cover: ``eo:cloud_cover`` in percent, if given.
    """

    scene_id: str
    date: datetime
    tile: str
    sensor: str
    epsg: int | None
    hrefs: dict[str, str]
    baseline: str | None
    offset_applied: bool
    source: str
    bbox: tuple[float, float, float, float] | None = None
    bands: dict[str, AssetBand] = field(default_factory=dict)
    harmonisation: Harmonisation = Harmonisation(0, "not sentinel-2")
    collection: str | None = None
    cloud_cover: float | None = None

    @property
    def remove_offset(self) -> bool:
        """True if the +1000 BOA offset must be subtracted (before chipping's data check)."""
        return self.harmonisation.offset_dn > 0

    def asset_band(self, name: str) -> AssetBand:
        """The asset holding band ``name``; raise :class:`ItemError` naming the fix."""
        try:
            return self.bands[name]
        except KeyError:
            sensor = get_sensor(self.sensor)
            mask = name == sensor.mask_band
            fix = ("pass --no-cloud-mask to chip without cloud screening" if mask
                   else "choose bands the item has with --bands")
            known = sensor.band(name).names if name in sensor.band_names else (name,)
            raise ItemError(
                f"item {self.scene_id!r} ({self.source}) has no asset {name!r} (looked for "
                f"band names / common names / asset keys {', '.join(known)}); it has "
                f"{', '.join(sorted(self.hrefs)) or 'no assets'}; add the asset or {fix}",
                item=self.scene_id, path=self.source, field=f"assets.{name}",
                asset=name) from None

    def href(self, name: str) -> str:
        """Resolved href of band ``name``; raise :class:`ItemError` naming the fix."""
        return self.asset_band(name).href


#: GeoJSON geometry types an item's ``geometry`` may have.
GEOMETRY_TYPES = frozenset({"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon",
                            "MultiPolygon", "GeometryCollection"})


class _Checker:
    """Raises :class:`ItemError` for one item, with its id, file and the field."""

    def __init__(self, item: str | None, source: str, path: str) -> None:
        self.item, self.source, self.path = item, source, path

    def error(self, field: str | None, message: str) -> ItemError:
        who = (f"item {self.item!r} ({self.source})" if self.item is not None
               else f"STAC item in {self.source}")
        return ItemError(f"{who}: {message}", item=self.item, path=self.path, field=field)


def _kind(value: Any) -> str:
    """JSON name of ``value``'s type, for messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _epsg_of(where: dict[str, Any], prefix: str, check: _Checker) -> int | None:
    """EPSG code from ``proj:epsg`` or ``proj:code`` of a properties/asset dict."""
    value = where.get("proj:epsg")
    if value is not None:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str) and value.strip().isdigit():
            number = int(value)
        if number is None or number <= 0:
            raise check.error(f"{prefix}proj:epsg", f"{prefix}proj:epsg {value!r} is not an "
                              "EPSG code; write an integer such as 32633, or remove it and "
                              "give proj:code 'EPSG:32633'")
        return number
    code = where.get("proj:code")
    if code is None:
        return None
    if not isinstance(code, str):
        raise check.error(f"{prefix}proj:code", f"{prefix}proj:code {code!r} is not a "
                          "string; write it like 'EPSG:32633'")
    if code.upper().startswith("EPSG:"):
        digits = code.split(":", 1)[1]
        if not digits.isdigit():
            raise check.error(f"{prefix}proj:code", f"{prefix}proj:code {code!r} has no "
                              "EPSG number; write it like 'EPSG:32633'")
        return int(digits)
    return None


def _tile(props: dict[str, Any], check: _Checker) -> str | None:
    """Grid code from ``grid:code``, ``s2:mgrs_tile``, ``mgrs:*`` or ``landsat:wrs_*``.

    Landsat items without ``grid:code`` (USGS, Planetary Computer) get the code Earth
    Search writes, ``WRS2-<path><row>``, so one scene has one tile code on every
    provider. The code is checked as a path part.
    """
    field, tile = None, None
    code = props.get("grid:code")
    if code is not None and code != "":
        if not isinstance(code, str):
            raise check.error("properties.grid:code", f"properties.grid:code {code!r} is "
                              f"{_kind(code)}, not a string; write it like 'MGRS-33UUP'")
        field = "properties.grid:code"
        tile = code.split("-", 1)[1] if code.upper().startswith("MGRS-") else code
    elif props.get("s2:mgrs_tile"):
        field, tile = "properties.s2:mgrs_tile", str(props["s2:mgrs_tile"])
    elif props.get("landsat:wrs_path") is not None and props.get("landsat:wrs_row") is not None:
        field = "properties.landsat:wrs_path"
        try:
            path, row = int(props["landsat:wrs_path"]), int(props["landsat:wrs_row"])
        except (TypeError, ValueError):
            raise check.error(field, f"landsat:wrs_path/row {props['landsat:wrs_path']!r}/"
                              f"{props['landsat:wrs_row']!r} are not numbers; write them "
                              "like '028' / '030'") from None
        tile = f"WRS{props.get('landsat:wrs_type', '2')}-{path:03d}{row:03d}"
    else:
        zone, band, square = (props.get(k) for k in ("mgrs:utm_zone", "mgrs:latitude_band",
                                                      "mgrs:grid_square"))
        if zone is None or band is None or square is None:
            return None
        field = "properties.mgrs:utm_zone"
        try:
            number = int(zone)
        except (TypeError, ValueError):
            raise check.error(field, f"properties.mgrs:utm_zone {zone!r} is not a UTM zone "
                              "number; write an integer 1..60") from None
        field, tile = "properties.mgrs:*", f"{number:02d}{band}{square}"
    problem = tile_problem(tile)
    if problem is not None:
        raise check.error(field, f"tile code {tile!r} (from {field}) {problem}; {TILE_FIX}")
    return tile


def _date(props: dict[str, Any], check: _Checker) -> datetime:
    key = "datetime" if props.get("datetime") else "start_datetime"
    text = props.get(key)
    if not text:
        raise check.error("properties.datetime", "has no datetime; add properties.datetime "
                          "(ISO 8601, UTC, e.g. '2021-06-01T10:00:00Z')")
    stamp = None
    if isinstance(text, str):
        try:
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            stamp = None
    if stamp is None:
        raise check.error(f"properties.{key}", f"properties.{key} {text!r} is not an ISO 8601 "
                          "date-time; write it like '2021-06-01T10:00:00Z'")
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def _bbox(item_dict: dict[str, Any], check: _Checker) -> tuple[float, float, float, float] | None:
    """The item's 2-D WGS84 bbox (a 3-D bbox drops its heights), or None if it has none."""
    import math

    box = item_dict.get("bbox")
    if box is None or (isinstance(box, list | tuple) and not box):  # pystac writes []
        return None
    if (not isinstance(box, list | tuple) or len(box) not in (4, 6)
            or not all(isinstance(v, int | float) and not isinstance(v, bool)
                       and math.isfinite(v) for v in box)):
        raise check.error("bbox", f"bbox {box!r} is not 4 (or 6) numbers; write "
                          "[west, south, east, north] in degrees, or remove it")
    west, south = box[0], box[1]
    east, north = (box[2], box[3]) if len(box) == 4 else (box[3], box[4])
    return float(west), float(south), float(east), float(north)


def _check_geometry(item_dict: dict[str, Any], check: _Checker) -> None:
    """Require a GeoJSON geometry: an item with ``geometry: null`` is not located."""
    geometry = item_dict.get("geometry")
    if geometry is None:
        raise check.error("geometry", "geometry is null or missing, so STAC says the item is "
                          "not located on Earth; geofm chips located rasters only: give the "
                          "item its WGS84 footprint as a GeoJSON geometry (every provider's "
                          "Sentinel-2 / Landsat items have one)")
    if not isinstance(geometry, dict) or geometry.get("type") not in GEOMETRY_TYPES:
        shown = geometry.get("type") if isinstance(geometry, dict) else geometry
        raise check.error("geometry", f"geometry {str(shown)[:80]!r} is not a GeoJSON "
                          f"geometry (type one of {', '.join(sorted(GEOMETRY_TYPES))}); fix "
                          "the item")


def _hrefs(assets: dict[str, Any], base: str | os.PathLike[str] | None,
           check: _Checker) -> dict[str, str]:
    hrefs = {}
    for key, asset in assets.items():
        if not isinstance(asset, dict):
            raise check.error(f"assets.{key}", f"asset {key!r} is {_kind(asset)}, not an "
                              "object with an 'href'; fix the item")
        href = asset.get("href")
        if not isinstance(href, str) or not href:
            raise check.error(f"assets.{key}.href", f"asset {key!r} has no href (got "
                              f"{href!r}); give every asset the path or URL of its file")
        hrefs[str(key)] = resolve_href(href, base)
    return hrefs


def scene_from_dict(item_dict: dict[str, Any], *, base: str | os.PathLike[str] | None,
                    source: str, path: str | None = None) -> Scene:
    """Build a :class:`Scene` from a STAC item dict, checking every field it uses.

    Args:
        item_dict: the item as parsed JSON.
        base: file or folder relative asset hrefs are resolved against.
        source: where the item came from, for messages (e.g. ``items.json#3``).
        path: the file it was read from (``ItemError.path``); ``source`` if not given.

    Raises:
        ItemError: the item is not an object; its id is missing or unsafe as a file name
            (:func:`geofm.ids.id_problem`); ``properties`` is missing or not an object;
            ``geometry`` is null or not GeoJSON; ``assets`` is not an object or an asset
            has no href; ``datetime``, ``proj:epsg``/``proj:code``, the tile code,
            ``bbox``, ``s2:processing_baseline`` or ``earthsearch:boa_offset_applied``
            is malformed; its collection is not one geofm chips (``field`` is
            ``"collection"``). The error's ``item``, ``path`` and ``field`` say which.
    """
    check = _Checker(None, source, path if path is not None else source)
    if not isinstance(item_dict, dict):
        raise check.error(None, f"is {_kind(item_dict)}, not a JSON object; each STAC item "
                          "is an object with 'id', 'properties' and 'assets'")
    raw_id = item_dict.get("id")
    if raw_id is None or raw_id == "":
        raise check.error("id", "has no 'id'; every item needs a unique id")
    problem = id_problem(raw_id)
    if problem is not None:
        check.item = str(raw_id)
        raise check.error("id", f"its id {problem}; {ID_FIX}")
    check.item = scene_id = str(raw_id)
    props = item_dict.get("properties")
    if not isinstance(props, dict):
        raise check.error("properties", f"'properties' is {_kind(props)}, not an object; a "
                          "STAC item keeps datetime, proj:epsg and grid:code there")
    _check_geometry(item_dict, check)
    assets = item_dict.get("assets")
    assets = {} if assets is None else assets
    if not isinstance(assets, dict):
        raise check.error("assets", f"'assets' is {_kind(assets)}, not an object; write it "
                          "as {\"<key>\": {\"href\": ...}, ...}")
    hrefs = _hrefs(assets, base, check)
    epsg = _epsg_of(props, "properties.", check)
    if epsg is None:  # proj on the assets only (STAC 1.1 style)
        epsg = next((e for k, a in assets.items()
                     if (e := _epsg_of(a, f"assets.{k}.", check)) is not None), None)
    collection = item_dict.get("collection")
    collection = collection if isinstance(collection, str) and collection else None
    sensor = _sensor(collection, props, check)
    tile = _tile(props, check) or (f"EPSG{epsg}" if epsg is not None else "UNKNOWN")
    baseline = props.get("s2:processing_baseline")
    if baseline is not None:
        baseline = str(baseline)
        try:
            version(baseline)
        except ValueError:
            raise check.error("properties.s2:processing_baseline",
                              f"properties.s2:processing_baseline {baseline!r} is not a "
                              "version; write it like '04.00'") from None
    flag = props.get("earthsearch:boa_offset_applied")
    if flag is not None and not isinstance(flag, bool):
        raise check.error("properties.earthsearch:boa_offset_applied",
                          f"properties.earthsearch:boa_offset_applied {flag!r} is not "
                          "true or false; write a JSON boolean")
    bands = resolve_bands(assets, hrefs, sensor)
    when = _date(props, check)
    harmonisation = Harmonisation(0, "not sentinel-2")
    if sensor.name == DEFAULT_SENSOR:
        declared = [b.offset for b in bands.values() if b.offset is not None
                    and not sensor.band(b.band).is_mask]
        harmonisation = decide(props=props, item_id=scene_id, when=when,
                               declared_offsets=declared, flag=flag)
    cover = props.get("eo:cloud_cover")
    return Scene(
        scene_id=scene_id, date=when, tile=tile, sensor=sensor.name, epsg=epsg,
        hrefs=hrefs, baseline=harmonisation.baseline, offset_applied=bool(flag),
        source=source, bbox=_bbox(item_dict, check), bands=bands,
        harmonisation=harmonisation, collection=collection,
        cloud_cover=float(cover) if isinstance(cover, int | float)
        and not isinstance(cover, bool) else None,
    )


def _sensor(collection: str | None, props: dict[str, Any], check: _Checker) -> Sensor:
    """The item's sensor: by its collection, else its platform; no collection -> Sentinel-2.

    A sensor geofm knows but does not chip (:attr:`geofm.sensors.Sensor.not_chipped`:
    NAIP, Sentinel-1 RTC) is refused with the reason, like an unknown collection.
    """
    found = sensor_for_collection(collection)
    known = sorted({c for s in SENSORS.values() if s.not_chipped is None
                    for c in (s.name, *s.collections)})
    if found is not None and found.not_chipped is not None:
        raise check.error("collection", f"collection {collection!r} is not one geofm can chip "
                          f"yet: {found.not_chipped}; search a Sentinel-2 L2A or Landsat C2 "
                          f"L2 collection ({', '.join(known)})")
    if found is not None:
        return found
    platform = " ".join(str(props.get(k, "")) for k in ("platform", "constellation")).lower()
    if "sentinel-2" in platform or any(k.startswith("s2:") for k in props):
        return get_sensor(DEFAULT_SENSOR)
    if "landsat" in platform or any(k.startswith("landsat:") for k in props):
        return get_sensor("landsat-c2-l2")
    if collection is None:
        return get_sensor(DEFAULT_SENSOR)
    raise check.error("collection", f"collection {collection!r} is not one geofm can chip "
                      f"(Sentinel-2 L2A or Landsat C2 L2: {', '.join(known)}); search "
                      "one of those collections")


def _read_json(path: Path) -> Any:
    """Parse one items file; :class:`ItemError` naming it when it cannot be."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except UnicodeDecodeError as exc:
        raise ItemError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); STAC "
                        "items are UTF-8 JSON: re-save it as UTF-8 or remove it",
                        path=str(path)) from None
    except json.JSONDecodeError as exc:
        raise ItemError(f"{path} is not valid JSON ({exc}); fix or remove it",
                        path=str(path)) from None
    except OSError as exc:
        raise ItemError(f"{path} cannot be read ({exc.strerror or exc}); fix its "
                        "permissions or remove it", path=str(path)) from None


def _item_dicts(data: Any, path: Path) -> list[tuple[Any, str]]:
    """``(item, source)`` pairs of one parsed file: an Item, an ItemCollection or a list."""
    if isinstance(data, list):  # a bare JSON list of items: accepted as a convenience
        return [(f, f"{path}#{i}") for i, f in enumerate(data)]
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise ItemError(f"{path} is a FeatureCollection whose 'features' is "
                            f"{_kind(features)}, not a list of items; fix the file",
                            path=str(path), field="features")
        return [(f, f"{path}#{i}") for i, f in enumerate(features)]
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [(data, str(path))]
    kind = f"type {data.get('type')!r}" if isinstance(data, dict) else _kind(data)
    raise ItemError(f"{path} is neither a STAC Item, an ItemCollection nor a list of items "
                    f"({kind}); pass item JSON files or a FeatureCollection", path=str(path))


def _self_href(item_dict: dict[str, Any]) -> str | None:
    links = item_dict.get("links")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("rel") == "self" \
                and isinstance(link.get("href"), str) and link["href"]:
            return str(link["href"])
    return None


def _pystac_dict(item: Any) -> Any:
    """A ``pystac.Item`` as its dict, offline: hrefs as written, no catalog root fetched."""
    try:
        return item.to_dict(transform_hrefs=False)
    except TypeError:  # an object with a to_dict() that takes no such option
        return item.to_dict()


@dataclass(frozen=True)
class LoadedItems:
    """What :func:`load_items` found.

    Attributes:
        scenes: the usable scenes, sorted by date, then id.
        errors: one :class:`ItemError` per unusable item or unreadable file (``item``,
            ``path`` and ``field`` say which), in input order.
        source: the input, for messages.
    """

    scenes: list[Scene]
    errors: list[ItemError]
    source: str

    def require_scenes(self) -> None:
        """Raise if no item is usable: the whole input is then bad, before any work.

        Raises:
            ItemError: every item failed; the one error, or a summary of them.
        """
        if self.scenes or not self.errors:
            return
        if len(self.errors) == 1:
            raise self.errors[0]
        shown = "\n  ".join(str(e) for e in self.errors[:5])
        more = f"\n  ... and {len(self.errors) - 5} more" if len(self.errors) > 5 else ""
        raise ItemError(f"none of the {len(self.errors)} items in {self.source} can be "
                        f"chipped; fix them:\n  {shown}{more}", path=self.source)


def load_items(items: str | os.PathLike[str] | Iterable[Any]) -> LoadedItems:
    """Load scenes, keeping each bad item's (or bad file's) error instead of raising it.

    Accepts a folder of item JSONs (``*.json``, ``*.geojson``; names starting with ``.``
    are skipped), one file holding an Item, an ItemCollection or a JSON list of Items,
    or in-memory ``pystac.Item`` objects / dicts. Relative asset hrefs are resolved
    against the JSON file they were read from (or an in-memory item's ``self`` link).

    Args:
        items: folder, file, or iterable of items.

    Returns:
        The usable scenes and the per-item errors (see :class:`LoadedItems`).

    Raises:
        GeofmFileNotFoundError: the path does not exist.
        GeofmValueError: nothing at all was found, or two items share an id.
    """
    found: list[tuple[Any, str, str | None, str]] = []  # item, source, base, file
    errors: list[ItemError] = []
    if isinstance(items, str | os.PathLike):
        path = Path(items)
        if not path.exists():
            raise GeofmFileNotFoundError(f"--items {path} does not exist; pass a folder of "
                                         "STAC item JSON files, an ItemCollection or an item")
        files = (sorted(p for p in path.iterdir() if p.suffix in (".json", ".geojson")
                        and not p.name.startswith(".")) if path.is_dir() else [path])
        for file in files:
            try:
                pairs = _item_dicts(_read_json(file), file)
            except ItemError as exc:
                errors.append(exc)
                continue
            found.extend((d, source, str(file), str(file)) for d, source in pairs)
    else:
        for i, entry in enumerate(items):
            item: Any = entry
            as_dict: Any = (_pystac_dict(item) if hasattr(item, "to_dict") else
                            dict(item) if isinstance(item, dict) else item)
            href = getattr(item, "get_self_href", lambda: None)() or (
                _self_href(as_dict) if isinstance(as_dict, dict) else None)
            source = href or f"<in-memory item #{i}>"
            found.append((as_dict, source, href, source))
    if not found and not errors:
        raise GeofmValueError(f"no STAC items found in {items}; expected *.json item files "
                              "or an ItemCollection")
    scenes = []
    for d, source, base, file_name in found:
        try:
            scenes.append(scene_from_dict(d, base=base, source=source, path=file_name))
        except ItemError as exc:
            errors.append(exc)
    seen: dict[str, str] = {}
    for scene in scenes:
        if scene.scene_id in seen:
            raise GeofmValueError(f"item id {scene.scene_id!r} appears twice "
                                  f"({seen[scene.scene_id]} and {scene.source}); item ids "
                                  "must be unique")
        seen[scene.scene_id] = scene.source
    label = str(items) if isinstance(items, str | os.PathLike) else "<items>"
    return LoadedItems(sorted(scenes, key=lambda s: (s.date, s.scene_id)), errors, label)


def load_scenes(items: str | os.PathLike[str] | Iterable[Any]) -> list[Scene]:
    """Load scenes like :func:`load_items`, but raise the first bad item's error.

    Args:
        items: folder, ``.json``/``.geojson`` file, ``pystac.Item``s or an
            ``ItemCollection``.

    Returns:
        The scenes, sorted by date, then id.

    Raises:
        GeofmFileNotFoundError: the path does not exist.
        GeofmValueError: no items found, or two items share an id.
        ItemError: an item (or file) is unusable.
    """
    loaded = load_items(items)
    if loaded.errors:
        raise loaded.errors[0]
    return loaded.scenes
