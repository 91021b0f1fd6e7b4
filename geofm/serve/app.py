"""The HTTP side of ``geofm serve``: routes, the server, clean start and stop.

Built on the standard library's :class:`http.server.ThreadingHTTPServer`: the app is a
local single-user tool whose work is synchronous library calls (pyarrow, LanceDB), so
one thread per request is all it needs, it adds no dependency, and tests run it in a
thread on port 0.

Routes (all ``GET``; JSON unless said otherwise):

========================================  =============================================
``/``                                     the single-page app (``/?chip=ID`` deep links
                                          are resolved in the browser)
``/static/...``                           the app's JS/CSS and the vendored Leaflet
``/api/run``                              :meth:`RunData.summary`
``/api/chips``                            the chip layer (:meth:`ChipLayer.payload`)
``/api/chips/footprints.bin``             float32 LE [N, 4, 2] corners, same order
``/api/chip?id=ID``                       :meth:`RunData.chip` (404 if unknown)
``/api/search?chip=ID&...``               :func:`geofm.search.search` results
                                          (:func:`search_options`); ``format=geojson``
                                          downloads a FeatureCollection
``/files/<root-relative path>.png``       a thumbnail or plot inside the run root
========================================  =============================================

Errors come back as ``{"error": message, "kind": class name}`` with status 400 (bad
parameter), 404 (unknown chip or file), 409 (missing or incompatible search index), 403
(on a loopback address, a request whose ``Host`` is not this machine: DNS rebinding).
"""

from __future__ import annotations

import errno
import json
import logging
import mimetypes
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from geofm.exceptions import GeofmError, GeofmValueError, SearchIndexError
from geofm.layout import RunRoot
from geofm.serve.data import RunData, UnknownChipError, search_options

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


class ServeError(GeofmError, OSError):
    """The server cannot listen where it was asked to.

    Attributes:
        host: the host (address) asked for.
        port: the port asked for.
    """

    def __init__(self, message: str, *, host: str, port: int) -> None:
        super().__init__(message)
        self.host = host
        self.port = port

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PortInUseError(ServeError):
    """Another program already listens on the port."""


def static_dir() -> Path:
    """Folder of the app's static files (``geofm/serve/static``, shipped as package data)."""
    return Path(str(resources.files("geofm.serve") / "static"))


class GeofmHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that carries the :class:`RunData` it serves.

    Attributes:
        data: the run root being served (read-only).
        static: folder of the static files.
    """

    daemon_threads = True
    allow_reuse_address = True  # TIME_WAIT sockets only; a live listener still conflicts

    def __init__(self, address: tuple[str, int], data: RunData) -> None:
        self.data = data
        self.static = static_dir().resolve()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        """``http://host:port/`` of the bound socket (the real port when 0 was asked)."""
        host, port = self.server_address[:2]
        host = str(host)
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"


class Handler(BaseHTTPRequestHandler):
    """Routes one request (see the module docstring)."""

    server: GeofmHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "geofm-serve"

    def log_message(self, format: str, *args: Any) -> None:
        """Request lines go to the debug log, not to stderr."""
        log.debug("%s %s", self.address_string(), format % args)

    # --- responses ----------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, *,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value: Any, status: int = 200, *, headers: dict[str, str] | None = None
              ) -> None:
        body = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        self._send(status, body, "application/json", headers={"Cache-Control": "no-store",
                                                               **(headers or {})})

    def _error(self, status: int, message: str, kind: str, **fields: Any) -> None:
        self._json({"error": message, "kind": kind, **fields}, status)

    # --- dispatch -----------------------------------------------------------------------
    def do_HEAD(self) -> None:
        """Like GET without the body."""
        self.do_GET()

    def do_GET(self) -> None:
        """Answer one GET request."""
        url = urlsplit(self.path)
        params = parse_qs(url.query, keep_blank_values=True)
        path = unquote(url.path)
        data = self.server.data
        if not self._host_allowed():
            self._error(403, "this server answers only requests addressed to this machine "
                        "(Host localhost or 127.0.0.1)", "Forbidden")
            return
        try:
            if path in ("/", "/index.html"):
                self._static("index.html", cache=False)
            elif path == "/favicon.ico":
                self._send(204, b"", "image/x-icon")
            elif path.startswith("/static/"):
                self._static(path[len("/static/"):], cache=True)
            elif path == "/api/run":
                self._json(data.summary())
            elif path == "/api/chips":
                self._send(200, data.blob("chips.json"), "application/json",
                           headers={"Cache-Control": "no-cache"})
            elif path == "/api/chips/footprints.bin":
                self._send(200, data.blob("footprints.bin"), "application/octet-stream",
                           headers={"Cache-Control": "no-cache"})
            elif path == "/api/chip":
                chip_id = (params.get("id") or [""])[0]
                if not chip_id:
                    raise GeofmValueError("give the chip id: /api/chip?id=CHIP_ID")
                self._json(data.chip(chip_id))
            elif path == "/api/search":
                self._search(params)
            elif path.startswith("/files/"):
                self._file(path[len("/files/"):])
            else:
                self._error(404, f"no page {path!r}; the app is at /", "NotFound")
        except UnknownChipError as exc:
            self._error(404, str(exc), type(exc).__name__, chip_id=exc.chip_id,
                        suggestions=exc.suggestions)
        except SearchIndexError as exc:
            self._error(409, str(exc), type(exc).__name__)
        except GeofmError as exc:
            self._error(400, str(exc), type(exc).__name__)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client went away during %s", self.path)
        except Exception as exc:  # a bug: answer 500 and log it; keep serving
            log.exception("error answering %s", self.path)
            try:
                self._error(500, f"internal error: {type(exc).__name__}: {exc}", "InternalError")
            except OSError:
                pass

    def _host_allowed(self) -> bool:
        """On a loopback address, only ``Host: localhost / 127.x / [::1]`` requests.

        A web page elsewhere cannot then read the app through DNS rebinding (a name of
        its own that resolves to 127.0.0.1); with ``--host 0.0.0.0`` any Host is served.
        """
        import ipaddress

        bound = str(self.server.server_address[0])
        try:
            if not ipaddress.ip_address(bound).is_loopback:
                return True
        except ValueError:
            return True
        host = urlsplit("//" + (self.headers.get("Host") or "")).hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def _static(self, rel: str, *, cache: bool) -> None:
        base = self.server.static
        try:
            target = (base / rel).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, a NUL byte
            target = None
        if target is None or not target.is_relative_to(base) or not target.is_file():
            self._error(404, f"no static file {rel!r}", "NotFound")
            return
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript",):
            ctype += "; charset=utf-8"
        self._send(200, target.read_bytes(), ctype,
                   headers={"Cache-Control": "max-age=3600" if cache else "no-cache"})

    def _file(self, rel: str) -> None:
        target = self.server.data.resolve_file(rel)
        if target is None:
            self._error(404, f"no PNG {rel!r} inside the run root", "NotFound")
            return
        self._send(200, target.read_bytes(), "image/png",
                   headers={"Cache-Control": "max-age=600"})

    def _search(self, params: dict[str, list[str]]) -> None:
        from geofm.search.output import to_feature_collection, to_records

        fmt = (params.get("format") or ["json"])[0]
        if fmt not in ("json", "geojson"):
            raise GeofmValueError(f"search parameter format={fmt!r} must be json or geojson")
        options = search_options({k: v for k, v in params.items() if k != "format"})
        started = time.perf_counter()
        results = self.server.data.search(options)
        seconds = time.perf_counter() - started
        if fmt == "geojson":
            body = json.dumps(to_feature_collection(results), allow_nan=False).encode()
            self._send(200, body, "application/geo+json", headers={
                "Content-Disposition": 'attachment; filename="geofm-search.geojson"',
                "Cache-Control": "no-store"})
            return
        self._json({"results": to_records(results), "query": results.attrs.get("query", {}),
                    "options": {k: v for k, v in options.items() if v not in (None, [], False)},
                    "seconds": round(seconds, 4)})


