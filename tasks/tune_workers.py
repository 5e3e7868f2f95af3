"""Where a study's extra workers come from: their spec, local processes, the checks on N.

The tune stage (tasks.tune) is worker 0; `launch_local` starts the others on this host as
`python -m tasks.tune --worker - --index i` (the spec on stdin). A launcher passed in by flows/
(flows.tune_worker: Prefect flow runs on the work pool) has the same signature.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks import optuna_storage, tracking
from tasks.config import Config, validate_params

log = logging.getLogger("dlops")


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs: the study, the whole config, where trials nest, until when.

    No secret in it (the storage URL comes from the environment): it may travel as a Prefect
    flow run's parameters or a file.
    """

    study: str
    config: dict[str, Any]
    parent_run_id: str
    deadline: float | None = None  # unix time after which no new trial starts
    workdir: str = field(default_factory=lambda: str(Path.cwd()))
    home: str = field(default_factory=lambda: str(_home()))  # DLOPS_HOME: stores, journal

    def cfg(self) -> Config:
        """The validated config."""
        return validate_params(self.config, "tune worker config")


Launcher = Callable[[WorkerSpec, Sequence[int]], list[Any]]


PARENT_ENV = "DLOPS_TUNE_PARENT"  # pid of the stage that started a local worker


def die_with_parent() -> None:
    """A local worker ends when its stage does (Linux: PR_SET_PDEATHSIG), as a killed stage's."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or sys.platform != "linux":
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        return
    if os.getppid() != int(parent):  # the stage died before the line above
        os._exit(1)


def launch_local(spec: WorkerSpec, indexes: Sequence[int]) -> list[subprocess.Popen]:
    """Worker processes on this host (`python -m tasks.tune --worker -`), killed with this one.

    The spec goes through each worker's stdin: no file to clean up.
    """
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
        "DLOPS_HOME": spec.home,
        PARENT_ENV: str(os.getpid()),
        "PYTHONPATH": os.pathsep.join(
            p
            for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH"))
            if p
        ),
    }
    procs = []
    for i in indexes:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasks.tune", "--worker", "-", "--index", str(i)],
            cwd=spec.workdir,
            env=env,
            stdin=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(asdict(spec)))
        proc.stdin.close()
        procs.append(proc)
    return procs


def _home() -> Path:
    from tasks.runtime import home

    return home().resolve()


def check_workers(cfg: Config, storage: optuna_storage.StudyStorage, local: bool) -> None:
    """Refuse several workers on a storage one process only may use; warn above the cores."""
    n = cfg.tune.workers
    if n > 1 and not storage.shared:
        why = (
            "an in-process study"
            if storage.kind == "memory"
            else f"{storage.dialect}: one process only ('database is locked', optuna#820)"
        )
        raise optuna_storage.StorageError(
            f"tune.workers {n}: tune.storage {storage.kind} ({storage.label}) is {why}: use "
            "tune.storage journal (one host) or a PostgreSQL URL in DLOPS_OPTUNA_STORAGE"
        )
    cores = os.cpu_count() or 1
    if local and n > cores:
        log.warning(
            "tune.workers %d is above the %d cores of this host: trials will share cores", n, cores
        )
