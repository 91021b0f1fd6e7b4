"""What ``geofm serve`` reads from a run root: the run summary, the chip layer, one chip.

Everything here only *reads* the run root (no file is created, changed or locked there),
so the app can be pointed at a root that a stage is still writing or that is shared
read-only. Tables are read with pyarrow / geopandas; what every page needs (the chip
layer) is computed once and cached, the rest (one chip's acquisitions and timeline) is
read per request.

The chip layer is what the map draws: one entry per chip id of the run (the union of
``meta/*.parquet``, so chips that were never valid are shown too), sorted by chip id, with

- its WGS84 footprint as a quadrilateral: float32 ``[N, 4, 2]`` (lon, lat) corners,
  the footprint polygon simplified to its 4 corners (NaN where a chip has no footprint);
- its change status code (:data:`STATUS_NAMES`) from ``analysis/changes.parquet``;
- its change date and magnitude where the status is ``change``.

Search goes through :func:`geofm.search.search` (the function behind ``geofm search``);
:func:`search_options` only turns URL query parameters into its keyword arguments.
"""

from __future__ import annotations

import difflib
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geofm.exceptions import GeofmError, GeofmFileNotFoundError, GeofmKeyError, GeofmValueError
from geofm.layout import RunRoot

if TYPE_CHECKING:
    import geopandas as gpd
    import numpy as np
    import pandas as pd

#: status code -> name; codes 0..2 are analyze's statuses, 3 = the chip is not analysed.
STATUS_NAMES = ("no change", "change", "insufficient data", "not analysed")
NOT_ANALYSED = 3
#: most results one search may ask for.
MAX_K = 1000
_META_COLUMNS = ("chip_id", "scene_id", "tile", "sensor", "date", "row", "col", "epsg", "minx",
                 "miny", "maxx", "maxy", "cloud_fraction", "nodata_fraction", "valid",
                 "thumbnail_path", "bands")


