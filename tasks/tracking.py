"""MLflow wiring: tracking URI, experiment and runs, always by explicit run id (no fluent state).

The tracking URI comes from `MLFLOW_TRACKING_URI`; unset, it is a SQLite store in the project
checkout (`<DLOPS_HOME>/mlflow.db`, also for runs that execute in a workspace of their own) with
artifacts under `<DLOPS_HOME>/mlartifacts/`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tasks.redact import redact_url

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"
PARENT_TAG = "mlflow.parentRunId"


def tracking_uri() -> str:
    """The tracking URI in force: the environment's, else the embedded SQLite store."""
    from tasks.runtime import home

    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / DEFAULT_DB}"


def client() -> MlflowClient:
    """An `MlflowClient` on the tracking URI in force (registry on the same store)."""
    import mlflow

    uri = tracking_uri()
    # The fluent API (pyfunc.log_model) follows the same store. The registry defaults to the
    # tracking URI; setting it here would pin it through MLFLOW_REGISTRY_URI for the process.
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def experiment_id(name: str) -> str:
    """Get or create the experiment; local stores keep artifacts under `mlartifacts/`."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri().startswith(("sqlite:", "file:")) or "://" not in tracking_uri():
        from tasks.runtime import home

        location = (home() / DEFAULT_ARTIFACT_DIR).resolve().as_uri()
    return c.create_experiment(name, artifact_location=location)


def start_run(
    experiment: str,
    name: str,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Create a run (nested under `parent_run_id` when given) and return its id."""
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = client().create_run(experiment_id(experiment), run_name=name, tags=all_tags)
    return run.info.run_id


def end_run(run_id: str, failed: bool = False) -> None:
    """Mark a run finished (or failed)."""
    client().set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def log_params(run_id: str, params: dict[str, object]) -> None:
    """Log several params in one request."""
    from mlflow.entities import Param

    client().log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])


def run_url(run_id: str) -> str:
    """Where a run is shown: the tracking server's page, or `mlflow ui`'s for a local store."""
    uri = tracking_uri()
    exp = client().get_run(run_id).info.experiment_id
    base = redact_url(uri.rstrip("/")) if uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{exp}/runs/{run_id}"
