"""The team stack for real: `make up`, `make status`, `make down` on this machine's PostgreSQL.

One stack for the module (its own stack folder, free loopback ports, a unique database prefix
and a `.env` in a temporary folder via DLOPS_ENV_FILE); the last test stops it and drops its
databases, and the module's teardown makes sure of both even when a test failed.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import requests

from tasks.runtime import read_env_file

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONTRACT = {
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "PREFECT_API_URL",
    "DLOPS_OPTUNA_STORAGE",
    "DLOPS_DVC_REMOTE",
    "DLOPS_DVC_CACHE",
    "DLOPS_REPO",
    "DLOPS_WORK_POOL",
}
SERVICES = ["mlflow", "prefect-server", "worker-1", "worker-2"]
POOL = "dlops"


@pytest.fixture(scope="session")
def prefect_server():
    """This module runs its own Prefect server (`make up`), not the suite's temporary one."""
    yield


@pytest.fixture
def _single_thread():
    """No torch in this module (the suite-wide fixture imports it)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stack_env(stack_dir: Path, env_file: Path, prefix: str, mlflow_port: int, prefect_port: int):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in CONTRACT and not k.startswith(("PREFECT_", "MLFLOW_", "DLOPS_"))
    }
    env.update(
        DLOPS_STACK_DIR=str(stack_dir),
        DLOPS_ENV_FILE=str(env_file),
        DLOPS_DB_PREFIX=prefix,
        DLOPS_MLFLOW_PORT=str(mlflow_port),
        DLOPS_PREFECT_PORT=str(prefect_port),
        DLOPS_WORK_POOL=POOL,
    )
    return env


def _make(target: str, env: dict, *args: str, timeout: float = 240):
    # -o: never rebuild the shared virtualenv from a test (it is already installed).
    cmd = ["make", "-s", "-o", ".venv/.installed-stamp", target, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _psql(sql: str, db: str = "postgres") -> list[str]:
    out = subprocess.run(
        ["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-c", sql],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def _databases(prefix: str) -> list[str]:
    return _psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}\\_%'")


def _pids(stack_dir: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (stack_dir / "run").glob("*.pid")}


def _tree(pid: int) -> list[psutil.Process]:
    """A service's process group and every descendant."""
    procs = {p.pid: p for p in psutil.process_iter() if _pgid(p.pid) == pid}
    for p in list(procs.values()):
        try:
            procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    return list(procs.values())


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _errors(stderr: str) -> list[str]:
    """stderr without make's own `make: *** ... Error 1` line (`make[1]:` under `make test`)."""
    own = re.compile(r"make(\[\d+\])?: ")
    return [line for line in stderr.splitlines() if line and not own.match(line)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    prefix = f"dlopstest_{uuid.uuid4().hex[:8]}"
    ns = SimpleNamespace(
        dir=root / "stack",
        env_file=root / "project" / ".env",
        prefix=prefix,
        mlflow_port=_free_port(),
        prefect_port=_free_port(),
    )
    ns.env_file.parent.mkdir()
    ns.env = _stack_env(ns.dir, ns.env_file, prefix, ns.mlflow_port, ns.prefect_port)
    t0 = time.monotonic()
    ns.up = _make("up", ns.env)
    ns.up_seconds = time.monotonic() - t0
    try:
        assert ns.up.returncode == 0, ns.up.stdout + ns.up.stderr
        ns.dotenv = read_env_file(ns.env_file)
        yield ns
    finally:
        _make("down", ns.env, "PURGE=1", timeout=120)
        for db in _databases(prefix):
            _psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        _psql(f'DROP ROLE IF EXISTS "{prefix}"')


def test_up_starts_each_service_in_its_own_process_group(stack):
    print(f"make up: {stack.up_seconds:.1f} s")
    for svc in SERVICES:
        assert re.search(rf"^{svc}\s+started", stack.up.stdout, re.M), stack.up.stdout
    pids = _pids(stack.dir)
    assert sorted(pids) == sorted(SERVICES)
    for svc, pid in pids.items():
        assert _pgid(pid) == pid, f"{svc} is not the leader of its own process group"
        assert (stack.dir / "logs" / f"{svc}.log").stat().st_size > 0


def test_mlflow_needs_a_login_and_proxies_artifacts(stack, monkeypatch, tmp_path):
    uri = stack.dotenv["MLFLOW_TRACKING_URI"]
    assert uri == f"http://127.0.0.1:{stack.mlflow_port}"
    login = (stack.dotenv["MLFLOW_TRACKING_USERNAME"], stack.dotenv["MLFLOW_TRACKING_PASSWORD"])
    api = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(api, timeout=10).status_code == 401
    assert requests.get(api, auth=(login[0], "wrong-password"), timeout=10).status_code == 401
    assert requests.get(api, auth=login, timeout=10).status_code == 200
    # --allowed-hosts: a foreign Host header (DNS rebinding) is refused even with a login.
    foreign = requests.get(api, auth=login, headers={"Host": "evil.example"}, timeout=10)
    assert foreign.status_code == 403

    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", login[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", login[1])
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("infra-smoke")
    assert client.get_experiment(exp_id).artifact_location.startswith("mlflow-artifacts:")
    run = client.create_run(exp_id)
    payload = tmp_path / "hello.txt"
    payload.write_text("through the proxy\n")
    client.log_artifact(run.info.run_id, str(payload), artifact_path="smoke")
    client.log_metric(run.info.run_id, "m", 1.5)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "smoke")] == ["smoke/hello.txt"]
    got = Path(client.download_artifacts(run.info.run_id, "smoke/hello.txt", str(tmp_path / "d")))
    assert got.read_text() == "through the proxy\n"
    # The bytes sit in the stack's artifact folder, the run in PostgreSQL.
    stored = list((stack.dir / "mlflow" / "artifacts").rglob("hello.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "through the proxy\n"
    assert "infra-smoke" in _psql("SELECT name FROM experiments", db=f"{stack.prefix}_mlflow")
    assert _psql("SELECT username FROM users", db=f"{stack.prefix}_mlflow_auth") == [login[0]]


def test_prefect_server_pool_and_two_online_workers(stack):
    api = stack.dotenv["PREFECT_API_URL"]
    assert api == f"http://127.0.0.1:{stack.prefect_port}/api"
    assert requests.get(f"{api}/health", timeout=10).json() is True

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}):
        with get_client(sync_client=True) as client:
            assert client.read_work_pool(POOL).type == "process"
            workers = client.read_workers_for_work_pool(POOL)
    online = {w.name for w in workers if w.status.value == "ONLINE"}
    assert online == {f"{POOL}-worker-1", f"{POOL}-worker-2"}
    assert POOL in _psql("SELECT name FROM work_pool", db=f"{stack.prefix}_prefect")

    # Flow runs a worker executes inherit its environment: the contract, as in .env.
    for svc in ("worker-1", "worker-2"):
        environ = psutil.Process(_pids(stack.dir)[svc]).environ()
        assert {k: environ.get(k) for k in CONTRACT} == stack.dotenv


