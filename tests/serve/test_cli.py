"""``geofm serve`` on the command line: exit codes, messages, clean stop on signals.

Messages are read with ``capfd``: the geofm log handler writes to the process's stderr.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from geofm.cli import main

REPO = Path(__file__).resolve().parents[2]


def serve_cli(*argv: str) -> int:
    """``geofm serve ARGV`` in-process, its log going to this test's (captured) stderr.

    geofm's CLI log handler keeps the stderr it was created with; under pytest's capture
    that stream is replaced between tests, so point the handler at the current one.
    """
    import logging

    for handler in logging.getLogger("geofm").handlers:
        if getattr(handler, "_geofm", False):
            handler.stream = sys.stderr  # not setStream: it would flush the closed old one
    return main(["serve", *argv])


def test_missing_root_exits_1_naming_it(tmp_path, capfd):
    assert serve_cli("--root", str(tmp_path / "nowhere"), "--port", "0") == 1
    assert f"run root {tmp_path / 'nowhere'} does not exist" in capfd.readouterr().err


def test_root_without_chips_says_which_stage_to_run(tmp_path, capfd):
    assert serve_cli("--root", str(tmp_path), "--port", "0") == 1
    err = capfd.readouterr().err
    assert "no chip metadata" in err and "geofm chip" in err


def test_port_in_use_exits_2_naming_the_port(served_root, capfd):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve_cli("--root", str(served_root), "--port", str(port)) == 2
    assert f"port {port} on 127.0.0.1 is already in use" in capfd.readouterr().err


def test_bad_port_exits_2(served_root, capfd):
    assert serve_cli("--root", str(served_root), "--port", "70000") == 2
    assert "--port 70000 must be between 0 and 65535" in capfd.readouterr().err


def _start(root: Path) -> tuple[subprocess.Popen, str, list[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "geofm", "serve", "--root", str(root),
                             "--port", "0"], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    lines: list[str] = []
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"at (http://127\.0\.0\.1:\d+/) \(Ctrl-C to stop\)", line)
        if found:
            return proc, found.group(1), lines
    proc.kill()
    pytest.fail("geofm serve did not log its URL:\n" + "".join(lines))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_logs_its_url_and_stops_cleanly_on_a_signal(served_root, sig):
    def snapshot():
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in served_root.rglob("*")}

    before = snapshot()
    proc, url, lines = _start(served_root)
    try:
        with urllib.request.urlopen(url + "api/run", timeout=30) as resp:
            assert json.loads(resp.read())["counts"]["chips"] == 9
        assert proc.stderr is not None
        while "chip layer ready" not in lines[-1]:  # the warm-up (layer, one search) ran
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
        time.sleep(0.5)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(lines) + err
    assert "stopped;" in err and "Traceback" not in err
    assert snapshot() == before  # serving, warm-up included, wrote nothing into the root
    with pytest.raises(OSError):  # the port is closed
        urllib.request.urlopen(url + "api/run", timeout=5)


def test_demo_ends_with_the_serve_command(tmp_path, monkeypatch, capsys):
    import geofm.demo

    monkeypatch.setattr(geofm.demo, "demo", lambda out, **kw: geofm.demo.DemoReport(out=out))
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.endswith(f"geofm serve --root {tmp_path / 'd' / 'run'}")