class UnknownChipError(GeofmError, LookupError):
    """A chip id that is not a chip of the served run.

    Attributes:
        chip_id: the id asked for.
        suggestions: close chip ids of the run (may be empty).
    """

    def __init__(self, message: str, *, chip_id: str, suggestions: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.chip_id = chip_id
        self.suggestions = list(suggestions)

    def __str__(self) -> str:  # LookupError would not quote, but keep it explicit
        return str(self.args[0]) if self.args else ""


@dataclass
class ChipLayer:
    """Every chip of the run, in chip-id order (see the module docstring).

    Attributes:
        chip_ids: sorted chip ids, length N.
        corners: float32 [N, 4, 2] WGS84 (lon, lat) footprint corners; NaN = no footprint.
        status: uint8 [N] status codes (index into :data:`STATUS_NAMES`).
        change_date: datetime64[ns, UTC] [N], NaT unless the chip changed.
        magnitude: float32 [N] change magnitude (median scaled residual), NaN if none.
        details: analyze's per-chip columns (``n_observations``, ``n_baseline``,
            ``rmse``) indexed by chip id; empty without analysis.
    """

    chip_ids: list[str]
    corners: np.ndarray
    status: np.ndarray
    change_date: pd.DatetimeIndex
    magnitude: np.ndarray
    details: pd.DataFrame

    def __len__(self) -> int:
        return len(self.chip_ids)

    def position(self, chip_id: str) -> int | None:
        """Row of ``chip_id`` in the layer, or None when it is not a chip of the run."""
        import bisect

        i = bisect.bisect_left(self.chip_ids, chip_id)
        return i if i < len(self.chip_ids) and self.chip_ids[i] == chip_id else None

    def bounds(self) -> list[float] | None:
        """``[west, south, east, north]`` WGS84 degrees of every footprint (None if none)."""
        import numpy as np

        ok = np.isfinite(self.corners[:, :, 0]).all(axis=1)
        if not ok.any():
            return None
        pts = self.corners[ok].reshape(-1, 2).astype(np.float64)
        return [float(pts[:, 0].min()), float(pts[:, 1].min()),
                float(pts[:, 0].max()), float(pts[:, 1].max())]

    def payload(self) -> dict[str, Any]:
        """JSON-ready layer without the corners (those go as binary, see ``corner_bytes``).

        Returns:
            ``{"n", "chip_ids", "status" (codes), "status_names", "bounds", "changes"}``
            where ``changes`` lists the changed chips ``{"i", "chip_id", "change_date"
            (YYYY-MM-DD), "magnitude"}`` in chip-id order.
        """
        import numpy as np

        changed = np.flatnonzero(self.status == STATUS_NAMES.index("change"))
        changes = [{"i": int(i), "chip_id": self.chip_ids[i],
                    "change_date": _day(self.change_date[i]),
                    "magnitude": _number(self.magnitude[i])} for i in changed]
        return {"n": len(self), "chip_ids": self.chip_ids,
                "status": self.status.astype(int).tolist(), "status_names": list(STATUS_NAMES),
                "bounds": self.bounds(), "changes": changes}

    def corner_bytes(self) -> bytes:
        """The corners as little-endian float32 [N, 4, 2] (lon, lat), row-major."""
        import numpy as np

        return np.ascontiguousarray(self.corners, dtype="<f4").tobytes()


def _day(value: Any) -> str | None:
    import pandas as pd

    return None if value is None or pd.isna(value) else pd.Timestamp(value).strftime("%Y-%m-%d")


def _iso(value: Any) -> str | None:
    import pandas as pd

    return None if value is None or pd.isna(value) else pd.Timestamp(value).isoformat()


def _number(value: Any, digits: int = 6) -> float | None:
    """A finite float rounded to ``digits``, or None (JSON has no NaN)."""
    import math

    if value is None:
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def _numbers(values: Any, digits: int = 6) -> list[float | None]:
    return [_number(v, digits) for v in values]


def quad_corners(geometries: Any) -> np.ndarray:
    """WGS84 footprint polygons -> their 4 corners, float32 [N, 4, 2] (lon, lat).

    A chip footprint is a box in the native CRS, densified and projected, so its exterior
    ring turns sharply at 4 vertices (about 90 degrees) and hardly at all elsewhere; those
    4 vertices are kept, in ring order. A polygon without 4 such clear corners (a
    triangle, a pentagon, a circle) is replaced by its minimum rotated rectangle.
    Missing or empty geometries give NaN corners.

    Args:
        geometries: array-like of shapely geometries (or None), length N.
    """
    import numpy as np
    import shapely

    geoms = np.asarray(geometries, dtype=object)
    out = np.full((geoms.size, 4, 2), np.nan, dtype=np.float32)
    ok = np.array([g is not None for g in geoms], dtype=bool)
    ok[ok] = ~shapely.is_empty(geoms[ok])
    idx = np.flatnonzero(ok)
    if not idx.size:
        return out
    rings = shapely.get_exterior_ring(geoms[idx])
    counts = shapely.get_num_coordinates(rings)
    done = np.zeros(idx.size, dtype=bool)
    for count in np.unique(counts[counts >= 5]):  # usually one value: every chip alike
        sel = np.flatnonzero(counts == count)
        pts = shapely.get_coordinates(rings[sel]).reshape(sel.size, count, 2)[:, :-1]
        back = pts - np.roll(pts, 1, axis=1)
        ahead = np.roll(pts, -1, axis=1) - pts
        turn = np.abs(np.arctan2(back[..., 0] * ahead[..., 1] - back[..., 1] * ahead[..., 0],
                                 (back * ahead).sum(axis=-1)))
        order = np.argsort(-turn, axis=1)
        corners = np.sort(order[:, :4], axis=1)
        fourth = np.take_along_axis(turn, order[:, 3:4], axis=1)[:, 0]
        fifth = (np.take_along_axis(turn, order[:, 4:5], axis=1)[:, 0] if count > 5
                 else np.zeros(sel.size))
        clear = (fourth > 0.35) & (fifth < 0.1)  # 4 turns of > 20 degrees, no 5th > 6
        out[idx[sel[clear]]] = np.take_along_axis(pts[clear], corners[clear][..., None],
                                                  axis=1)
        done[sel[clear]] = True
    rest = np.flatnonzero(~done)
    if rest.size:
        boxes = shapely.get_exterior_ring(shapely.oriented_envelope(geoms[idx[rest]]))
        good = shapely.get_num_coordinates(boxes) == 5  # a degenerate envelope stays NaN
        out[idx[rest[good]]] = shapely.get_coordinates(boxes[good]).reshape(-1, 5, 2)[:, :4]
    return out


def _stage_hint(stage: str, root: Path) -> str:
    return {
        "chip": f"geofm chip --items ITEMS --out {root}",
        "embed": f"geofm embed --root {root} --checkpoint CKPT (or --model tiny for a test)",
        "analyze": f"geofm analyze --root {root}",
        "index": f"geofm index --root {root}",
    }[stage]


class RunData:
    """Read-only view of one run root for the web app (thread-safe, cached layer).

    Args:
        root: the run root; it must hold chip metadata (``meta/*.parquet``).

    Raises:
        GeofmFileNotFoundError: the root does not exist, is not a folder, or has no
            chip metadata (the message says which stage to run).
    """

    def __init__(self, root: str | os.PathLike[str] | RunRoot) -> None:
        rr = RunRoot.of(root)
        path = Path(rr.path).expanduser()
        if not path.exists():
            raise GeofmFileNotFoundError(
                f"run root {path} does not exist; pass the --root (or --out) folder of a "
                "geofm run, e.g. the run/ folder that `geofm demo` writes")
        if not path.is_dir():
            raise GeofmFileNotFoundError(f"run root {path} is not a folder; pass a run root")
        self.root = RunRoot(path.resolve())
        if not self.root.scene_ids(self.root.meta_dir):
            raise GeofmFileNotFoundError(
                f"{self.root.path} has no chip metadata ({self.root.meta_dir}/*.parquet), so "
                f"there is nothing to show; run `{_stage_hint('chip', self.root.path)}` first")
        self._lock = threading.Lock()
        self._layer: ChipLayer | None = None
        self._layer_key: tuple[Any, ...] = ()
        self._blobs: dict[str, bytes] = {}
        #: scene id -> (smallest, largest) chip id in its meta file (a tile's chips share
        #: a prefix, so a chip's acquisitions are looked up in its tile's files only).
        self._id_ranges: dict[str, tuple[str, str] | None] = {}

    # --- what exists --------------------------------------------------------------------
    @property
    def changes_path(self) -> Path:
        """``analysis/changes.parquet``."""
        return self.root.analysis_dir / "changes.parquet"

    @property
    def timeseries_path(self) -> Path:
        """``analysis/timeseries.parquet`` (a folder of parts, or one file in older roots)."""
        return self.root.analysis_dir / "timeseries.parquet"

    def has_embeddings(self) -> bool:
        """Whether ``embeddings/`` holds at least one scene."""
        return bool(self.root.scene_ids(self.root.embeddings_dir))

    def has_analysis(self) -> bool:
        """Whether ``analyze`` has written ``analysis/changes.parquet``."""
        return self.changes_path.is_file()

    def has_index(self) -> bool:
        """Whether ``index`` has written the LanceDB table and ``geofm_index.json``."""
        from geofm.index.table import info_path

        return info_path(self.root).is_file()

    # --- summary ------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The run at a glance, for the page header.

        Returns:
            ``{"root", "name", "stages" {stage: status}, "counts" {"scenes", "chips",
            "changed", "no_change", "insufficient", "not_analysed", "acquisitions",
            "indexed"}, "model" (identity or None), "random_weights" (bool or None),
            "analysis" (bool), "index" (bool), "missing" [{"stage", "message",
            "command"}], "bounds" (WGS84 W, S, E, N), "timeline" {"signal",
            "threshold", "baseline_start", "monitor_start"}}``.
        """
        from geofm.manifest import read_manifest

        manifest = read_manifest(self.root)
        stages = manifest.get("stages", {})
        layer = self.layer()
        status = layer.status
        counts = {
            "scenes": len(self.root.scene_ids(self.root.meta_dir)),
            "chips": len(layer),
            "changed": int((status == 1).sum()),
            "no_change": int((status == 0).sum()),
            "insufficient": int((status == 2).sum()),
            "not_analysed": int((status == NOT_ANALYSED).sum()),
            "acquisitions": stages.get("chip", {}).get("counts", {}).get("valid_chips"),
            "indexed": None,
        }
        model = self._model_identity(stages)
        if self.has_index():
            from geofm.index.table import IndexInfo

            try:
                counts["indexed"] = IndexInfo.read(self.root).rows
            except (OSError, ValueError, TypeError):
                counts["indexed"] = None
        missing = []
        for stage, present, what in (
                ("embed", self.has_embeddings(), "no embeddings: change detection and "
                 "similarity search need them"),
                ("analyze", self.has_analysis(), "no change analysis: chips are shown without "
                 "change status or timelines"),
                ("index", self.has_index(), "no search index: similar chips and search are "
                 "off")):
            if not present:
                missing.append({"stage": stage, "message": what,
                                "command": _stage_hint(stage, self.root.path)})
        analyze_stage = stages.get("analyze", {})
        config = analyze_stage.get("config", {})
        extra = analyze_stage.get("analysis", {})
        return {
            "root": str(self.root.path), "name": self.root.path.name,
            "stages": {name: entry.get("status") for name, entry in stages.items()},
            "counts": counts, "model": model,
            "random_weights": None if model is None else bool(model.get("random_init")),
            "analysis": self.has_analysis(), "index": self.has_index(), "missing": missing,
            "bounds": layer.bounds(),
            "timeline": {"signal": config.get("signal", "pc1"),
                         "threshold": float(config.get("threshold", 3.0)),
                         "baseline_start": extra.get("baseline_start"),
                         "monitor_start": extra.get("monitor_start")},
        }

    def _model_identity(self, stages: Mapping[str, Any]) -> dict[str, Any] | None:
        """Model identity from run.json (embed, else index), else the embeddings' schema."""
        import json

        import pyarrow.parquet as pq

        for stage in ("embed", "index"):
            model = stages.get(stage, {}).get("model")
            if isinstance(model, dict):
                return model
        scenes = self.root.scene_ids(self.root.embeddings_dir)
        if scenes:
            meta = pq.read_schema(self.root.embeddings_path(scenes[0])).metadata or {}
            if b"geofm" in meta:
                value = json.loads(meta[b"geofm"])
                return value if isinstance(value, dict) else None
        return None

    # --- the chip layer -----------------------------------------------------------------
    def _inputs_key(self) -> tuple[Any, ...]:
        """What the layer is read from, by modification time: ``meta/`` and the changes."""
        def stamp(path: Path) -> int | None:
            try:
                return path.stat().st_mtime_ns
            except OSError:
                return None

        return stamp(self.root.meta_dir), stamp(self.changes_path)

    def layer(self) -> ChipLayer:
        """The chip layer, cached; read again when ``meta/`` or the analysis changed.

        So a server left running picks up a stage that finishes meanwhile (``analyze``
        replaces ``changes.parquet``; ``chip`` adds files to ``meta/``).
        """
        with self._lock:
            key = self._inputs_key()
            if self._layer is None or key != self._layer_key:
                self._layer = self._read_layer()
                self._layer_key = key
                self._blobs = {}
            return self._layer

    def blob(self, name: str) -> bytes:
        """Cached response bodies of the layer: ``"chips.json"`` or ``"footprints.bin"``."""
        import json

        layer = self.layer()
        with self._lock:
            if self._layer is not None:  # the newest, if it was read again meanwhile
                layer = self._layer
            if name not in self._blobs:
                if name == "chips.json":
                    self._blobs[name] = json.dumps(layer.payload(),
                                                   separators=(",", ":")).encode()
                elif name == "footprints.bin":
                    self._blobs[name] = layer.corner_bytes()
                else:
                    raise GeofmKeyError(f"no response body {name!r}; ask for "
                                        "'chips.json' or 'footprints.bin'", key=name)
            return self._blobs[name]

    def _read_layer(self) -> ChipLayer:
        import numpy as np
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq
        import shapely

        # Every chip id of the run with its first footprint; a scene's file normally lists
        # every chip of its tile, so later files only add ids of other tiles.
        geometry: dict[str, Any] = {}
        seen: dict[tuple[int, str | None, str | None], list[str]] = {}
        for scene in self.root.scene_ids(self.root.meta_dir):
            path = self.root.meta_path(scene)
            ids = pq.read_table(path, columns=["chip_id"]).column("chip_id").to_pylist()
            present = [c for c in ids if c is not None]
            self._id_ranges[scene] = (min(present), max(present)) if present else None
            key = (len(ids), ids[0] if ids else None, ids[-1] if ids else None)
            if seen.get(key) == ids:  # the chips of a file read before (same tile)
                continue
            seen[key] = ids
            new = [j for j, cid in enumerate(ids) if cid not in geometry]
            if not new:
                continue
            names = pq.read_schema(path).names
            wkb = (pq.read_table(path, columns=["geometry"]).column("geometry")
                   .take(pa.array(new)).to_pylist() if "geometry" in names else [None] * len(new))
            for j, g in zip(new, wkb, strict=True):
                geometry.setdefault(str(ids[j]), g)
        chip_ids = sorted(geometry)
        n = len(chip_ids)
        wkb_arr = np.array([geometry[c] for c in chip_ids], dtype=object)
        geoms = np.full(n, None, dtype=object)
        has = np.array([w is not None for w in wkb_arr], dtype=bool)
        if has.any():
            geoms[has] = shapely.from_wkb(wkb_arr[has])
        status = np.full(n, NOT_ANALYSED, dtype=np.uint8)
        change_date = pd.DatetimeIndex(np.full(n, np.datetime64("NaT"), "datetime64[ns]"),
                                       tz="UTC")
        magnitude = np.full(n, np.nan, dtype=np.float32)
        details = pd.DataFrame(columns=["n_observations", "n_baseline", "rmse"])
        if self.has_analysis():
            changes = pq.read_table(self.changes_path).to_pandas()
            pos = pd.Index(chip_ids).get_indexer(changes["chip_id"])
            known = pos >= 0
            codes = changes["status"].map({s: i for i, s in enumerate(STATUS_NAMES[:3])})
            status[pos[known]] = codes[known].fillna(NOT_ANALYSED).astype(np.uint8).to_numpy()
            dates = pd.to_datetime(changes["change_date"], utc=True)
            cd = change_date.to_numpy().copy()
            cd[pos[known]] = dates[known].dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
            change_date = pd.DatetimeIndex(cd).tz_localize("UTC")
            magnitude[pos[known]] = changes["magnitude"].to_numpy(dtype=np.float32)[known]
            keep = [c for c in ("n_observations", "n_baseline", "rmse") if c in changes]
            details = changes.loc[known, ["chip_id", *keep]].set_index("chip_id")
        return ChipLayer(chip_ids=chip_ids, corners=quad_corners(geoms), status=status,
                         change_date=change_date, magnitude=magnitude, details=details)

    # --- one chip -----------------------------------------------------------------------
    def require_chip(self, chip_id: str) -> int:
        """Row of ``chip_id`` in the layer; :class:`UnknownChipError` when not in the run."""
        layer = self.layer()
        pos = layer.position(chip_id)
        if pos is None:
            close = difflib.get_close_matches(chip_id, layer.chip_ids, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else \
                "; pick a chip on the map or in the change list"
            raise UnknownChipError(f"chip id {chip_id!r} is not a chip of the run "
                                   f"{self.root.path}{hint}", chip_id=chip_id,
                                   suggestions=close)
        return pos

    def chip(self, chip_id: str) -> dict[str, Any]:
        """Everything the chip page shows about one chip.

        Returns:
            ``{"chip_id", "status", "change_date", "magnitude", "details" (analyze's
            per-chip numbers), "meta" (tile, row, col, epsg, native bounds in metres,
            sensor, bands), "corners" [[lon, lat] x 4] or None, "acquisitions" [{"scene_id",
            "date", "cloud_fraction", "nodata_fraction", "valid", "thumbnail"}] in date
            order, "before"/"after" (an acquisition with a thumbnail, or None),
            "timeline" (see :meth:`timeline`) or None, "plot" (root-relative path of
            ``analysis/plots/<chip_id>.png``) or None}``.

        Raises:
            UnknownChipError: ``chip_id`` is not a chip of the run.
        """
        import numpy as np

        pos = self.require_chip(chip_id)
        layer = self.layer()
        acq = self._acquisitions(chip_id)
        first = acq[0] if acq else {}
        meta = {k: first.get(k) for k in ("tile", "row", "col", "epsg", "minx", "miny", "maxx",
                                          "maxy", "sensor", "bands")}
        for k in ("minx", "miny", "maxx", "maxy"):
            meta[k] = _number(meta[k], 3)
        for entry in acq:
            for k in meta:
                entry.pop(k, None)
        corners = layer.corners[pos]
        status = STATUS_NAMES[int(layer.status[pos])]
        details: dict[str, Any] = {}
        if chip_id in layer.details.index:
            row = layer.details.loc[chip_id]
            details = {k: (_number(v) if k == "rmse" else int(v)) for k, v in row.items()
                       if v is not None and not (isinstance(v, float) and np.isnan(v))}
        before, after = self._before_after(acq, layer.change_date[pos])
        plot = self.root.plots_dir / f"{chip_id}.png"
        return {
            "chip_id": chip_id, "status": status,
            "change_date": _day(layer.change_date[pos]),
            "magnitude": _number(layer.magnitude[pos]), "details": details, "meta": meta,
            "corners": None if not np.isfinite(corners).all() else corners.tolist(),
            "acquisitions": acq, "before": before, "after": after,
            "timeline": self.timeline(chip_id),
            "plot": plot.relative_to(self.root.path).as_posix() if plot.is_file() else None,
        }

    def _acquisitions(self, chip_id: str) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        self.layer()  # fills _id_ranges
        rows: list[dict[str, Any]] = []
        for scene in self.root.scene_ids(self.root.meta_dir):
            span = self._id_ranges.get(scene, ("", "\U0010ffff"))  # a file added since: read
            if span is None or not span[0] <= chip_id <= span[1]:
                continue
            path = self.root.meta_path(scene)
            names = set(pq.read_schema(path).names)
            table = pq.read_table(path, columns=[c for c in _META_COLUMNS if c in names],
                                  filters=[("chip_id", "==", chip_id)])
            rows.extend(table.to_pylist())
        out = []
        for row in rows:
            thumb = row.get("thumbnail_path")
            entry = {k: v for k, v in row.items() if k not in ("chip_id", "thumbnail_path")}
            entry["date"] = _iso(row.get("date"))
            for k in ("cloud_fraction", "nodata_fraction"):
                if k in entry:
                    entry[k] = _number(entry[k], 4)
            entry["valid"] = bool(row.get("valid", thumb is not None))
            entry["thumbnail"] = thumb if thumb and self._inside(thumb) else None
            out.append(entry)
        out.sort(key=lambda e: e["date"] or "")
        return out

    def _inside(self, rel: str) -> bool:
        """Whether root-relative ``rel`` names an existing file inside the root."""
        return self.resolve_file(rel) is not None

    @staticmethod
    def _before_after(acq: list[dict[str, Any]], change_date: Any
                      ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Last thumbnail before / first on or after the change (else first and last)."""
        import pandas as pd

        shown = [a for a in acq if a["thumbnail"]]
        if not shown:
            return None, None
        if change_date is None or pd.isna(change_date):
            return shown[0], shown[-1]
        day = pd.Timestamp(change_date).normalize()
        before = [a for a in shown if pd.Timestamp(a["date"]).normalize() < day]
        after = [a for a in shown if pd.Timestamp(a["date"]).normalize() >= day]
        return (before[-1] if before else None), (after[0] if after else None)

    def timeline(self, chip_id: str) -> dict[str, Any] | None:
        """The monitored signal of one chip (None without ``analysis/timeseries.parquet``).

        Returns:
            ``{"signal" (name), "mode", "threshold", "dates" (ISO), "value", "fit",
            "low", "high", "anomaly", "baseline", "change_date", "monitor_start"}``.
            ``mode`` ``"signal"``: ``value`` is the signal, ``fit`` the seasonal model and
            ``low``/``high`` the band ``fit -/+ threshold * rmse`` (signal units).
            ``mode`` ``"score"`` (signal ``pcs``): ``value`` is the combined anomaly
            score, ``fit`` 0 and the band ``-/+ threshold`` (unitless).
        """
        import numpy as np
        import pyarrow.parquet as pq

        from geofm.tables import read_schema

        if not self.root.timeseries_parts():
            return None
        summary_tl = self._timeline_config()
        names = set(read_schema(self.timeseries_path, made_by="analyze").names)
        cols = [c for c in ("date", "signal", "predicted", "residual", "anomaly", "baseline")
                if c in names]
        frame = pq.read_table(self.timeseries_path, columns=cols,
                              filters=[("chip_id", "==", chip_id)]).to_pandas()
        frame = frame.sort_values("date")
        threshold = summary_tl["threshold"]
        layer = self.layer()
        pos = self.require_chip(chip_id)
        rmse = np.nan
        if chip_id in layer.details.index and "rmse" in layer.details:
            rmse = float(layer.details.loc[chip_id, "rmse"])
        if summary_tl["signal"] == "pcs":
            mode = "score"
            value = frame["residual"].to_numpy(dtype=np.float64)
            fit = np.zeros_like(value)
            low, high = fit - threshold, fit + threshold
        else:
            mode = "signal"
            value = frame["signal"].to_numpy(dtype=np.float64)
            fit = frame["predicted"].to_numpy(dtype=np.float64)
            low, high = fit - threshold * rmse, fit + threshold * rmse
        return {
            "signal": summary_tl["signal"], "mode": mode, "threshold": threshold,
            "dates": [_iso(d) for d in frame["date"]],
            "value": _numbers(value), "fit": _numbers(fit),
            "low": _numbers(low), "high": _numbers(high),
            "anomaly": [bool(a) for a in frame.get("anomaly", [])],
            "baseline": [bool(b) for b in frame.get("baseline", [])],
            "change_date": _day(layer.change_date[pos]),
            "monitor_start": summary_tl["monitor_start"],
        }

    def _timeline_config(self) -> dict[str, Any]:
        from geofm.manifest import read_manifest

        stage = read_manifest(self.root).get("stages", {}).get("analyze", {})
        config, extra = stage.get("config", {}), stage.get("analysis", {})
        return {"signal": config.get("signal", "pc1"),
                "threshold": float(config.get("threshold", 3.0)),
                "monitor_start": extra.get("monitor_start")}

    # --- files --------------------------------------------------------------------------
    def resolve_file(self, rel: str) -> Path | None:
        """Root-relative ``rel`` -> an existing PNG inside the root, else None.

        Only ``.png`` files (thumbnails, timeline plots) are served, and only when the
        path, with every symlink resolved, stays inside the run root.
        """
        if not rel or "\x00" in rel or Path(rel).is_absolute() or not rel.lower().endswith(
                ".png"):
            return None
        try:
            target = (self.root.path / rel).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            return None
        if not target.is_relative_to(self.root.path) or not target.is_file():
            return None
        return target

    # --- search -------------------------------------------------------------------------
    def search(self, options: Mapping[str, Any]) -> gpd.GeoDataFrame:
        """Run :func:`geofm.search.search` on this root with ``options`` (its keywords).

        Raises:
            SearchIndexError: no index (the message names ``geofm index``) or a query the
                index cannot answer.
        """
        from geofm.exceptions import SearchIndexError
        from geofm.search import search

        if not self.has_index():
            raise SearchIndexError(f"{self.root.path} has no search index; run "
                                   f"`{_stage_hint('index', self.root.path)}` first")
        return search(self.root, **options)

    def warm_search(self) -> None:
        """Run one search (the first changed or first chip, k=1) to load the index."""
        import numpy as np

        layer = self.layer()
        if not len(layer):
            return
        changed = np.flatnonzero(layer.status == 1)
        first = layer.chip_ids[int(changed[0]) if changed.size else 0]
        self.search({"chip_ids": [first], "k": 1})


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = [v for v in params.get(name, ()) if v.strip()]
    if len(values) > 1:
        raise GeofmValueError(f"search parameter {name!r} was given {len(values)} times; "
                              "give it once")
    return values[0].strip() if values else None


def _ids(params: Mapping[str, Sequence[str]], name: str) -> list[str]:
    out: list[str] = []
    for value in params.get(name, ()):
        out += [v.strip() for v in value.split(",") if v.strip()]
    return list(dict.fromkeys(out))


def _float(params: Mapping[str, Sequence[str]], name: str, lo: float, hi: float
           ) -> float | None:
    import math

    text = _one(params, name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise GeofmValueError(f"search parameter {name}={text!r} is not a number") from exc
    if not (math.isfinite(value) and lo <= value <= hi):
        raise GeofmValueError(f"search parameter {name}={text!r} must be in [{lo}, {hi}]")
    return value


def _flag(params: Mapping[str, Sequence[str]], name: str) -> bool:
    text = _one(params, name)
    if text is None:
        return False
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise GeofmValueError(f"search parameter {name}={text!r} must be 1 or 0")


def search_options(params: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """URL query parameters -> keyword arguments of :func:`geofm.search.search`.

    Parameters (each maps to the ``geofm search`` flag of the same meaning): ``chip``
    (repeatable or comma-separated; several = average query), ``neg`` (negatives),
    ``date``, ``k`` (1..:data:`MAX_K`, default 10), ``min_similarity`` (-1..1),
    ``start``/``end`` (``YYYY-MM-DD``), ``bbox`` (``W,S,E,N`` WGS84 degrees),
    ``max_cloud`` (0..1), ``centre`` and ``distinct`` (``1``/``0``).

    Raises:
        GeofmValueError: a parameter is malformed or out of range, or no ``chip`` given.
    """
    from geofm.search.stage import parse_bbox

    chips = _ids(params, "chip")
    if not chips:
        raise GeofmValueError("give at least one query chip: chip=CHIP_ID (repeatable)")
    k_text = _one(params, "k")
    try:
        k = 10 if k_text is None else int(k_text)
    except ValueError as exc:
        raise GeofmValueError(f"search parameter k={k_text!r} is not a whole number") from exc
    if not 1 <= k <= MAX_K:
        raise GeofmValueError(f"search parameter k={k} must be between 1 and {MAX_K}")
    bbox_text = _one(params, "bbox")
    return {
        "chip_ids": chips, "negative_chip_ids": _ids(params, "neg"),
        "date": _one(params, "date"), "k": k,
        "min_similarity": _float(params, "min_similarity", -1.0, 1.0),
        "start": _one(params, "start"), "end": _one(params, "end"),
        "bbox": None if bbox_text is None else parse_bbox(bbox_text),
        "max_cloud": _float(params, "max_cloud", 0.0, 1.0),
        "centre": _flag(params, "centre"), "distinct": _flag(params, "distinct"),
    }
