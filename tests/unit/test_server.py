"""The local Prefect server dlops starts once and reuses: a real `prefect server start`."""

from __future__ import annotations

import json
import os

import psutil
import pytest

from flows import server


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A project home without a configured Prefect API (no env, no profile naming one)."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    yield tmp_path
    server.purge(tmp_path)  # whatever a failed assertion left running


def _group(pid: int) -> list[psutil.Process]:
    try:
        leader = psutil.Process(pid)
        return [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
def test_server_is_started_once_reused_and_stopped_with_its_children(home):
    conn = server.ensure(home)
    assert conn.origin == "started" and conn.url.startswith("http://127.0.0.1:")
    assert server.healthy(conn.url)
    state = json.loads((home / server.STATE_DIR / server.STATE_FILE).read_text())
    assert state["pid"] == conn.state.pid and conn.url == state["url"]
    assert (home / server.STATE_DIR / "prefect.db").is_file()  # its own database, in the home
    procs = _group(conn.state.pid)
    assert procs and all(p.status() != psutil.STATUS_ZOMBIE for p in procs)

    again = server.ensure(home)  # a later command
    assert (again.origin, again.url, again.state.pid) == ("reused", conn.url, conn.state.pid)

    stopped = server.stop(home)
    assert stopped.pid == conn.state.pid
    gone, alive = psutil.wait_procs(procs, timeout=10)
    assert alive == [] and not server.healthy(conn.url)
    assert not (home / server.STATE_DIR / server.STATE_FILE).exists()
    assert server.stop(home) is None  # nothing left to stop


def test_a_stale_state_file_is_removed(home):
    folder = home / server.STATE_DIR
    folder.mkdir(parents=True)
    dead = psutil.Popen(["true"])
    dead.wait()
    (folder / server.STATE_FILE).write_text(
        json.dumps({"pid": dead.pid, "port": 1, "url": "http://127.0.0.1:1/api", "started": 0})
    )
    assert server.read_state(home) is None
    assert not (folder / server.STATE_FILE).exists()


def test_a_configured_api_url_is_used_and_nothing_is_started(home, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    conn = server.use(home)
    assert (conn.url, conn.origin, conn.state) == ("http://127.0.0.1:4200/api", "configured", None)
    assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert not (home / server.STATE_DIR).exists()
