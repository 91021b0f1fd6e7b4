"""Fixtures of the ``geofm serve`` tests: a real tiny run, servers in threads, a browser.

``served_root`` is a complete run made by the pipeline's own stages (synth -> chip ->
embed with random tiny weights -> analyze -> index): 3 x 3 chips of 64 px, 24 dates,
seeded, with all three change statuses (the planted events give 2 changes). Built once
per session (about 7 s) and read-only: tests that need a variant copy it.
"""

from __future__ import annotations

import shutil
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geofm.exceptions import GeofmWarning

#: synthetic input of served_root (see the module docstring).
SERVE_SYNTH = dict(seed=0, size=192, n_dates=24, chip_size=64, n_events=4)


@pytest.fixture(scope="session")
def served_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny run root (read-only: copy before changing)."""
    from geofm.analyze import analyze
    from geofm.chip import chip
    from geofm.embed import embed
    from geofm.index import build_index
    from geofm.synth import synthesize

    base = tmp_path_factory.mktemp("serve")
    data = synthesize(base / "s2", **SERVE_SYNTH)
    root = base / "run"
    chip(data / "items", root, chip_size=64, progress=False)
    with warnings.catch_warnings():
        # only the random-weights warning of the tiny encoder is expected here
        warnings.filterwarnings("ignore", message="RANDOM WEIGHTS", category=GeofmWarning)
        embed(root, model="tiny", batch_size=32, progress=False)
    analyze(root, progress=False)
    build_index(root)
    return root


@pytest.fixture(scope="session")
def changed_chips(served_root: Path) -> list[str]:
    """Chip ids that analyze marked as changed (at least one, or the fixture is broken)."""
    import pandas as pd

    changes = pd.read_parquet(served_root / "analysis" / "changes.parquet")
    ids = sorted(changes.loc[changes["change"], "chip_id"])
    assert ids, "the serve fixture run has no changed chip; adjust SERVE_SYNTH"
    return ids


@pytest.fixture(scope="session")
def bare_root(served_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``served_root`` after chip and embed only: no analysis, no index (read-only)."""
    root = tmp_path_factory.mktemp("serve-bare") / "run"
    shutil.copytree(served_root, root)
    for name in ("analysis", "index"):
        shutil.rmtree(root / name)
    (root / "consolidated.parquet").unlink()
    return root


class ThreadServer:
    """A ``geofm serve`` server on 127.0.0.1, port 0, in a daemon thread."""

    def __init__(self, root: Path) -> None:
        from geofm.serve import make_server

        self.server = make_server(root, host="127.0.0.1", port=0)
        self.url = self.server.url
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """GET ``path`` (relative to the root URL): status, headers, body."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, path: str) -> tuple[int, Any]:
        """GET ``path`` and decode the JSON body."""
        import json

        status, _, body = self.get(path)
        return status, json.loads(body)

    def close(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def thread_server() -> type[ThreadServer]:
    """The :class:`ThreadServer` class, for tests that start their own server."""
    return ThreadServer


@pytest.fixture(scope="module")
def server(served_root: Path) -> Iterator[ThreadServer]:
    """The app over :func:`served_root`."""
    srv = ThreadServer(served_root)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def bare_server(bare_root: Path) -> Iterator[ThreadServer]:
    """The app over :func:`bare_root` (no analysis, no index)."""
    srv = ThreadServer(bare_root)
    yield srv
    srv.close()
