"""Shared fixtures: a temporary project (git + DVC + SQLite MLflow) and small configs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import dvc as _dvc  # noqa: F401  (binds its log handler to sys.stderr on import: before capsys)
import pytest

from flows.cli import configure_environment

REPO = Path(__file__).resolve().parents[1]
configure_environment()  # the CLI's local, telemetry-free defaults

# A tiny budget: one trial, one or two epochs (no minimum of steps); everything else as shipped.
TINY = [
    "tune.n_trials=1",
    "tune.max_epochs=1",
    "tune.min_steps=0",
    "tune.min_val_examples=0",  # no k-fold (tests/unit/test_training.py covers it)
    "train.max_epochs=2",
    "train.min_steps=0",
    "train.patience=1",
    "promote.threshold=0.5",
]
PROJECT_FILES = ["params.yaml", "dvc.yaml", ".dvcignore", "tasks", "models", "flows"]


def _copy_project(dest: Path) -> None:
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


# Set by `tasks.runtime.setup()` and `dlops run --data` for the rest of a process: each test
# starts without them, and what one test sets is undone after it.
PROCESS_ENV = ("DLOPS_HOME", "DLOPS_DATA_URL", "DLOPS_OPTUNA_STORAGE")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in PROCESS_ENV:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary project folder as cwd, with its own SQLite MLflow store."""
    _copy_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DLOPS_HOME", str(tmp_path))
    return tmp_path


def git(*args: str, cwd: Path) -> str:
    """Run git quietly in `cwd`."""
    out = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout


@pytest.fixture
def dvc_project(workspace: Path) -> Path:
    """The temporary project as a git + DVC repository with one commit."""
    git("init", "-q", cwd=workspace)
    git("config", "user.email", "ci@dlops.invalid", cwd=workspace)
    git("config", "user.name", "dlops-ci", cwd=workspace)
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([str(dvc), "init", "-q"], cwd=workspace, check=True)
    subprocess.run([str(dvc), "config", "core.analytics", "false"], cwd=workspace, check=True)
    (workspace / ".gitignore").write_text(
        "/data/\n/reports/\nmlflow.db\nmlartifacts/\n__pycache__/\n/.dlops/\n"
    )
    git("add", "-A", cwd=workspace)
    git("commit", "-qm", "init", cwd=workspace)
    return workspace


@pytest.fixture
def tiny() -> list[str]:
    """Overrides for the tiny training budget."""
    return list(TINY)


@pytest.fixture
def tiny_cfg(workspace: Path):
    """Config of the temporary project with the tiny training budget."""
    from tasks.config import load_config

    return load_config(workspace / "params.yaml", TINY)


class LoopbackServer:
    """A file server on 127.0.0.1 (a free port) for http(s) sources, stopped by `close()`.

    `auth` ("user:password") and `query` ("key=value") are required of every request when set
    (basic auth and a presigned-style query); `stream` paths are sent without Content-Length,
    in chunks, and `sent` counts the body bytes written per path.
    """

    def __init__(self, root: Path, auth: str | None = None, query: str | None = None) -> None:
        import base64
        import http.server
        import threading
        from urllib.parse import urlsplit

        self.root, self.stream = root, set()
        self.sent: dict[str, int] = {}
        self.seen: list[tuple[str, bool]] = []  # (path, authorized)
        server = self
        expected = f"Basic {base64.b64encode(auth.encode()).decode()}" if auth else None

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _serve(self, body: bool) -> None:
                url = urlsplit(self.path)
                ok = (expected is None or self.headers.get("Authorization") == expected) and (
                    query is None or url.query == query
                )
                server.seen.append((url.path, ok))
                file = server.root / url.path.lstrip("/")
                if not ok:
                    self.send_error(403, "signature or credentials missing")
                    return
                if not file.is_file():
                    self.send_error(404)
                    return
                data = file.read_bytes()
                streamed = url.path in server.stream
                ranged = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
                if ranged and not streamed:  # archives are read at random offsets
                    start = int(ranged.group(1))
                    end = int(ranged.group(2) or len(data) - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                    data = data[start : end + 1]
                else:
                    self.send_response(200)
                if not streamed:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not body:
                    return
                try:
                    for i in range(0, len(data), 1 << 16):
                        self.wfile.write(data[i : i + (1 << 16)])
                        server.sent[url.path] = server.sent.get(url.path, 0) + (1 << 16)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: what `sent` measures
                if streamed:
                    self.close_connection = True

            def do_GET(self) -> None:  # noqa: N802
                self._serve(body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve(body=False)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, userinfo: str = "", query: str = "") -> str:
        at = f"{userinfo}@" if userinfo else ""
        return f"http://{at}127.0.0.1:{self.port}/{path}" + (f"?{query}" if query else "")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture
def loopback(tmp_path: Path):
    """`make(root, auth=..., query=...)` -> a LoopbackServer; every one is stopped after."""
    servers: list[LoopbackServer] = []

    def make(root: Path = tmp_path, **kwargs: str) -> LoopbackServer:
        servers.append(LoopbackServer(root, **kwargs))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def postgres_db():
    """A fresh database on the machine's PostgreSQL (127.0.0.1:5432, trust auth), dropped after."""
    name = f"dlops_test_{uuid.uuid4().hex[:10]}"
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c"]
    try:
        subprocess.run([*psql, f"CREATE DATABASE {name}"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        if os.environ.get("CI"):  # CI runs PostgreSQL: its absence is a failure there
            raise
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432 ({exc})")
    yield name
    subprocess.run([*psql, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True)
