"""Optuna workers as Prefect flow runs on the work pool (the team stack's launcher of tune).

The tune stage (tasks/tune.py, no Prefect) runs worker 0 itself and asks a launcher for the
others. Locally that is `python -m tasks.tune --worker` processes; on the team stack, when a
Prefect API is configured (`PREFECT_API_URL`) and the deployment `dlops-tune-worker/worker`
exists on it (`dlops deploy` registers it on the pool), each extra worker is a flow run of that
deployment, placed by the pool's workers. The study's storage must then be PostgreSQL
(`DLOPS_OPTUNA_STORAGE`, in the workers' environment too): a journal file is one host's.
A worker flow run reads the processed data of the stage's workspace (`WorkerSpec.workdir`): the
pool's workers must see that folder (same host, as `make up`'s, or a shared filesystem).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow

TUNE_WORKER_FLOW = "dlops-tune-worker"
TUNE_WORKER = "worker"
TUNE_WORKER_ENTRYPOINT = "flows/tune_worker.py:tune_worker"
POLL_S = 2.0


@flow(name=TUNE_WORKER_FLOW, log_prints=True)
def tune_worker(spec: dict[str, Any], index: int) -> int:
    """Run trials of a started study until its budget is used; the number this worker ran."""
    from tasks import tune
    from tasks.runtime import setup

    s = tune.WorkerSpec(**spec)
    if not Path(s.workdir).is_dir():
        raise FileNotFoundError(
            f"tune worker {index}: {s.workdir} (the stage's workspace) is not on this machine: "
            "run the pool's workers on the same host or a shared filesystem"
        )
    os.chdir(s.workdir)
    setup(s.home)
    n = tune.work(s, index)
    print(f"tune worker {index}: {n} trials of {s.study}")
    return n


class FlowRunHandle:
    """A launched worker flow run: `wait()` until it ends (0: completed), `kill()` cancels it."""

    def __init__(self, flow_run_id: Any) -> None:
        """Keep the flow run's id."""
        self.id = flow_run_id

    def _state(self) -> Any:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return client.read_flow_run(self.id).state

    def wait(self) -> int:
        """Poll the flow run until its state is final; 0 when it completed.

        Called once the stage's own worker found the budget used: a run no pool worker has
        picked up yet would find nothing to do, so it is cancelled instead of awaited.
        """
        while True:
            state = self._state()
            if state is not None and state.is_final():
                return 0 if state.is_completed() else 1
            if state is None or state.is_scheduled():
                self.kill()
                return 0
            time.sleep(POLL_S)

    def kill(self) -> None:
        """Cancel the flow run (its worker process is stopped by the pool's worker)."""
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelling

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(self.id, Cancelling(), force=True)


def launch_flow_runs(spec: Any, indexes: Any) -> list[FlowRunHandle]:
    """Start one flow run of the worker deployment per index (a launcher for tasks.tune.run)."""
    from prefect.deployments import run_deployment

    return [
        FlowRunHandle(
            run_deployment(
                f"{TUNE_WORKER_FLOW}/{TUNE_WORKER}",
                parameters={"spec": asdict(spec), "index": i},
                timeout=0,  # start it, do not wait here
            ).id
        )
        for i in indexes
    ]


def pool_launcher(workers: int) -> Any:
    """`launch_flow_runs` when a Prefect API and the worker deployment exist, else None (local)."""
    if workers <= 1 or not os.environ.get("PREFECT_API_URL"):
        return None
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(f"{TUNE_WORKER_FLOW}/{TUNE_WORKER}")
    except ObjectNotFound:
        return None
    return launch_flow_runs


def deploy_tune_worker(pool: str, repository: str, branch: str | None) -> Any:
    """Register `dlops-tune-worker/worker` on the pool (code cloned like the pipeline's)."""
    from flows.deploy import _from_source

    return _from_source(tune_worker, repository, branch, TUNE_WORKER_ENTRYPOINT).deploy(
        name=TUNE_WORKER,
        work_pool_name=pool,
        build=False,
        push=False,
        print_next_steps=False,
        description="An Optuna worker of a tune stage's study (started by the stage).",
    )
