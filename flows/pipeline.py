"""The dlops pipeline as one Prefect flow; each stage a named task recorded by DVC.

ingest -> suite -> validate -> preprocess -> tune -> train -> evaluate -> register -> promote
(`suite` infers a source's GX suite on its first run only; it is not a DVC stage: the suite is
a committed file the validate stage depends on.)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.dvc_record import Outcome, reproduce
from tasks import tracking
from tasks.config import PARAMS_FILE, Config, write_overrides
from tasks.utils import read_json

ROOT = "."


@dataclass
class StageReport:
    """One stage's outcome and wall time."""

    name: str
    outcome: str
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)


def _dvc_stage(name: str, fn: Any) -> tuple[StageReport, Any]:
    start = time.perf_counter()
    outcome, value = reproduce(ROOT, name, fn)
    report = StageReport(name, outcome.value, round(time.perf_counter() - start, 2))
    get_run_logger().info("stage %s: %s in %.1f s", name, outcome.value, report.seconds)
    return report, value


@task(name="ingest", cache_policy=NO_CACHE)
def ingest(cfg: Config) -> StageReport:
    """Write the built-in data set to data/raw (DVC out)."""
    from tasks import ingest as stage
    from tasks.sources import Manifest

    report, _ = _dvc_stage("ingest", lambda: stage.run(cfg))
    m = Manifest.load(cfg.paths.raw_dir)
    report.detail = {"rows": m.rows, "modality": m.modality, "task": m.task, "source": m.source}
    return report


@task(name="suite", cache_policy=NO_CACHE)
def suite(cfg: Config, parent_run_id: str) -> StageReport:
    """Infer and write `<paths.suites_dir>/<data name>.json` when it is missing; else nothing."""
    from tasks.validate import init_suite

    start = time.perf_counter()
    r = init_suite(cfg, mlflow_run_id=parent_run_id)
    outcome = "ran" if r.created else "skipped"
    seconds = round(time.perf_counter() - start, 2)
    get_run_logger().info("stage suite: %s (%s) in %.1f s", outcome, r.path, seconds)
    detail = {"path": str(r.path), "created": r.created, "expectations": r.n_expectations}
    return StageReport("suite", outcome, seconds, detail)


@task(name="validate", cache_policy=NO_CACHE)
def validate(cfg: Config, parent_run_id: str) -> StageReport:
    """Great Expectations suite on the raw data; a failure stops the flow here."""
    from tasks import validate as stage

    report, _ = _dvc_stage("validate", lambda: stage.run(cfg, mlflow_run_id=parent_run_id))
    result = stage.ValidateResult.load(cfg)
    report.detail = {"success": result.success, "missing_target": result.missing_target}
    if report.outcome != Outcome.RAN.value:
        c = tracking.client()
        c.log_artifact(parent_run_id, str(result.result_path), "validation")
        c.set_tag(parent_run_id, "validation.success", str(result.success).lower())
    return report


@task(name="preprocess", cache_policy=NO_CACHE)
def preprocess(cfg: Config, parent_run_id: str) -> StageReport:
    """Clean, split, check leakage and fit the preprocessing (DVC out)."""
    from tasks import preprocess as stage

    report, _ = _dvc_stage("preprocess", lambda: stage.run(cfg))
    r = stage.PreprocessResult.load(cfg)
    c = tracking.client()
    c.log_artifact(parent_run_id, str(r.processed_dir / stage.SPLIT_FILE), "preprocess")
    c.log_metric(parent_run_id, "data/dropped_missing_target", r.dropped_missing_target)
    report.detail = {
        **r.counts,
        "leakage": r.leakage["fraction"],
        "dropped_missing_target": r.dropped_missing_target,
    }
    return report


@task(name="tune", cache_policy=NO_CACHE)
def tune(cfg: Config, parent_run_id: str) -> StageReport:
    """Optuna study; trials are nested MLflow runs."""
    from tasks import tune as stage

    report, _ = _dvc_stage("tune", lambda: stage.run(cfg, parent_run_id=parent_run_id))
    best = read_json(cfg.paths.best_params)
    report.detail = {k: best[k] for k in ("study", "best_trial", "params", "n_pruned")}
    return report