def test_env_file_holds_exactly_the_contract(stack):
    assert stack.env_file.stat().st_mode & 0o777 == 0o600
    env = stack.dotenv
    assert set(env) == CONTRACT
    assert env["DLOPS_WORK_POOL"] == POOL
    assert env["DLOPS_OPTUNA_STORAGE"].startswith(f"postgresql+psycopg2://{stack.prefix}:")
    assert env["DLOPS_OPTUNA_STORAGE"].endswith(f"@127.0.0.1:5432/{stack.prefix}_optuna")
    assert Path(env["DLOPS_DVC_REMOTE"]).is_dir() and Path(env["DLOPS_DVC_CACHE"]).is_dir()
    assert Path(env["DLOPS_DVC_REMOTE"]).is_relative_to(stack.dir)
    assert (
        env["DLOPS_REPO"]
        == subprocess.check_output(
            ["git", "rev-parse", "--show-toplevel"], cwd=REPO, text=True
        ).strip()
    )
    assert sorted(_databases(stack.prefix)) == sorted(
        f"{stack.prefix}_{n}" for n in ("mlflow", "mlflow_auth", "optuna", "prefect")
    )
    # The Optuna database takes the role's connections.
    import sqlalchemy

    engine = sqlalchemy.create_engine(env["DLOPS_OPTUNA_STORAGE"])
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT current_user")).scalar() == stack.prefix
    engine.dispose()


