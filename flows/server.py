"""The Prefect server a command talks to: the configured one, else a local one dlops reuses.

Without `PREFECT_API_URL` (the environment, the project's `.env` from `make up`, or a Prefect
profile), Prefect starts a temporary server for every command and stops it at the end (about
10 s here, most of a no-op run). Instead dlops starts one `prefect server start` on 127.0.0.1
at a free port, detached, the first time a command needs it, and every later command (of any
project of this user) reuses it while it answers `/health`. It keeps Prefect's own database
(`$PREFECT_HOME/prefect.db`, the one the temporary server used: migrated once per machine, not
per project, and the flow-run history stays); its state file (pid, port, URL) and log live in
`$PREFECT_HOME/dlops/`. `dlops server status` / `dlops server stop` show and stop it; a state
file whose process is gone is removed.
Plain Python (no Prefect import): a command reads this before it imports Prefect, which must
find `PREFECT_API_URL` in the environment when it loads its settings.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

API_URL_VAR = "PREFECT_API_URL"
STATE_SUBDIR = "dlops"  # under Prefect's home
STATE_FILE = "server.json"
LOG_FILE = "server.log"
START_TIMEOUT_S = 120.0  # the first start migrates a fresh database
HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """The local Prefect server did not start; the message names its log."""


@dataclass(frozen=True)
class ServerState:
    """What the state file records about the server dlops started."""

    pid: int
    port: int
    url: str  # the API URL, http://127.0.0.1:<port>/api
    started: float  # time.time() at start

    @property
    def ui(self) -> str:
        """The Prefect UI's address."""
        return self.url.removesuffix("/api")


def prefect_home() -> Path:
    """Prefect's home folder (`PREFECT_HOME`, default ~/.prefect): its database, profiles."""
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def state_dir() -> Path:
    """Where the local server's state file, lock and log live."""
    return prefect_home() / STATE_SUBDIR


def configured_url() -> str | None:
    """The API URL the user configured: environment (and `.env`), else a Prefect profile.

    Prefect's settings are read only when Prefect is already imported (a test harness or a
    profile loaded by an earlier import); otherwise the environment decides.
    """
    url = os.environ.get(API_URL_VAR, "").strip()
    if url:
        return url
    if "prefect.settings" in sys.modules or _profile_sets_url():
        from prefect.settings import PREFECT_API_URL

        return PREFECT_API_URL.value() or None
    return None


def _profile_sets_url() -> bool:
    """True if Prefect's profiles file may set an API URL (then Prefect's settings decide)."""
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or prefect_home() / "profiles.toml")
    try:
        return API_URL_VAR in profiles.expanduser().read_text()
    except OSError:
        return False


def healthy(url: str, timeout: float = 1.0) -> bool:
    """True when the Prefect API at `url` answers its health check."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # Linux: a recycled pid that is not a Prefect server is not ours
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ")
        except OSError:
            return False
        return b"prefect" in text and b"server" in text
    return True


def read_state() -> ServerState | None:
    """The recorded server, or None (no file, unreadable, or its process is gone: removed)."""
    path = state_dir() / STATE_FILE
    try:
        state = ServerState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not _alive(state.pid):
        path.unlink(missing_ok=True)  # stale: the server died or the machine restarted
        return None
    return state


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One command at a time decides whether to start the server (concurrent `dlops run`s)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "server.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _prefect_command() -> list[str]:
    exe = Path(sys.executable).parent / "prefect"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "prefect"]


def start() -> ServerState:
    """Start a detached local server (its own session); return at once."""
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    # not this command's project settings (tracking URI, secrets from .env): the server is shared
    env = {
        k: v
        for k, v in os.environ.items()
        if k != API_URL_VAR and not k.startswith(("DLOPS_", "MLFLOW_"))
    }
    env.update(
        {
            "PREFECT_HOME": str(prefect_home()),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_API_HOST": HOST,
            "DO_NOT_TRACK": "true",
        }
    )
    cmd = [*_prefect_command(), "server", "start", "--host", HOST, "--port", str(port)]
    with (folder / LOG_FILE).open("ab") as log:
        proc = subprocess.Popen(
            [*cmd, "--analytics-off"],
            cwd=folder,  # not the project: the server outlives this command's checkout
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command; stop() ends its process group
        )
    state = ServerState(proc.pid, port, f"http://{HOST}:{port}/api", time.time())
    tmp = folder / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    tmp.replace(folder / STATE_FILE)
    return state


def wait_healthy(state: ServerState, timeout: float = START_TIMEOUT_S) -> None:
    """Block until the server answers; ServerError (server stopped) if it dies or times out."""
    deadline = time.monotonic() + timeout
    while not healthy(state.url, timeout=2.0):
        if not _alive(state.pid) or time.monotonic() > deadline:
            stop()
            log = state_dir() / LOG_FILE
            raise ServerError(
                f"the local Prefect server did not start on {state.url} (see {log}); "
                f"or set {API_URL_VAR} to a running server"
            )
        time.sleep(0.2)


@dataclass(frozen=True)
class Connection:
    """The Prefect API a command uses and where it comes from."""

    url: str
    origin: str  # "configured" (the user's or `make up`'s), "reused" or "started" (dlops')
    state: ServerState | None = None  # the local server, when dlops manages it


def ensure(wait: bool = True) -> Connection:
    """The configured API, else the local server: reused when it answers, else started.

    With `wait=False` a server just started may still be booting: call `ready` before the
    first API call (the command imports Prefect meanwhile).
    """
    url = configured_url()
    if url:
        return Connection(url, "configured")
    with _locked(state_dir()):
        state = read_state()
        origin = "reused"
        if state is not None and not healthy(state.url):
            try:  # a server another command is starting, or a hung one
                wait_healthy(state, timeout=30.0)
            except ServerError:
                state = None
        if state is None:
            state, origin = start(), "started"
    conn = Connection(state.url, origin, state)
    if wait:
        ready(conn)
    return conn


def ready(conn: Connection, meanwhile: Iterable[Callable[[], object]] = ()) -> None:
    """Wait for a server dlops started (nothing to do for a configured or reused one).

    `meanwhile`: work the command needs anyway, done one step at a time while the server is
    still booting (it is another process: on two cores both progress).
    """
    if conn.origin != "started" or conn.state is None:
        return
    for step in meanwhile:
        if healthy(conn.state.url, timeout=0.5):
            break
        with contextlib.suppress(Exception):  # the run itself meets (and reports) any failure
            step()
    wait_healthy(conn.state)


def use() -> Connection:
    """`ensure` without waiting, and `PREFECT_API_URL` set for this process (before Prefect)."""
    conn = ensure(wait=False)
    if conn.origin != "configured":  # a configured URL is where Prefect will find it already
        os.environ[API_URL_VAR] = conn.url
    return conn


def stop(timeout: float = 15.0) -> ServerState | None:
    """Stop the recorded server and its children (SIGTERM, then SIGKILL); None if none ran."""
    path = state_dir() / STATE_FILE
    state = read_state()
    if state is None:
        path.unlink(missing_ok=True)
        return None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _group_alive(state.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(state.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(state.pid, os.WNOHANG)  # reap it when this process started it
    path.unlink(missing_ok=True)
    return state


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # a zombie leader (started by this very process) counts as gone
    with contextlib.suppress(ChildProcessError, OSError):
        pid, _ = os.waitpid(pgid, os.WNOHANG)
        if pid == pgid:
            return False
    return True
