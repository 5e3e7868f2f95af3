"""The team stack's figures: a no-op `dlops run` with the stack up, deployment vs local run.

    python benchmarks/team.py [--full] [--repeat 3]

In a temporary folder: a clone of this repository as the team's project (its committed
params.yaml, plus a small budget unless --full, and the suite of the built-in digits committed
as a team would), `make up` with its own ports, database prefix and folders, `dlops deploy`.
Then, side by side, on the same inputs:
- a deployment run of dlops-pipeline/nightly on a worker (cold: the worker's clone and the shared
  DVC cache start empty), from the trigger to its end;
- the same pipeline as `dlops run` in the project (cold: its own DVC cache starts empty);
- `dlops run` again with nothing changed, the stack up (median of --repeat).
Everything started is stopped (`make down PURGE=1`) and the folder removed. Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = ["tune.n_trials=2", "tune.max_epochs=3", "train.max_epochs=6"]
STACK_KEYS = ("PREFECT_", "MLFLOW_", "DLOPS_")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sh(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out


def _psql(sql: str, cwd: Path) -> None:
    cmd = ["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-c", sql]
    _sh(cmd, cwd, check=False)


def _timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    _sh(cmd, cwd, env)
    return time.perf_counter() - start


def main() -> None:
    """Run the comparison and print it (and the JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the committed budget, not a small one")
    ap.add_argument("--repeat", type=int, default=3, help="no-op runs (median)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from tasks.config import write_overrides
    from tasks.runtime import read_env_file

    clean = {k: v for k, v in os.environ.items() if not k.startswith(STACK_KEYS)}
    clean["PATH"] = f"{BIN}:{clean['PATH']}"
    with tempfile.TemporaryDirectory(prefix="dlops-team-bench-") as tmp:
        root = Path(tmp)
        project = root / "project"
        _sh(["git", "clone", "-q", str(REPO), str(project)], root)
        for key, value in (("user.email", "bench@dlops.invalid"), ("user.name", "bench")):
            _sh(["git", "config", key, value], project)
        if not args.full:
            write_overrides(project / "params.yaml", SMALL)
        _sh([str(BIN / "dlops"), "suite", "init"], project, clean, check=False)  # kept if there
        _sh(["git", "add", "-A"], project)
        _sh(["git", "commit", "-qm", "bench: budget and suite", "--allow-empty"], project)

        prefix = f"dlopsbench_{uuid.uuid4().hex[:8]}"
        stack_env = {
            **clean,
            "DLOPS_STACK_DIR": str(root / "stack"),
            "DLOPS_ENV_FILE": str(project / ".env"),
            "DLOPS_DB_PREFIX": prefix,
            "DLOPS_MLFLOW_PORT": str(_port()),
            "DLOPS_PREFECT_PORT": str(_port()),
            "DLOPS_REPO": str(project),
            "DLOPS_VENV": str(BIN.parent),
        }
        make = ["make", "-s", "-o", ".venv/.installed-stamp"]
        t0 = time.perf_counter()
        _sh([*make, "up"], REPO, stack_env)
        up_s = time.perf_counter() - t0
        try:
            run_env = {**clean, **read_env_file(project / ".env")}
            _sh([str(BIN / "dlops"), "deploy", "--cron", "", "--watch-cron", ""], project, run_env)
            os.environ.update(run_env)
            from prefect.deployments import run_deployment

            t0 = time.perf_counter()
            flow_run = run_deployment("dlops-pipeline/nightly", timeout=3600, as_subflow=False)
            deployment_s = time.perf_counter() - t0
            state = flow_run.state.type.value
            if state != "COMPLETED":
                raise SystemExit(f"the deployment run ended {state}: {flow_run.state.message}")
            body_s = (flow_run.end_time - flow_run.start_time).total_seconds()
            local_s = _timed([str(BIN / "dlops"), "run"], project, run_env)
            noop = [
                _timed([str(BIN / "dlops"), "run"], project, run_env) for _ in range(args.repeat)
            ]
        finally:
            _sh([*make, "down", "PURGE=1"], REPO, stack_env, check=False)
            for db in ("mlflow", "mlflow_auth", "prefect", "optuna"):
                _psql(f'DROP DATABASE IF EXISTS "{prefix}_{db}" WITH (FORCE)', root)
            _psql(f'DROP ROLE IF EXISTS "{prefix}"', root)

    figures = {
        "budget": "committed params.yaml" if args.full else " ".join(SMALL),
        "make_up_s": round(up_s, 1),
        "deployment_run_s": round(deployment_s, 1),
        "deployment_flow_body_s": round(body_s, 1),
        "local_run_s": round(local_s, 1),
        "deployment_vs_local": round(deployment_s / local_s, 2),
        "noop_run_s": [round(x, 1) for x in noop],
        "noop_run_median_s": round(statistics.median(noop), 1),
        "load_average": os.getloadavg()[0],
    }
    print("| what | figure |\n| --- | --- |")
    print(f"| budget | {figures['budget']} |")
    print(f"| `make up` | {up_s:.1f} s |")
    print(
        f"| deployment run on a worker, trigger to end (flow body) | {deployment_s:.1f} s "
        f"({body_s:.1f} s) |"
    )
    print(f"| same pipeline, `dlops run` locally | {local_s:.1f} s |")
    print(f"| ratio deployment / local | {figures['deployment_vs_local']:.2f} |")
    print(
        f"| `dlops run` with nothing changed, stack up (median of {args.repeat}) | "
        f"{figures['noop_run_median_s']:.1f} s ({', '.join(map(str, figures['noop_run_s']))}) |"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
