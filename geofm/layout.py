"""The run root: where every stage reads and writes (see DESIGN.md, "The run root").

A stage reads only what earlier stages wrote under the same root, so any stage can run
on its own, locally or as a processing job, and be re-run.

:class:`RunRoot` is the only place that builds run-root paths. Scene (item) ids become
file names through :func:`geofm.ids.encode_id` (safe ids unchanged, other characters
percent-encoded, traversal rejected) and :meth:`RunRoot.scene_ids` decodes them again;
every path it hands out is checked to stay inside the root (:meth:`RunRoot.inside`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from geofm.exceptions import GeofmFileNotFoundError, UnsafePathError
from geofm.ids import check_part, decode_id, encode_id


@dataclass(frozen=True)
class RunRoot:
    """Paths of one run root.

    Methods taking a ``scene_id`` take the STAC item id as it is and name files with
    :func:`geofm.ids.encode_id` (raising :class:`~geofm.exceptions.UnsafePathError`
    for ids that would leave the root); chip ids must already be safe file names.

    Attributes:
        path: the run root folder.
    """

    path: Path

    @classmethod
    def of(cls, root: str | os.PathLike[str] | RunRoot) -> RunRoot:
        """Return a :class:`RunRoot` for a path (or pass one through)."""
        return root if isinstance(root, RunRoot) else cls(Path(root))

    # --- chip stage -------------------------------------------------------------------
    @property
    def chips_dir(self) -> Path:
        """Folder of NetCDF chips: ``chips/<scene_id>/<chip_id>.nc`` (ids as file names)."""
        return self.path / "chips"

    def scene_chips_dir(self, scene_id: str) -> Path:
        """Folder of one scene's NetCDF chips: ``chips/<encoded scene_id>/``."""
        return self.inside(self.chips_dir / encode_id(scene_id))

    def chip_path(self, scene_id: str, chip_id: str) -> Path:
        """NetCDF datacube of one chip in one acquisition."""
        return self.inside(self.scene_chips_dir(scene_id)
                           / f"{check_part(chip_id, what='chip id')}.nc")

    @property
    def thumbnails_dir(self) -> Path:
        """Folder of RGB thumbnails: ``thumbnails/<scene_id>/<chip_id>.png``."""
        return self.path / "thumbnails"

    def thumbnail_path(self, scene_id: str, chip_id: str) -> Path:
        """RGB PNG thumbnail of one chip in one acquisition."""
        return self.inside(self.thumbnails_dir / encode_id(scene_id)
                           / f"{check_part(chip_id, what='chip id')}.png")

    @property
    def meta_dir(self) -> Path:
        """Folder of per-scene chip metadata GeoParquet files."""
        return self.path / "meta"

    def require_chips(self) -> None:
        """Raise unless ``chip`` has written its metadata here (stages that read chips).

        Raises:
            GeofmFileNotFoundError: no ``meta/`` folder; says to run ``geofm chip`` first.
        """
        if not self.meta_dir.is_dir():
            raise GeofmFileNotFoundError(f"no chip metadata in {self.meta_dir}; run `geofm chip "
                                         f"--out {self.path}` first")

    def meta_path(self, scene_id: str) -> Path:
        """GeoParquet with a row per chip of one scene (valid or not)."""
        return self.inside(self.meta_dir / f"{encode_id(scene_id)}.parquet")

    @property
    def items_dir(self) -> Path:
        """Folder of STAC items a run found itself (``geofm chip --stac``)."""
        return self.path / "items"

    def search_items_path(self, digest: str) -> Path:
        """ItemCollection saved by one STAC API search: ``items/search-<digest>.json``."""
        return self.inside(self.items_dir / f"search-{check_part(digest, what='digest')}.json")

    # --- embed stage ------------------------------------------------------------------
    @property
    def embeddings_dir(self) -> Path:
        """Folder of per-scene embedding Parquet files."""
        return self.path / "embeddings"

    def embeddings_path(self, scene_id: str) -> Path:
        """Parquet with a row per embedded chip of one scene."""
        return self.inside(self.embeddings_dir / f"{encode_id(scene_id)}.parquet")

    def patches_path(self, scene_id: str) -> Path:
        """Optional float16 [N, L, D] patch-token grid, rows in the Parquet's order."""
        return self.inside(self.embeddings_dir / f"{encode_id(scene_id)}_patches.npy")

    # --- analyze stage ----------------------------------------------------------------
    @property
    def analysis_dir(self) -> Path:
        """Folder of analysis outputs."""
        return self.path / "analysis"

    @property
    def plots_dir(self) -> Path:
        """Folder of per-chip timeline plots."""
        return self.analysis_dir / "plots"

    @property
    def timeseries_path(self) -> Path:
        """``analysis/timeseries.parquet``: a row per chip and date.

        A Parquet dataset: a folder of parts ``part-NNNNN.parquet`` (the reference
        analysis writes one, each update appends one) that pyarrow, pandas and geofm's
        readers open as one table. Roots analysed before parts hold a single file here
        until their next update converts it (see :meth:`timeseries_parts`).
        """
        return self.analysis_dir / "timeseries.parquet"

    def timeseries_parts(self) -> list[Path]:
        """The files of :attr:`timeseries_path`: its parts by name, or the single file.

        Returns ``[]`` when there is no time series (or an empty folder).
        """
        path = self.timeseries_path
        if path.is_file():
            return [path]
        if not path.is_dir():
            return []
        return sorted(p for p in path.iterdir() if p.name.startswith("part-")
                      and p.name.endswith(".parquet") and p.is_file())

    @property
    def changes_path(self) -> Path:
        """``analysis/changes.parquet``: GeoParquet, a row per chip (its current status)."""
        return self.analysis_dir / "changes.parquet"

    @property
    def change_map_path(self) -> Path:
        """``analysis/change_map.geojson``: the change map as a GeoJSON layer."""
        return self.analysis_dir / "change_map.geojson"

    @property
    def pca_path(self) -> Path:
        """``analysis/pca.npz``: the reference PCA basis."""
        return self.analysis_dir / "pca.npz"

    @property
    def reference_path(self) -> Path:
        """``analysis/reference.npz``: each chip's seasonal fit and residual scale."""
        return self.analysis_dir / "reference.npz"

    @property
    def reference_means_path(self) -> Path:
        """``analysis/reference_means.npy``: float32 [C, D] unit baseline mean embeddings."""
        return self.analysis_dir / "reference_means.npy"

    @property
    def analysis_state_path(self) -> Path:
        """``analysis/state.json``: the reference, the analysed scenes, the update history."""
        return self.analysis_dir / "state.json"

    @property
    def alerts_path(self) -> Path:
        """``analysis/alerts.parquet``: GeoParquet, every alert of every update."""
        return self.analysis_dir / "alerts.parquet"

    @property
    def alerts_geojson_path(self) -> Path:
        """``analysis/alerts.geojson``: the alerts of the latest update."""
        return self.analysis_dir / "alerts.geojson"

    @property
    def overlaps_path(self) -> Path:
        """``analysis/overlaps.parquet``: pairs of chips of different tiles on the same ground."""
        return self.analysis_dir / "overlaps.parquet"

    @property
    def assessment_path(self) -> Path:
        """``analysis/assessment.npz``: where the change rule stands for each chip."""
        return self.analysis_dir / "assessment.npz"

    @property
    def footprints_path(self) -> Path:
        """``analysis/footprints.parquet``: each analysed chip's footprint (WKB, GeoJSON)."""
        return self.analysis_dir / "footprints.parquet"

    @property
    def rasters_dir(self) -> Path:
        """``analysis/rasters/``: change-map COGs (one per tile) and their mosaic VRT."""
        return self.analysis_dir / "rasters"

    def change_raster_path(self, tile: str) -> Path:
        """Cloud-Optimized GeoTIFF change map of one tile, in its native CRS."""
        return self.inside(self.rasters_dir / f"{check_part(tile, what='tile')}.tif")

    @property
    def mosaic_path(self) -> Path:
        """``analysis/rasters/mosaic.vrt``: the tiles' change maps as one virtual raster."""
        return self.rasters_dir / "mosaic.vrt"

    # --- index stage ------------------------------------------------------------------
    @property
    def index_dir(self) -> Path:
        """LanceDB database folder (table ``chips``)."""
        return self.path / "index"

    @property
    def consolidated_path(self) -> Path:
        """Consolidated GeoParquet of metadata + embeddings + analysis columns."""
        return self.path / "consolidated.parquet"

    # --- every stage ------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        """``run.json``: config, versions, per-stage status, counts, timings, failures."""
        return self.path / "run.json"

    def scene_ids(self, folder: Path, suffix: str = ".parquet") -> list[str]:
        """Sorted scene ids (decoded) of the files ending in ``suffix`` in ``folder``.

        Raises:
            UnsafePathError: a file name there is not an encoded item id (see
                :func:`geofm.ids.decode_id`); names starting with ``.`` are skipped.
        """
        if not folder.is_dir():
            return []
        return sorted(decode_id(p.name[: -len(suffix)]) for p in folder.iterdir()
                      if p.name.endswith(suffix) and not p.name.startswith("."))

    def inside(self, path: Path) -> Path:
        """Return ``path``, built from :attr:`path`, if it lies strictly inside the root.

        The check is lexical (``..`` and absolute parts count, symlinks are not followed):
        folders the root itself links to, such as SageMaker input mounts, stay usable.
        Every path :class:`RunRoot` hands out passes through here, a last line of defence
        behind the id checks where items enter (:mod:`geofm.ids`).

        Args:
            path: a path built by joining parts onto :attr:`path`.

        Returns:
            ``path`` unchanged.

        Raises:
            UnsafePathError: the path is the root itself or lies outside it.
        """
        root = os.path.normpath(os.path.abspath(self.path))
        full = os.path.normpath(os.path.abspath(path))
        if full == root or os.path.commonpath([root, full]) != root:
            raise UnsafePathError(
                f"{os.fspath(path)!r} would be {full}, outside the run root {root}; refusing "
                "to use it (item ids and tile codes may not hold '..' or absolute paths: "
                "fix the item)", value=os.fspath(path))
        return path
