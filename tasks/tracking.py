"""MLflow wiring: tracking URI, experiment and runs, always by explicit run id (no fluent state).

The tracking URI comes from `MLFLOW_TRACKING_URI`; unset, it is a SQLite store in the project
checkout (`<DLOPS_HOME>/mlflow.db`, also for runs that execute in a workspace of their own) with
artifacts under `<DLOPS_HOME>/mlartifacts/`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.redact import redact_url

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"
PARENT_TAG = "mlflow.parentRunId"
# the training run that produced a model (on runs that use a model they did not train: a stage
# restored from DVC's run cache or skipped carries model.json of an earlier run, never written to)
MODEL_RUN_TAG = "dlops.model_run_id"


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


@contextlib.contextmanager
def ending(run_id: str, own: bool = True) -> Iterator[None]:
    """End `run_id` when the block ends, if this code opened it (`own`): FAILED on an error."""
    try:
        yield
    except BaseException:
        if own:
            end_run(run_id, failed=True)
        raise
    if own:
        end_run(run_id)


@contextlib.contextmanager
def trial_run(run_id: str, trial: Any, tags: dict[str, str] | None = None) -> Iterator[None]:
    """Close an Optuna trial's MLflow run: its state as `optuna.state`, FAILED on an error.

    COMPLETE, PRUNED (optuna.TrialPruned, re-raised) or FAILED (anything else, re-raised).
    """
    import optuna

    state = "COMPLETE"
    try:
        yield
    except optuna.TrialPruned:
        state = "PRUNED"
        raise
    except BaseException:
        state = "FAILED"
        raise
    finally:
        c = client()
        closing = {"optuna.trial": str(trial.number), "optuna.state": state, **(tags or {})}
        for key, value in closing.items():
            c.set_tag(run_id, key, value)
        end_run(run_id, failed=state == "FAILED")


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


# --- Orphan runs -------------------------------------------------------------------------------
# A pipeline killed with SIGKILL (the OOM killer, a lost node) never closes its MLflow runs. Each
# pipeline run writes a marker file of its own in its workspace (under the workspace's DVC lock,
# before it opens its parent run) and removes it once its parent run is closed. The next run,
# holding that lock, reads the markers left there: a marker in phase "running" belongs to a dead
# process (the lock is released only when its holder exits or has left that phase), one in phase
# "finishing" (the lock released, the parent not yet closed) to a dead process only when its pid
# no longer exists on this host. The runs a dead process opened (its parent, found by the
# marker's token tag, and every descendant still RUNNING) are marked FAILED with a tag saying why.
# Runs of a live process are never touched.
MARKER_DIR = ".dvc/tmp/dlops-runs"  # ignored by git (DVC's tmp folder)
TOKEN_TAG = "dlops.run_token"
ORPHAN_TAG = "dlops.orphaned"
RUNNING, FINISHING = "running", "finishing"


def _marker_path(root: str | os.PathLike[str], token: str) -> Path:
    return Path(root) / MARKER_DIR / f"{token}.json"


def write_marker(root: str | os.PathLike[str], token: str, **fields: object) -> dict[str, object]:
    """Write (or update) this run's marker atomically; returns what it holds."""
    import json
    import socket
    import time

    path = _marker_path(root, token)
    current = _read(path) or {
        "token": token,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "phase": RUNNING,
    }
    current.update(fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return current


def _read(path: Path) -> dict[str, object] | None:
    import json

    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:  # markers are written whole (rename): not one of ours
        return None
    return value if isinstance(value, dict) else None


def markers(root: str | os.PathLike[str]) -> list[dict[str, object]]:
    """Every run marker in a workspace (runs in progress, or killed)."""
    folder = Path(root) / MARKER_DIR
    found = [_read(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return [m for m in found if m and m.get("token")]


def remove_marker(root: str | os.PathLike[str], token: str) -> None:
    """The run's parent run is closed (finished or failed): it leaves no marker."""
    _marker_path(root, token).unlink(missing_ok=True)


def _alive(marker: dict[str, object]) -> bool:
    """True unless the marker's process is known to be gone (its pid, on this host)."""
    import socket

    if marker.get("host") != socket.gethostname():
        return True  # another machine's process: not ours to judge
    try:
        os.kill(int(str(marker.get("pid"))), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def _descendants(c: MlflowClient, experiment_ids: list[str], run_ids: list[str]) -> list:
    """The runs `run_ids` and every run nested under them (any depth)."""
    found, queue, seen = [], list(run_ids), set()
    while queue:
        run_id = queue.pop()
        if run_id in seen:
            continue
        seen.add(run_id)
        found.append(c.get_run(run_id))
        children = c.search_runs(
            experiment_ids, filter_string=f"tags.`{PARENT_TAG}` = '{run_id}'", max_results=5000
        )
        queue += [r.info.run_id for r in children]
    return found


def close_orphans(
    root: str | os.PathLike[str], own_token: str, by: str | None = None
) -> list[dict[str, object]]:
    """Mark FAILED the runs killed pipelines left RUNNING in this workspace.

    Call with the workspace's DVC lock held (the Recorder). `by` names the run that found them
    (recorded in the tag). Returns the dead runs' markers, each with `closed`: the run ids marked
    FAILED; their marker files are removed.
    """
    dead = []
    for marker in markers(root):
        token = str(marker["token"])
        if token == own_token or (marker.get("phase") == FINISHING and _alive(marker)):
            continue
        c = client()
        exp = c.get_experiment_by_name(str(marker.get("experiment", "")))
        closed: list[str] = []
        if exp is not None:
            parents = c.search_runs(
                [exp.experiment_id], filter_string=f"tags.`{TOKEN_TAG}` = '{token}'"
            )
            reason = (
                f"pipeline process {marker.get('pid')} on {marker.get('host')} (started "
                f"{marker.get('started')}) ended without closing this run: killed"
                + (f"; marked FAILED by run {by}" if by else "")
            )
            ids = [r.info.run_id for r in parents]
            for run in _descendants(c, [exp.experiment_id], ids):
                if run.info.status in ("RUNNING", "SCHEDULED"):
                    c.set_tag(run.info.run_id, ORPHAN_TAG, reason)
                    c.set_terminated(run.info.run_id, status="FAILED")
                    closed.append(run.info.run_id)
        remove_marker(root, token)
        dead.append({**marker, "closed": closed})
    return dead