def make_server(root: str | os.PathLike[str] | RunRoot, *, host: str = DEFAULT_HOST,
                port: int = DEFAULT_PORT) -> GeofmHTTPServer:
    """Open the run root and bind the server (not yet serving).

    Args:
        root: run root to serve (read-only).
        host: address to listen on (``127.0.0.1``: this machine only).
        port: TCP port; 0 picks a free one (see :attr:`GeofmHTTPServer.url`).

    Raises:
        GeofmFileNotFoundError: the root does not exist or has no chip metadata.
        PortInUseError: the port is taken (the message names host and port).
        ServeError: the address cannot be bound for another reason.
    """
    data = RunData(root)
    try:
        return GeofmHTTPServer((host, port), data)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} on {host} is already in use (another `geofm serve`?); stop "
                f"that program or pick a free port with --port", host=host, port=port) from exc
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; check "
                         "--host and --port", host=host, port=port) from exc


def serve(root: str | os.PathLike[str] | RunRoot, *, host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT) -> None:
    """Serve the app over ``root`` until Ctrl-C or SIGTERM, then close cleanly.

    The chip layer is read in the background as soon as the server listens, so the
    first page load does not wait for it longer than necessary.

    Args:
        root: run root to serve (read-only: nothing is written into it).
        host: address to listen on.
        port: TCP port (0 = any free port).

    Raises:
        GeofmFileNotFoundError, PortInUseError, ServeError: see :func:`make_server`.
    """
    import signal

    server = make_server(root, host=host, port=port)
    log.info("serving %s at %s (Ctrl-C to stop)", server.data.root.path, server.url)
    threading.Thread(target=_warm, args=(server.data,), name="geofm-serve-warm",
                     daemon=True).start()
    # SIGTERM and Ctrl-C (SIGINT) both ask the serving loop to finish, from a thread:
    # no KeyboardInterrupt raised at a random point of the loop or of a request
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        def _on_signal(signum: int, frame: Any) -> None:
            log.info("%s received; stopping", signal.Signals(signum).name)
            threading.Thread(target=server.shutdown, daemon=True).start()

        previous = {sig: signal.signal(sig, _on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:  # served from another thread: no handler of ours
        log.info("interrupted; stopping")
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("stopped; %s was only read", server.data.root.path)


def _warm(data: RunData) -> None:
    """Read the chip layer and open the search index before the first page asks."""
    started = time.perf_counter()
    try:
        data.blob("chips.json")
        data.blob("footprints.bin")
    except Exception:  # the request that needs it will report the error
        log.exception("could not read the chip layer of %s", data.root.path)
        return
    log.info("chip layer ready: %d chips in %.2f s", len(data.layer()),
             time.perf_counter() - started)
    if data.has_index():
        # The first query loads the table (and its ANN index) from disk: seconds on a
        # large run. One search here makes the first one in the page fast.
        try:
            data.warm_search()
        except GeofmError as exc:
            log.debug("search warm-up skipped: %s", exc)
