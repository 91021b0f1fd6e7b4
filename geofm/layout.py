"""The run root: where every stage reads and writes (see DESIGN.md, "The run root").

A stage reads only what earlier stages wrote under the same root, so any stage can run
on its own, locally or as a processing job, and be re-run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunRoot:
    """Paths of one run root.

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
        """Folder of NetCDF chips: ``chips/<scene_id>/<chip_id>.nc``."""
        return self.path / "chips"

    def chip_path(self, scene_id: str, chip_id: str) -> Path:
        """NetCDF datacube of one chip in one acquisition."""
        return self.chips_dir / scene_id / f"{chip_id}.nc"

    @property
    def thumbnails_dir(self) -> Path:
        """Folder of RGB thumbnails: ``thumbnails/<scene_id>/<chip_id>.png``."""
        return self.path / "thumbnails"

    def thumbnail_path(self, scene_id: str, chip_id: str) -> Path:
        """RGB PNG thumbnail of one chip in one acquisition."""
        return self.thumbnails_dir / scene_id / f"{chip_id}.png"

    @property
    def meta_dir(self) -> Path:
        """Folder of per-scene chip metadata GeoParquet files."""
        return self.path / "meta"

    def meta_path(self, scene_id: str) -> Path:
        """GeoParquet with a row per chip of one scene (valid or not)."""
        return self.meta_dir / f"{scene_id}.parquet"

    # --- embed stage ------------------------------------------------------------------
    @property
    def embeddings_dir(self) -> Path:
        """Folder of per-scene embedding Parquet files."""
        return self.path / "embeddings"

    def embeddings_path(self, scene_id: str) -> Path:
        """Parquet with a row per embedded chip of one scene."""
        return self.embeddings_dir / f"{scene_id}.parquet"

    def patches_path(self, scene_id: str) -> Path:
        """Optional float16 [N, L, D] patch-token grid, rows in the Parquet's order."""
        return self.embeddings_dir / f"{scene_id}_patches.npy"

    # --- analyze stage ----------------------------------------------------------------
    @property
    def analysis_dir(self) -> Path:
        """Folder of analysis outputs."""
        return self.path / "analysis"

    @property
    def plots_dir(self) -> Path:
        """Folder of per-chip timeline plots."""
        return self.analysis_dir / "plots"

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
        """Sorted scene ids of the files ending in ``suffix`` in ``folder``."""
        if not folder.is_dir():
            return []
        return sorted(p.name[: -len(suffix)] for p in folder.iterdir()
                      if p.name.endswith(suffix) and not p.name.startswith("."))
