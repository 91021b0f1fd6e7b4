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

A ``StageRecord`` holds the run root's writer lock (:mod:`geofm.lock`) from ``__enter__``
to ``__exit__``, and every ``run.json`` update is made under it. A stage's library
function is decorated with :func:`stage_entry`, which takes the lock before the
function's first check (a second writer fails at once) and records a fatal error raised
before the function opened its ``StageRecord`` (bad options, missing inputs), so
``run.json`` says why the stage did not run.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from geofm.exceptions import StageFailedError
from geofm.io import write_json_atomic
from geofm.layout import RunRoot
from geofm.lock import root_lock

F = TypeVar("F", bound=Callable[..., Any])

#: (resolved root, stage) of the StageRecords entered inside the current stage_entry call.
_OPENED: contextvars.ContextVar[set[tuple[Path, str]] | None] = contextvars.ContextVar(
    "geofm_opened_records", default=None)
#: every argument (defaults included, the run root left out) of the current stage_entry call.
_CALL: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "geofm_stage_call", default=None)

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
    _lock: contextlib.ExitStack | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.root = RunRoot.of(self.root)

    def _start_clock(self) -> None:
        self._started = time.perf_counter()
        self._started_at = datetime.now(UTC).isoformat(timespec="seconds")

    def fail(self, unit: str, reason: str, *, asset: str | None = None,
             path: str | os.PathLike[str] | None = None) -> Failure:
        """Record a failed unit of work and return it."""
        failure = Failure(unit=unit, reason=reason, asset=asset,
                          path=None if path is None else str(path))
        self.failures.append(failure)
        return failure

    def __enter__(self) -> StageRecord:
        """Take the run root's writer lock and start the clock.

        Raises:
            RootLockedError: another process is writing into this root.
        """
        assert isinstance(self.root, RunRoot)
        stack = contextlib.ExitStack()
        stack.enter_context(root_lock(self.root.path, stage=self.stage))
        self._lock = stack
        opened = _OPENED.get()
        if opened is not None:
            opened.add((self.root.path.resolve(), self.stage))
        self._start_clock()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and not isinstance(exc, StageFailedError):
            status = "error"
        elif self.failures:
            status = "failed"
        else:
            status = "ok"
        try:
            self.write(status=status,
                       error=None if exc is None else f"{type(exc).__name__}: {exc}")
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def write(self, *, status: str, error: str | None = None) -> None:
        """Merge this stage's entry into run.json (atomically, under the root's lock).

        Raises:
            RootLockedError: another process is writing into this root.
        """
        assert isinstance(self.root, RunRoot)
        with root_lock(self.root.path, stage=self.stage):
            self._write(status=status, error=error)

    def _write(self, *, status: str, error: str | None) -> None:
        assert isinstance(self.root, RunRoot)
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


def _jsonable(value: Any) -> Any:
    """A JSON-ready form of an argument as given (paths as strings, objects by type)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, RunRoot):
        return str(value.path)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return f"<{type(value).__name__}>"


def call_config(**resolved: Any) -> dict[str, Any]:
    """The ``run.json`` config of the running stage: every option of the call.

    Called inside a :func:`stage_entry` function, it returns each argument of the call
    (library defaults included, the run root left out), JSON-ready, with ``resolved``
    replacing what the stage resolved (a device ``auto`` -> ``cuda:0``, bands ``None`` ->
    the sensor's list). So the recorded config lists every option the stage declares
    (:mod:`geofm.options`) without the stage listing them again.

    Args:
        **resolved: options whose recorded value is the resolved one (JSON-ready or
            made so here).

    Returns:
        ``{option: value}``; just ``resolved`` outside a stage call.
    """
    call = _CALL.get() or {}
    return {**call, **{k: _jsonable(v) for k, v in resolved.items()}}


def stage_entry(stage: str, *, root: str = "root") -> Callable[[F], F]:
    """Decorate a stage's library function: one writer per root, every fatal error recorded.

    The wrapped call holds the writer lock of its run root (:func:`geofm.lock.root_lock`)
    from before its first check to its end, so a second writer fails at once, before
    loading a model or reading a file. An exception raised before the function entered
    its own ``StageRecord`` (bad options, missing inputs, a bad checkpoint) is written
    to ``run.json`` as the stage's entry (``status: "error"``, the message, the
    arguments as given) and re-raised; errors raised later are recorded by the
    ``StageRecord`` itself. A refused second writer records nothing.

    A root that does not exist yet is not created here (bad arguments leave nothing
    behind, and an error about it is not recorded anywhere): the ``StageRecord`` creates
    and locks it when the stage starts its work, so two writers racing on a new root
    still meet the lock before either writes an output.

    Args:
        stage: the stage's name in ``run.json`` (``chip``, ``embed``, ...).
        root: name of the function's run-root parameter.

    Returns:
        The decorator.
    """

    def decorate(func: F) -> F:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            where = RunRoot.of(bound.arguments[root])
            fallback = StageRecord(where, stage, config={
                k: _jsonable(v) for k, v in bound.arguments.items() if k != root})
            bound.apply_defaults()
            full = {k: _jsonable(v) for k, v in bound.arguments.items() if k != root}
            fallback._start_clock()
            with root_lock(where.path, stage=stage, create=False) as held:
                opened: set[tuple[Path, str]] = set()
                token = _OPENED.set(opened)
                call_token = _CALL.set(full)
                try:
                    return func(*args, **kwargs)
                except BaseException as exc:
                    if held is not None and (where.path.resolve(), stage) not in opened:
                        fallback.write(status="error", error=f"{type(exc).__name__}: {exc}")
                    raise
                finally:
                    _CALL.reset(call_token)
                    _OPENED.reset(token)

        return wrapper  # type: ignore[return-value]

    return decorate
