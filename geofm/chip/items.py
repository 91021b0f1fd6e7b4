"""Load STAC items and read the facts chipping needs: CRS, tile, date, baseline, hrefs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError, ItemError
from geofm.io import resolve_href
from geofm.sensors import S2_OFFSET_BASELINE, SENSORS

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
        baseline: ``s2:processing_baseline`` (e.g. ``"04.00"``) or ``None``.
        offset_applied: ``earthsearch:boa_offset_applied`` (the +1000 is already removed).
        source: where the item was read from (for messages).
        bbox: the item's WGS84 ``bbox`` (west, south, east, north), if it has one.
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

    @property
    def remove_offset(self) -> bool:
        """True if the +1000 BOA offset of baseline >= 04.00 must be subtracted."""
        if self.sensor != "sentinel-2-l2a" or self.baseline is None or self.offset_applied:
            return False
        return _version(self.baseline) >= _version(S2_OFFSET_BASELINE)

    def href(self, key: str) -> str:
        """Resolved href of asset ``key``; raise :class:`ItemError` naming the fix."""
        try:
            return self.hrefs[key]
        except KeyError:
            fix = ("pass --no-cloud-mask to chip without cloud screening" if key == "scl"
                   else "choose bands the item has with --bands")
            err = ItemError(
                f"item {self.scene_id!r} ({self.source}) has no asset {key!r}; it has "
                f"{', '.join(sorted(self.hrefs)) or 'no assets'}; add the asset or {fix}")
            err.asset, err.path = key, self.source  # type: ignore[attr-defined]
            raise err from None


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(text).split("."))
    except ValueError:
        raise GeofmValueError(f"cannot parse processing baseline {text!r}; expected e.g. "
                              "'04.00'") from None


def _epsg(props: dict[str, Any]) -> int | None:
    if props.get("proj:epsg") is not None:
        return int(props["proj:epsg"])
    code = props.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        return int(code.split(":", 1)[1])
    return None


def _tile(props: dict[str, Any]) -> str | None:
    code = props.get("grid:code")
    if isinstance(code, str) and code:
        return code.split("-", 1)[1] if code.upper().startswith("MGRS-") else code
    if props.get("s2:mgrs_tile"):
        return str(props["s2:mgrs_tile"])
    zone, band, square = (props.get(k) for k in ("mgrs:utm_zone", "mgrs:latitude_band",
                                                  "mgrs:grid_square"))
    if zone is not None and band is not None and square is not None:
        return f"{int(zone):02d}{band}{square}"
    return None


def _date(item_dict: dict[str, Any], source: str) -> datetime:
    props = item_dict.get("properties", {})
    text = props.get("datetime") or props.get("start_datetime")
    if not text:
        raise ItemError(f"item {item_dict.get('id')!r} ({source}) has no datetime; add "
                        "properties.datetime (ISO 8601, UTC)")
    stamp = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def scene_from_dict(item_dict: dict[str, Any], *, base: str | os.PathLike[str] | None,
                    source: str) -> Scene:
    """Build a :class:`Scene` from a STAC item dict.

    Args:
        item_dict: the item as parsed JSON.
        base: file or folder relative asset hrefs are resolved against.
        source: where the item came from, for messages.

    Raises:
        ItemError: the item has no id or no datetime.
    """
    if not item_dict.get("id"):
        raise ItemError(f"STAC item in {source} has no 'id'; every item needs a unique id")
    props = dict(item_dict.get("properties", {}))
    assets = item_dict.get("assets", {})
    epsg = _epsg(props)
    if epsg is None:  # proj on the assets only (STAC 1.1 style)
        epsg = next((e for a in assets.values() if (e := _epsg(a)) is not None), None)
    collection = item_dict.get("collection")
    sensor = collection if collection in SENSORS else DEFAULT_SENSOR
    tile = _tile(props) or (f"EPSG{epsg}" if epsg is not None else "UNKNOWN")
    hrefs = {key: resolve_href(asset["href"], base) for key, asset in assets.items()
             if asset.get("href")}
    return Scene(
        scene_id=str(item_dict["id"]), date=_date(item_dict, source), tile=tile, sensor=sensor,
        epsg=epsg, hrefs=hrefs, baseline=props.get("s2:processing_baseline"),
        offset_applied=bool(props.get("earthsearch:boa_offset_applied", False)), source=source,
        bbox=_bbox(item_dict),
    )


def _bbox(item_dict: dict[str, Any]) -> tuple[float, float, float, float] | None:
    """The item's 2-D WGS84 bbox (a 3-D bbox drops its heights), or None."""
    box = item_dict.get("bbox")
    if not box or len(box) not in (4, 6):
        return None
    west, south = box[0], box[1]
    east, north = (box[2], box[3]) if len(box) == 4 else (box[3], box[4])
    return float(west), float(south), float(east), float(north)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data: dict[str, Any] = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ItemError(f"{path} is not valid JSON ({exc}); fix or remove it") from None
    return data


