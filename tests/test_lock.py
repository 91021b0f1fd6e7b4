"""One writer per run root: the lock of geofm.lock, taken by every writing stage."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import geofm
from geofm.exceptions import GeofmError, RootLockedError
from geofm.lock import LOCK_NAME, holder, is_held_here, root_lock
from geofm.manifest import StageRecord, read_manifest

REPO = Path(geofm.__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@contextlib.contextmanager
def _held_by_another_process(root: Path, stage: str) -> Iterator[subprocess.Popen[str]]:
    """Another Python process holds the lock of ``root`` (as ``stage``) inside the block."""
    script = textwrap.dedent(f"""
        import time
        from geofm.lock import root_lock
        with root_lock({str(root)!r}, stage={stage!r}):
            print("held", flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _geofm(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geofm", *args], capture_output=True,
                          text=True, env=_env(), timeout=timeout, check=False)


def _wait_for_holder(root: Path, pid: int, proc: subprocess.Popen[str],
                     timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while holder(root).get("pid") != pid:
        if proc.poll() is not None:
            raise AssertionError(f"process {pid} ended (rc {proc.returncode}) before it "
                                 f"took the lock: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not take the lock of {root}")
        time.sleep(0.005)


def test_lock_file_names_the_holder_and_is_emptied_on_release(tmp_path):
    root = tmp_path / "new" / "root"
    with root_lock(root, stage="chip") as info:
        assert info is not None
        assert holder(root) == info
        assert info["pid"] == os.getpid() and info["stage"] == "chip"
        assert {"host", "since", "command"} <= set(info)
        assert is_held_here(root)
    assert not is_held_here(root)
    assert (root / LOCK_NAME).read_text() == ""  # informational only; empty when free


def test_missing_root_is_not_created_without_create(tmp_path):
    root = tmp_path / "absent"
    with root_lock(root, stage="embed", create=False) as info:
        assert info is None
    assert not root.exists()


def test_reentrant_in_one_process_and_released_after_the_outermost(tmp_path):
    root = tmp_path / "root"
    with root_lock(root, stage="run") as outer:
        with root_lock(root, stage="embed") as inner:  # no deadlock on itself
            assert inner == outer  # the outermost holder stays named
            with StageRecord(root, "embed") as record:
                record.counts["chips"] = 1
        assert is_held_here(root)
        assert read_manifest(root)["stages"]["embed"]["status"] == "ok"
    assert not is_held_here(root)
    # released: another process takes it at once
    script = (f"from geofm.lock import root_lock\n"
              f"with root_lock({str(root)!r}, stage='index'): print('took it')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=_env(), timeout=60, check=False)
    assert done.returncode == 0 and "took it" in done.stdout, done.stderr


def test_second_writer_subprocess_fails_at_once_naming_the_holder(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with root_lock(root, stage="embed"):
        started = time.monotonic()
        done = _geofm("embed", "--root", str(root), "--model", "tiny", "--no-progress")
        elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"being written by process {os.getpid()} on host" in done.stderr
    assert "stage 'embed'" in done.stderr and "embed did not start" in done.stderr
    assert elapsed < 60  # it did not wait for the lock (we never released it meanwhile)
    assert not (root / "run.json").exists()  # a refused writer records nothing


def test_in_process_stage_refused_while_a_subprocess_holds_the_root(tmp_path):
    from geofm.analyze import analyze

    root = tmp_path / "root"
    with _held_by_another_process(root, "chip") as proc:
        with pytest.raises(RootLockedError, match=f"process {proc.pid} .*stage 'chip'") as info:
            analyze(root, progress=False)
        assert info.value.holder["pid"] == proc.pid and info.value.stage == "analyze"
        assert isinstance(info.value, GeofmError)
        with pytest.raises(RootLockedError):
            StageRecord(root, "index").write(status="ok")  # run.json writes are locked too
        assert not (root / "run.json").exists()


def test_kill_9_of_the_holder_releases_the_lock(tmp_path):
    root = tmp_path / "root"
    with _held_by_another_process(root, "embed") as proc:
        with pytest.raises(RootLockedError):
            with root_lock(root, stage="index"):
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert holder(root)["pid"] == proc.pid  # the stale contents are only information
    with root_lock(root, stage="index") as info:  # the OS dropped the lock with the process
        assert info is not None and info["pid"] == os.getpid()
        assert holder(root)["stage"] == "index"


def test_two_concurrent_embeds_second_fails_first_equals_a_clean_run(chipped_root,
                                                                    writable_copy, tmp_path):
    """Acceptance: two `geofm embed` on one root with different models."""
    import shutil

    import pyarrow.parquet as pq

    from geofm.layout import RunRoot

    shared = writable_copy(chipped_root)
    clean = tmp_path / "clean"
    shutil.copytree(chipped_root, clean)
    args = ["--model", "tiny", "--batch-size", "4", "--workers", "0", "--no-progress"]
    first = subprocess.Popen([sys.executable, "-m", "geofm", "embed", "--root", str(shared),
                              *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=_env())
    try:
        _wait_for_holder(shared, first.pid, first)
        first.send_signal(signal.SIGSTOP)  # hold it mid-run, so the runs surely overlap
        assert holder(shared)["pid"] == first.pid, "the first run finished too early"
        started = time.monotonic()
        second = _geofm("embed", "--root", str(shared), "--model", "small", "--workers", "0",
                        "--no-progress", timeout=120)
        elapsed = time.monotonic() - started
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 1, second.stderr
    assert "Traceback" not in second.stderr
    assert f"process {first.pid}" in second.stderr and "stage 'embed'" in second.stderr
    assert elapsed < 120
    single = _geofm("embed", "--root", str(clean), *args, timeout=300)
    assert single.returncode == 0, single.stderr

    a, b = RunRoot(shared), RunRoot(clean)
    scenes = a.scene_ids(a.embeddings_dir)
    assert scenes and scenes == b.scene_ids(b.embeddings_dir)
    for scene in scenes:
        got, want = pq.read_table(a.embeddings_path(scene)), pq.read_table(b.embeddings_path(scene))
        assert got.equals(want), scene
        meta = json.loads(got.schema.metadata[b"geofm"])
        assert meta == json.loads(want.schema.metadata[b"geofm"])
        assert meta["model"]["preset"] == "tiny"
    entry = read_manifest(shared)["stages"]["embed"]
    assert entry["status"] == "ok" and entry["model"]["preset"] == "tiny"


@pytest.fixture
def held_elsewhere(tmp_path):  # type: ignore[no-untyped-def]
    """A run root whose lock another process holds (stage "chip"); yields (root, pid)."""
    root = tmp_path / "held"
    with _held_by_another_process(root, "chip") as proc:
        yield root, proc.pid


@pytest.mark.parametrize("argv", [
    ["run", "--stages", "analyze,index", "--root"],
    ["index", "--root"],
    ["analyze", "--no-progress", "--root"],
])
def test_cli_writers_are_refused_with_exit_1(held_elsewhere, argv, capsys):
    from geofm.cli import main

    root, pid = held_elsewhere
    assert main([*argv, str(root)]) == 1
    err = capsys.readouterr().err
    assert f"run root {root.resolve()} is being written by process {pid}" in err
    assert "stage 'chip'" in err
    assert not (root / "run.json").exists()


def test_demo_is_refused_while_its_run_root_is_held(tmp_path):
    from geofm.demo import demo

    out = tmp_path / "demo"
    with _held_by_another_process(out / "run", "run") as proc:
        with pytest.raises(RootLockedError, match=f"process {proc.pid} .*stage 'run'"):
            demo(out, progress=False)
        assert not (out / "data").exists()  # refused before synthesising anything
