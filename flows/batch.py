"""Batch inference and drift monitoring as Prefect flows (schedulable like the pipeline).

`dlops-predict` scores a file or an image folder with a registered model (the champion by
default) and writes the predictions atomically; `dlops-drift` compares new table rows (a file,
or the server's served-input sample) with the training split and ends **Failed** when the share
of drifted columns reaches `max_share`, so that a deployment (or an automation on the failed
state) can start a retraining. Both call the same `serving/` code as `dlops predict` and
`dlops drift`; the flow only composes, and a markdown artifact summarises each run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

PREDICT_FLOW = "dlops-predict"
DRIFT_FLOW = "dlops-drift"


class DriftDetected(RuntimeError):
    """The share of drifted columns reached the threshold (the flow run ends Failed)."""


def _model(model: str | None) -> tuple[str, str]:
    from flows.cli.serve import model_ref
    from tasks.config import load_config

    return model_ref(model, load_config().model_name)


@task(name="predict", cache_policy=NO_CACHE)
def score(model: str | None, input_path: str, output_path: str, on_error: str) -> dict[str, Any]:
    """Score every row of `input_path`; the predictions file appears whole or not at all."""
    from serving.batch import predict_file
    from serving.settings import tracking_uri

    name, alias = _model(model)
    r = predict_file(tracking_uri(), name, alias, input_path, output_path, on_error=on_error)
    return {
        "model": f"{name}@{alias}",
        "version": r.version,
        "rows": r.rows,
        "skipped": r.skipped,
        "output": str(r.output),
        "rows/s": round(r.rows / max(r.seconds, 1e-9)),
    }


@task(name="drift", cache_policy=NO_CACHE)
def measure(
    model: str | None, input_path: str, reference: str | None, out_dir: str, max_share: float
) -> dict[str, Any]:
    """Evidently's drift of `input_path` vs the training split, logged to MLflow."""
    from serving import drift
    from serving.settings import tracking_uri
    from tasks import tracking
    from tasks.config import load_config

    name, alias = _model(model)
    tracking.experiment_id(drift.EXPERIMENT)
    ref = reference or str(Path(load_config().paths.processed_dir) / "train.parquet")
    r = drift.run(tracking_uri(), name, alias, ref, input_path, out_dir, max_share=max_share)
    return {
        "model": f"{name}@{alias}",
        "version": r.version,
        "share": round(r.share, 4),
        "drifted": r.drifted,
        "columns drifted": sum(bool(c["drifted"]) for c in r.columns.values()),
        "report": str(r.html),
        "mlflow run": r.run_id,
    }


def _markdown(key: str, title: str, rows: dict[str, Any]) -> None:
    lines = [f"### {title}", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    create_markdown_artifact(key=key, markdown="\n".join(lines), description=title)


@flow(name=PREDICT_FLOW, log_prints=True)
def predict_flow(
    input_path: str, output_path: str, model: str | None = None, on_error: str = "fail"
) -> dict[str, Any]:
    """Batch inference with a registered model (`NAME@ALIAS`, default the champion)."""
    from tasks.runtime import setup

    setup()
    result = score(model, input_path, output_path, on_error)
    get_run_logger().info("predict: %s", result)
    _markdown("predict", f"predict: {result['rows']} rows -> {result['output']}", result)
    return result


@flow(name=DRIFT_FLOW, log_prints=True)
def drift_flow(
    input_path: str,
    model: str | None = None,
    reference: str | None = None,
    out_dir: str = "reports/drift",
    max_share: float = 0.5,
) -> dict[str, Any]:
    """Drift of new rows against the training split; Failed at `max_share` drifted columns."""
    from tasks.runtime import setup

    setup()
    result = measure(model, input_path, reference, out_dir, max_share)
    verdict = "drifted" if result["drifted"] else "no drift"
    _markdown("drift", f"drift: {verdict} ({result['share']:.0%} of columns)", result)
    if result["drifted"]:
        raise DriftDetected(
            f"drift: {result['share']:.0%} of the input columns drifted (at most "
            f"{max_share:.0%}); report {result['report']}"
        )
    return result