def test_second_up_is_harmless_and_keeps_the_users_lines(stack):
    before = _pids(stack.dir)
    with stack.env_file.open("a") as f:
        f.write("MY_SETTING=kept\n")  # the user's own line in the same .env
    again = _make("up", stack.env, timeout=120)
    assert again.returncode == 0, again.stderr
    for svc in SERVICES:
        assert re.search(rf"^{svc}\s+already running", again.stdout, re.M), again.stdout
    assert _pids(stack.dir) == before
    assert read_env_file(stack.env_file) == {**stack.dotenv, "MY_SETTING": "kept"}


def test_port_in_use_is_a_one_line_error_before_anything_starts(stack, tmp_path):
    prefix = f"dlopstest_{uuid.uuid4().hex[:8]}"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = _stack_env(tmp_path / "stack", tmp_path / ".env", prefix, port, _free_port())
        out = _make("up", env, timeout=120)
    assert out.returncode != 0
    errors = _errors(out.stderr)
    assert len(errors) == 1, out.stderr
    assert errors[0].startswith(f"dlops: port {port} (mlflow) is already in use"), errors
    assert "DLOPS_MLFLOW_PORT" in errors[0]
    assert not list((tmp_path / "stack").rglob("*.pid"))
    assert not (tmp_path / ".env").exists()
    assert _databases(prefix) == []
    # A port held by another stack's service is refused alike (only a stack's own is "running").
    taken = _stack_env(tmp_path / "other", tmp_path / ".env2", prefix, stack.mlflow_port, port)
    out = _make("up", taken, timeout=120)
    assert out.returncode != 0
    assert _errors(out.stderr)[0].startswith(f"dlops: port {stack.mlflow_port} (mlflow)")
    # PostgreSQL not there: one line as well, and nothing started.
    env["DLOPS_PG_PORT"] = str(_free_port())
    env["DLOPS_MLFLOW_PORT"] = str(_free_port())
    out = _make("up", env, timeout=120)
    assert out.returncode != 0
    assert _errors(out.stderr) == [
        f"dlops: PostgreSQL is not reachable at 127.0.0.1:{env['DLOPS_PG_PORT']} "
        "(set DLOPS_PG_HOST/DLOPS_PG_PORT)"
    ]
    assert not list((tmp_path / "stack").rglob("*.pid"))


def test_status_lists_each_service_up(stack):
    out = _make("status", stack.env, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert set(lines) == {"postgresql", *SERVICES}
    for line in lines.values():
        assert re.search(r"\sup( \(pid \d+\))?$", line), line
    assert f"http://127.0.0.1:{stack.mlflow_port}" in lines["mlflow"]
    assert f"http://127.0.0.1:{stack.prefect_port}" in lines["prefect-server"]
    assert f"{POOL}-worker-2" in lines["worker-2"]


def test_down_stops_every_process_and_purge_drops_the_databases(stack):
    procs = [p for pid in _pids(stack.dir).values() for p in _tree(pid)]
    assert len(procs) > len(SERVICES)  # servers have children (uvicorn workers, ...)
    t0 = time.monotonic()
    out = _make("down", stack.env, "PURGE=1", timeout=120)
    print(f"make down PURGE=1: {time.monotonic() - t0:.1f} s")
    assert out.returncode == 0, out.stderr
    for svc in SERVICES:
        assert re.search(rf"^{svc}\s+stopped", out.stdout, re.M), out.stdout
    assert [p.pid for p in procs if _alive(p)] == []
    # make up created the file: make down removes its lines, and the file unless a user line
    # (test_second_up's) is left in it.
    left = read_env_file(stack.env_file) if stack.env_file.exists() else {}
    assert left in ({}, {"MY_SETTING": "kept"})
    assert _databases(stack.prefix) == []
    assert _psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{stack.prefix}'") == []
    status = _make("status", stack.env, timeout=60)
    assert all(
        line.split()[-1] == "down"
        for line in status.stdout.splitlines()
        if not line.startswith("postgresql")
    ), status.stdout