@task(name="train", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def train(cfg: Config, parent_run_id: str) -> StageReport:
    """Final training with the best parameters; a retry resumes from the last checkpoint."""
    from prefect.runtime import task_run

    from tasks import train as stage

    resume = task_run.run_count > 1
    report, _ = _dvc_stage(
        "train", lambda: stage.run(cfg, parent_run_id=parent_run_id, resume=resume)
    )
    report.detail = read_json(cfg.paths.train_metrics)
    return report


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(cfg: Config) -> StageReport:
    """Test metrics and plots."""
    from tasks import evaluate as stage

    report, _ = _dvc_stage("evaluate", lambda: stage.run(cfg))
    report.detail = read_json(cfg.paths.metrics)
    return report


@task(name="register", cache_policy=NO_CACHE)
def register(cfg: Config, parent_run_id: str, flow_run_id: str | None) -> StageReport:
    """Log the pyfunc and register a version with lineage tags (idempotent)."""
    from tasks import lineage
    from tasks import register as stage

    start = time.perf_counter()
    r = stage.run(cfg, lineage.collect(cfg, flow_run_id), parent_run_id=parent_run_id)
    outcome = "ran" if r.created else "skipped"
    seconds = round(time.perf_counter() - start, 2)
    get_run_logger().info("register: %s version %s (%s)", r.name, r.version, outcome)
    return StageReport("register", outcome, seconds, {"name": r.name, "version": r.version})


@task(name="promote", cache_policy=NO_CACHE)
def promote(cfg: Config, name: str, version: str) -> StageReport:
    """Move @champion to the new version if it clears the bound and is no worse."""
    from tasks import promote as stage

    start = time.perf_counter()
    r = stage.run(cfg, name, version)
    seconds = round(time.perf_counter() - start, 2)
    get_run_logger().info("promote: %s", r.reason)
    return StageReport("promote", "ran", seconds, asdict(r))


@flow(name="dlops-pipeline")
def pipeline(overrides: list[str] | None = None) -> dict[str, Any]:
    """Run every stage; unchanged stages are skipped by DVC, the registry is changed last."""
    from prefect.runtime import flow_run

    start = time.perf_counter()
    cfg = write_overrides(PARAMS_FILE, list(overrides or []))
    flow_run_id = flow_run.get_id()
    parent = tracking.start_run(
        cfg.register_.experiment,
        "pipeline",
        tags={"dlops.stage": "pipeline", "prefect.flow_run_id": str(flow_run_id)},
    )
    reports: list[StageReport] = []
    try:
        reports.append(ingest(cfg))
        reports.append(suite(cfg, parent))
        reports.append(validate(cfg, parent))
        reports.append(preprocess(cfg, parent))
        reports.append(tune(cfg, parent))
        reports.append(train(cfg, parent))
        reports.append(evaluate(cfg))
        from tasks.promote import check_compatible

        check_compatible(cfg, cfg.model_name)  # before anything is registered
        reg = register(cfg, parent, flow_run_id)
        reports.append(reg)
        reports.append(promote(cfg, reg.detail["name"], reg.detail["version"]))
    except BaseException:
        tracking.end_run(parent, failed=True)
        raise
    total = round(time.perf_counter() - start, 2)
    c = tracking.client()
    for r in reports:
        c.log_metric(parent, f"time/{r.name}_s", r.seconds)
        c.set_tag(parent, f"stage.{r.name}", r.outcome)
    c.log_metric(parent, "time/total_s", total)
    tracking.end_run(parent)
    by_name = {r.name: r for r in reports}
    return {
        "parent_run_id": parent,
        "flow_run_id": str(flow_run_id),
        "total_seconds": total,
        "stages": [asdict(r) for r in reports],
        "metrics": by_name["evaluate"].detail,
        "model": by_name["register"].detail,
        "promotion": by_name["promote"].detail,
    }