def _item_dicts(data: dict[str, Any], path: Path) -> list[tuple[dict[str, Any], str]]:
    if data.get("type") == "FeatureCollection":
        return [(f, f"{path}#{i}") for i, f in enumerate(data.get("features", []))]
    if data.get("type") == "Feature":
        return [(data, str(path))]
    raise ItemError(f"{path} is neither a STAC Item nor an ItemCollection (type "
                    f"{data.get('type')!r}); pass item JSON files or a FeatureCollection")


def _self_href(item_dict: dict[str, Any]) -> str | None:
    for link in item_dict.get("links", []):
        if link.get("rel") == "self" and link.get("href"):
            return str(link["href"])
    return None


def load_scenes(items: str | os.PathLike[str] | Iterable[Any]) -> list[Scene]:
    """Load scenes from a folder of item JSONs, an ItemCollection file, one item, or items.

    Relative asset hrefs are resolved against the JSON file they were read from (or an
    in-memory item's ``self`` link). Scenes are returned sorted by date, then id.

    Args:
        items: folder, ``.json``/``.geojson`` file, ``pystac.Item``s or an
            ``ItemCollection``.

    Raises:
        GeofmFileNotFoundError: the path does not exist.
        GeofmValueError: no items found, or two items share an id.
    """
    found: list[tuple[dict[str, Any], str, str | None]] = []
    if isinstance(items, str | os.PathLike):
        path = Path(items)
        if not path.exists():
            raise GeofmFileNotFoundError(f"--items {path} does not exist; pass a folder of "
                                         "STAC item JSON files, an ItemCollection or an item")
        files = (sorted(p for p in path.iterdir() if p.suffix in (".json", ".geojson")
                        and not p.name.startswith(".")) if path.is_dir() else [path])
        for file in files:
            for item_dict, source in _item_dicts(_read_json(file), file):
                found.append((item_dict, source, str(file)))
    else:
        for entry in items:
            item: Any = entry
            as_dict: dict[str, Any] = item.to_dict() if hasattr(item, "to_dict") else dict(item)
            href = getattr(item, "get_self_href", lambda: None)() or _self_href(as_dict)
            found.append((as_dict, href or "<in-memory item>", href))
    if not found:
        raise GeofmValueError(f"no STAC items found in {items}; expected *.json item files "
                              "or an ItemCollection")
    scenes = [scene_from_dict(d, base=base, source=src) for d, src, base in found]
    seen: dict[str, str] = {}
    for scene in scenes:
        if scene.scene_id in seen:
            raise GeofmValueError(f"item id {scene.scene_id!r} appears twice "
                                  f"({seen[scene.scene_id]} and {scene.source}); item ids "
                                  "must be unique")
        seen[scene.scene_id] = scene.source
    return sorted(scenes, key=lambda s: (s.date, s.scene_id))
