"""Fixtures: a real OpenAI-compatible HTTP server on 127.0.0.1, an indexed synthetic root.

The server (``http.server`` in a thread, port 0) speaks ``POST /v1/chat/completions``,
records every request (path, headers, JSON body) and answers ``"ANSWER to: <prompt
text>"`` unless a test sets ``server.reply`` to ``f(body) -> (status, json, headers)``.
"""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest


def prompt_text(body: dict[str, Any]) -> str:
    """The text of the (single) user message of a chat-completions request."""
    content = body["messages"][0]["content"]
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content if p["type"] == "text")


def prompt_images(body: dict[str, Any]) -> list[str]:
    """The image URLs of the user message."""
    content = body["messages"][0]["content"]
    if isinstance(content, str):
        return []
    return [p["image_url"]["url"] for p in content if p["type"] == "image_url"]


def default_reply(body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
    answer = "ANSWER to: " + prompt_text(body)
    return 200, {"id": "x", "object": "chat.completion", "model": body.get("model"),
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": answer}}]}, {}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        server: Any = self.server
        server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        status, payload, headers = server.reply(body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass


@pytest.fixture
def server():  # type: ignore[no-untyped-def]
    """A running local chat-completions server; ``server.base_url`` ends in ``/v1``."""
    httpd: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests = []
    httpd.reply = default_reply
    httpd.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def png_bytes(seed: int) -> bytes:
    """A tiny RGB PNG whose colour depends on ``seed``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 37 % 256, seed * 91 % 256, 120)).save(buf, "PNG")
    return buf.getvalue()


def write_thumbnails(root: Path) -> None:
    """Write a PNG at every ``thumbnail_path`` of the indexed rows."""
    import pandas as pd

    cons = pd.read_parquet(root / "consolidated.parquet", columns=["thumbnail_path"])
    for i, rel in enumerate(sorted(set(cons["thumbnail_path"].dropna()))):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(i))


@pytest.fixture(scope="module")
def indexed_root(tmp_path_factory, make_embedded_root):  # type: ignore[no-untyped-def]
    """3 classes x 4 chips x 3 dates, dim 16, indexed, with PNG thumbnails (read-only)."""
    from geofm.index import build_index

    root = tmp_path_factory.mktemp("gen") / "root"
    make_embedded_root(root, n_classes=3, per_class=4, dim=16, noise=0.3)
    build_index(root)
    write_thumbnails(root)
    return root


@pytest.fixture
def cli_log(caplog):  # type: ignore[no-untyped-def]
    """``cli_log()`` -> what the ``geofm`` logger wrote during the test.

    The CLI's logger does not propagate (``geofm.log.setup_logging``), so caplog's
    handler is attached to it directly.
    """
    import logging

    logger = logging.getLogger("geofm")
    logger.addHandler(caplog.handler)
    yield lambda: caplog.text
    logger.removeHandler(caplog.handler)
