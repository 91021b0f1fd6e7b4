"""One writer per run root: an exclusive, non-blocking lock on ``ROOT/.geofm.lock``.

Every stage that writes into a run root (chip, embed, analyze, index, ``geofm run``,
demo, and finetune/predict for their output folder) holds this lock while it works, so
two processes never mix their outputs in one root. The lock is an ``fcntl.flock`` on an
open file descriptor: the operating system drops it when the process ends, however it
ends (``kill -9`` included), so a stale lock cannot exist. The file's contents (pid,
host, stage, since when, command) only say who holds it; they are never trusted to
decide anything.

A second writer fails at once with :class:`~geofm.exceptions.RootLockedError` naming the
holder. Within one process the lock is re-entrant: ``geofm run`` holds it for the whole
pipeline and each stage it calls takes it again without waiting on itself.

Read-only commands (``search``, ``serve``) never take it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from geofm.exceptions import RootLockedError

#: name of the lock file inside a run root.
LOCK_NAME = ".geofm.lock"


@dataclass
class _Held:
    """A lock this process holds: its open descriptor and how many times it was taken."""

    fd: int
    depth: int
    info: dict[str, Any]


_HELD: dict[Path, _Held] = {}
_REGISTRY = threading.Lock()


def lock_path(root: str | os.PathLike[str]) -> Path:
    """The lock file of a run root: ``ROOT/.geofm.lock``."""
    return Path(root) / LOCK_NAME


def _key(root: str | os.PathLike[str]) -> Path:
    return Path(root).resolve()


def holder(root: str | os.PathLike[str]) -> dict[str, Any]:
    """What the lock file of ``root`` says about its holder (``{}`` if unknown).

    Informational only: the file may be empty (never locked, released, or its holder
    has not written its details yet).
    """
    try:
        text = lock_path(root).read_text(encoding="utf-8")
        info = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def is_held_here(root: str | os.PathLike[str]) -> bool:
    """True if this process holds the lock of ``root``."""
    with _REGISTRY:
        return _key(root) in _HELD


def _write_info(fd: int, info: dict[str, Any]) -> None:
    data = (json.dumps(info, sort_keys=True) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _acquire(key: Path, *, stage: str, create: bool) -> _Held | None:
    import fcntl

    if not key.is_dir():
        if not create:
            return None
        key.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(key), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        found = holder(key)
        raise RootLockedError(root=key, stage=stage, holder=found) from None
    except BaseException:
        os.close(fd)
        raise
    info = {"pid": os.getpid(), "host": socket.gethostname(), "stage": stage,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}
    _write_info(fd, info)
    return _Held(fd=fd, depth=1, info=info)


def _release(key: Path) -> None:
    import fcntl

    held = _HELD[key]
    held.depth -= 1
    if held.depth:
        return
    del _HELD[key]
    try:
        os.ftruncate(held.fd, 0)  # no stale details once released
        fcntl.flock(held.fd, fcntl.LOCK_UN)
    finally:
        os.close(held.fd)


@contextlib.contextmanager
def root_lock(root: str | os.PathLike[str], *, stage: str,
              create: bool = True) -> Iterator[dict[str, Any] | None]:
    """Hold the exclusive writer lock of a run root for the ``with`` block.

    Args:
        root: run root folder.
        stage: what this process is doing there (``chip``, ``embed``, ``run`` ...);
            written into the lock file for whoever is refused.
        create: create ``root`` if it does not exist. With ``False`` a missing root is
            not locked (there is nothing in it to protect) and the block runs as is.

    Yields:
        The holder details written into the lock file (``pid``, ``host``, ``stage``,
        ``since``, ``command``); those of the outermost holder when re-entered; None
        when ``root`` does not exist and ``create`` is False.

    Raises:
        RootLockedError: another process holds the lock (raised at once, never waits).
    """
    key = _key(root)
    with _REGISTRY:
        held = _HELD.get(key)
        if held is not None:
            held.depth += 1
        else:
            held = _acquire(key, stage=stage, create=create)
            if held is not None:
                _HELD[key] = held
    if held is None:
        yield None
        return
    try:
        yield dict(held.info)
    finally:
        with _REGISTRY:
            _release(key)

