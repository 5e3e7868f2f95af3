"""The local Prefect server dlops starts once and reuses: a real `prefect server start`."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import psutil
import pytest

from flows import server


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A Prefect home of its own, no Prefect API configured (no env, no profile naming one)."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    with contextlib.ExitStack() as stack:
        if "prefect.settings" in sys.modules:  # the suite's harness set an API URL: unset it here
            from prefect.settings import PREFECT_API_URL, temporary_settings

            stack.enter_context(temporary_settings(restore_defaults={PREFECT_API_URL}))
        yield tmp_path / "prefect-home"
        server.stop()  # whatever a failed assertion left running


def _group(pid: int) -> list[psutil.Process]:
    try:
        leader = psutil.Process(pid)
        return [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
def test_server_is_started_once_reused_and_stopped_with_its_children(home):
    conn = server.ensure()
    assert conn.origin == "started" and conn.url.startswith("http://127.0.0.1:")
    assert server.healthy(conn.url)
    state = json.loads((server.state_dir() / server.STATE_FILE).read_text())
    assert state["pid"] == conn.state.pid and conn.url == state["url"]
    assert (home / "prefect.db").is_file()  # Prefect's own database, in Prefect's home
    procs = _group(conn.state.pid)
    assert procs and all(p.status() != psutil.STATUS_ZOMBIE for p in procs)

    again = server.ensure()  # a later command
    assert (again.origin, again.url, again.state.pid) == ("reused", conn.url, conn.state.pid)

    stopped = server.stop()
    assert stopped.pid == conn.state.pid
    gone, alive = psutil.wait_procs(procs, timeout=10)
    assert alive == [] and not server.healthy(conn.url)
    assert not (server.state_dir() / server.STATE_FILE).exists()
    assert server.stop() is None  # nothing left to stop


def test_a_stale_state_file_is_removed(home):
    folder = server.state_dir()
    folder.mkdir(parents=True)
    dead = psutil.Popen(["true"])
    dead.wait()
    (folder / server.STATE_FILE).write_text(
        json.dumps({"pid": dead.pid, "port": 1, "url": "http://127.0.0.1:1/api", "started": 0})
    )
    assert server.read_state() is None
    assert not (folder / server.STATE_FILE).exists()


def test_a_configured_api_url_is_used_and_nothing_is_started(home, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    conn = server.use()
    assert (conn.url, conn.origin, conn.state) == ("http://127.0.0.1:4200/api", "configured", None)
    assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert not server.state_dir().exists()
