"""``run.json``: the manifest every stage writes (config, versions, status, counts, failures).

Usage inside a stage::

    with StageRecord(root, "chip", config={"chip_size": 256}) as record:
        ...
        record.counts["chips"] = 1234
        record.fail("S2A_...", "asset 'red': file is truncated", asset="red")
    # on exit run.json holds the stage's status ("ok", "failed" if any unit failed,
    # "error" if the stage raised), timings, counts and failures.

The stage then turns ``record.failures`` into a non-zero exit code (see
:meth:`StageRecord.raise_if_failed`).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from types import TracebackType
from typing import Any

from geofm.exceptions import StageFailedError
from geofm.io import write_json_atomic
from geofm.layout import RunRoot

_VERSIONED_PACKAGES = ("geofm", "torch", "numpy", "rasterio", "xarray", "pystac", "lancedb",
                       "scikit-learn", "pyarrow")


def software_versions() -> dict[str, str]:
    """Versions of Python and of the packages whose behaviour shapes the outputs."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def read_manifest(root: str | os.PathLike[str] | RunRoot) -> dict[str, Any]:
    """Return the run root's ``run.json`` as a dict (empty skeleton if absent)."""
    path = RunRoot.of(root).manifest_path
    if not path.exists():
        return {"stages": {}}
    with open(path, encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    data.setdefault("stages", {})
    return data


@dataclass
class Failure:
    """One failed unit of work (a scene, a chip, a batch)."""

    unit: str
    reason: str
    asset: str | None = None
    path: str | None = None

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form without empty fields."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def __str__(self) -> str:
        where = ", ".join(x for x in (self.asset and f"asset {self.asset!r}", self.path) if x)
        return f"{self.unit}{f' ({where})' if where else ''}: {self.reason}"


@dataclass
class StageRecord:
    """Collects one stage's counts, failures and extra facts and writes them to run.json.

    Attributes:
        root: run root.
        stage: stage name (``chip``, ``embed``, ``analyze``, ``index``, ...).
        config: the stage's options as given (JSON-serialisable).
        counts: numbers of things done (``scenes``, ``chips``, ``skipped`` ...).
        failures: units that failed, each with its reason.
        extra: anything else worth keeping (model identity, coverage summary ...).
    """

    root: RunRoot | str | os.PathLike[str]
    stage: str
    config: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    _started: float = 0.0
    _started_at: str = ""

    def __post_init__(self) -> None:
        self.root = RunRoot.of(self.root)

    def fail(self, unit: str, reason: str, *, asset: str | None = None,
             path: str | os.PathLike[str] | None = None) -> Failure:
        """Record a failed unit of work and return it."""
        failure = Failure(unit=unit, reason=reason, asset=asset,
                          path=None if path is None else str(path))
        self.failures.append(failure)
        return failure

    def __enter__(self) -> StageRecord:
        self._started = time.perf_counter()
        self._started_at = datetime.now(UTC).isoformat(timespec="seconds")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and not isinstance(exc, StageFailedError):
            status = "error"
        elif self.failures:
            status = "failed"
        else:
            status = "ok"
        self.write(status=status, error=None if exc is None else f"{type(exc).__name__}: {exc}")

    def write(self, *, status: str, error: str | None = None) -> None:
        """Merge this stage's entry into run.json (atomically)."""
        assert isinstance(self.root, RunRoot)
        self.root.path.mkdir(parents=True, exist_ok=True)
        manifest = read_manifest(self.root)
        manifest["geofm_version"] = software_versions().get("geofm", "unknown")
        manifest["updated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        entry: dict[str, Any] = {
            "status": status,
            "started_at": self._started_at,
            "seconds": round(time.perf_counter() - self._started, 3),
            "config": self.config,
            "counts": self.counts,
            "failures": [f.as_dict() for f in self.failures],
            "versions": software_versions(),
            "command": sys.argv[:1] + sys.argv[1:],
            **self.extra,
        }
        if error:
            entry["error"] = error
        manifest["stages"][self.stage] = entry
        write_json_atomic(self.root.manifest_path, manifest)

    def raise_if_failed(self) -> None:
        """Raise :class:`StageFailedError` listing the failures, if there were any."""
        if self.failures:
            lines = "\n  ".join(str(f) for f in self.failures[:20])
            more = f"\n  ... and {len(self.failures) - 20} more" if len(self.failures) > 20 else ""
            assert isinstance(self.root, RunRoot)
            raise StageFailedError(
                f"{self.stage}: {len(self.failures)} unit(s) failed; the others were written. "
                f"Details in {self.root.manifest_path}:\n  {lines}{more}"
            )
