"""Deployments of the pipeline on a Prefect work pool: nightly retraining and a data watch.

Both deployments pull the code with Prefect's `git_clone` step (the repository `DLOPS_REPO`,
default: this checkout), so every flow run executes in a fresh clone of its own inside the
worker's per-run temporary folder: two runs at once never share a working copy or a DVC lock,
and a run's `overrides` parameter changes its clone only. Results go to the shared stores named
by the environment (the MLflow server, the DVC remote); `make up` provides both.

- `dlops-pipeline/nightly`: the whole pipeline on a cron schedule (default 03:00 UTC);
- `dlops-watch/data-changed`: a cheap scheduled check (default every 15 minutes) of the content
  hash of `data.source` that starts the nightly deployment only when the data changed.
The names, the pool and the schedules are declared here once; prefect.yaml declares the same
deployments for `prefect deploy --all` (a test keeps the two in step).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POOL = "dlops"
PIPELINE_FLOW = "dlops-pipeline"
WATCH_FLOW = "dlops-watch"
NIGHTLY = "nightly"
DATA_CHANGED = "data-changed"
NIGHTLY_CRON = "0 3 * * *"
WATCH_CRON = "*/15 * * * *"
PIPELINE_ENTRYPOINT = "flows/pipeline.py:pipeline"
WATCH_ENTRYPOINT = "flows/watch.py:watch_data"
TIMEZONE = "UTC"


@dataclass(frozen=True)
class Deployed:
    """The ids of the registered deployments."""

    nightly: Any
    data_changed: Any
    repository: str
    branch: str | None


def ensure_process_pool(pool: str) -> None:
    """Create the process work pool unless the server has it; one of another type is an error."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        except ObjectAlreadyExists as exc:  # created before: it must be a process pool
            existing = client.read_work_pool(pool)
            if existing.type != "process":
                raise ValueError(
                    f"work pool {pool!r} exists with type {existing.type!r}, not 'process': "
                    "choose another --pool"
                ) from exc


def default_repository(root: str | Path = ".") -> str:
    """`DLOPS_REPO`, else the git top level of `root` (workers clone it)."""
    if os.environ.get("DLOPS_REPO"):
        return os.environ["DLOPS_REPO"]
    out = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"{Path(root).resolve()}: not a git repository; deployments clone the project's "
            "repository: set DLOPS_REPO or commit the project to git"
        )
    return out.stdout.strip()


def current_branch(repository: str) -> str | None:
    """The branch checked out in a local repository (None: detached, or a remote URL)."""
    if not Path(repository).is_dir():
        return None
    out = subprocess.run(
        ["git", "symbolic-ref", "--short", "-q", "HEAD"],
        cwd=repository,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or None


def _from_source(flow: Any, repository: str, branch: str | None, entrypoint: str) -> Any:
    from prefect.runner.storage import GitRepository

    storage = GitRepository(url=repository, branch=branch, pull_interval=None)
    return flow.from_source(source=storage, entrypoint=entrypoint)


def deploy(
    root: str | Path = ".",
    pool: str = POOL,
    nightly_cron: str | None = NIGHTLY_CRON,
    watch_cron: str | None = WATCH_CRON,
    overrides: list[str] | None = None,
    repository: str | None = None,
    branch: str | None = None,
) -> Deployed:
    """Register the nightly and the data-triggered deployments; returns their ids.

    `overrides` become the deployments' default `overrides` parameter (a run's own, applied to
    its clone only); a run started by hand can pass others.
    """
    from flows.pipeline import pipeline
    from flows.watch import watch_data

    repository = repository or default_repository(root)
    branch = branch or current_branch(repository)
    ensure_process_pool(pool)
    params = {"overrides": list(overrides or [])}
    common = {"work_pool_name": pool, "build": False, "push": False, "print_next_steps": False}
    nightly = _from_source(pipeline, repository, branch, PIPELINE_ENTRYPOINT).deploy(
        name=NIGHTLY,
        cron=nightly_cron,
        parameters=params,
        description="The whole dlops pipeline on a schedule; DVC skips unchanged stages.",
        **common,
    )
    watch = _from_source(watch_data, repository, branch, WATCH_ENTRYPOINT).deploy(
        name=DATA_CHANGED,
        cron=watch_cron,
        parameters={**params, "deployment": f"{PIPELINE_FLOW}/{NIGHTLY}"},
        description="Starts the pipeline when the content hash of data.source changed.",
        **common,
    )
    return Deployed(nightly, watch, repository, branch)
