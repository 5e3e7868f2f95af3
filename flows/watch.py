"""The data watch: start the pipeline's deployment only when `data.source` changed.

A scheduled, cheap flow: it computes the content hash of the configured source exactly as
ingest does (the same copy and the same hash, so it equals the manifest's `sha256` and the
registered versions' `data.sha256` tag) and compares it with the last hash it acted on, kept in
a Prefect Variable on the server (shared by every worker). Unchanged: nothing starts. Changed:
it starts the pipeline deployment with the same overrides and records the hash, so a refreshed
source is trained on once (a corrupted refresh fails its run once, and is not retried until the
data changes again).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows import workspace
from tasks.config import PARAMS_FILE, Config, load_config
from tasks.redact import redact

WATCH_TAG = "dlops-watch"


def variable_name(cfg: Config) -> str:
    """The Prefect Variable holding the last hash acted on (lowercase, dashes)."""
    return "dlops-watch-" + re.sub(r"[^a-z0-9_-]+", "-", cfg.model_name.lower()).strip("-")


def source_hash(cfg: Config) -> str:
    """The content hash ingest would record for the configured source (or built-in)."""
    from tasks import ingest

    with tempfile.TemporaryDirectory(prefix="dlops-watch-") as scratch:
        dest = Path(scratch)
        if cfg.data.source:
            file = ingest.fetch(cfg.data.source, dest, cfg.modality)
        else:
            file = ingest.write_builtin(cfg.data.dataset, cfg.modality, dest)
        return ingest.content_hash(dest / file)


def champion_hash(cfg: Config) -> str | None:
    """The data hash the current champion was trained on, if there is one."""
    from mlflow.exceptions import MlflowException

    from tasks import tracking

    try:
        mv = tracking.client().get_model_version_by_alias(cfg.model_name, "champion")
    except MlflowException:
        return None
    return mv.tags.get("data.sha256")


@flow(name="dlops-watch")
def watch_data(
    overrides: list[str] | None = None, deployment: str = "dlops-pipeline/nightly"
) -> dict[str, Any]:
    """Start `deployment` when the source's content hash differs from the last one acted on."""
    from prefect.deployments import run_deployment
    from prefect.variables import Variable

    log = get_run_logger()
    root = Path.cwd()
    ws = workspace.in_clone(root, list(overrides or [])) if _in_deployment() else None
    cfg = load_config(PARAMS_FILE) if ws else load_config(PARAMS_FILE, list(overrides or []))
    name = variable_name(cfg)
    now = source_hash(cfg)
    last = Variable.get(name, default=None) or champion_hash(cfg)
    where = redact(cfg.data.source or f"builtin:{cfg.data.dataset}")
    if now == last:
        log.info("data unchanged (%s, sha256 %s): nothing to do", where, now[:12])
        return {"changed": False, "sha256": now, "flow_run_id": None}
    log.info(
        "data changed (%s, sha256 %s, was %s): starting %s",
        where,
        now[:12],
        (last or "none")[:12],
        deployment,
    )
    from prefect.runtime import flow_run

    run = run_deployment(
        deployment,
        parameters={"overrides": list(overrides or [])},
        timeout=0,
        as_subflow=False,
        tags=[WATCH_TAG, f"{WATCH_TAG}:{flow_run.get_id()}"],  # who started it, for the UI
    )
    Variable.set(name, now, overwrite=True)
    return {"changed": True, "sha256": now, "flow_run_id": str(run.id)}


def _in_deployment() -> bool:
    from prefect.runtime import deployment

    return deployment.id is not None
