"""The dlops pipeline as one Prefect flow; each stage a named task recorded by DVC.

ingest -> suite -> validate -> preprocess -> tune -> train -> evaluate -> register -> promote
(`suite` infers a source's GX suite on its first run only; it is not a DVC stage: the suite is
a committed file the validate stage depends on.)

A run is hermetic (flows.workspace): it executes in the checkout when it has no overrides, in a
workspace of its own when it has some, or in the clone a deployment run was given; params.yaml
of the checkout is never written. One `Recorder` holds the workspace's DVC lock for the whole
run, so two runs never interleave stages in one workspace.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import workspace
from flows.dvc_record import Outcome, Recorder
from tasks import tracking
from tasks.config import PARAMS_FILE, Config, load_config, require_task
from tasks.redact import redact
from tasks.testhook import pause_point
from tasks.utils import read_json

_recorder: contextvars.ContextVar[Recorder] = contextvars.ContextVar("dlops_recorder")


@dataclass
class StageReport:
    """One stage's outcome and wall time."""

    name: str
    outcome: str
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)


def _markdown(key: str, title: str, rows: dict[str, Any]) -> None:
    """A short markdown artifact on the task run (the Prefect UI's view of a stage)."""
    from prefect.artifacts import create_markdown_artifact

    lines = [f"### {title}", "", "| | |", "|---|---|"]
    for name, value in rows.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"| {name} | {redact(text).replace('|', '/')} |")
    create_markdown_artifact(markdown="\n".join(lines), key=key, description=title)


def _dvc_stage(name: str, fn: Any, deterministic: bool = False) -> tuple[StageReport, Any]:
    start = time.perf_counter()
    outcome, value = _recorder.get().reproduce(name, fn, deterministic)
    report = StageReport(name, outcome.value, round(time.perf_counter() - start, 2))
    get_run_logger().info("stage %s: %s in %.1f s", name, outcome.value, report.seconds)
    return report, value


@task(name="ingest", cache_policy=NO_CACHE)
def ingest(cfg: Config) -> StageReport:
    """Copy the data source (or a built-in set) into data/raw (DVC out)."""
    from tasks import ingest as stage
    from tasks.sources import Manifest

    pause_point("ingest")
    # a built-in set is a function of the code and params: no source to look at
    report, _ = _dvc_stage("ingest", lambda: stage.run(cfg), cfg.data.source is None)
    m = Manifest.load(cfg.paths.raw_dir)
    # the data told the task: train.* and promote.* must fit it, before anything is trained
    require_task(cfg, m.task, cfg.data.shown_source or cfg.data.dataset)
    report.detail = {"rows": m.rows, "modality": m.modality, "task": m.task, "source": m.source}
    _markdown("ingest", f"ingest: {report.outcome}", report.detail)
    return report


@task(name="suite", cache_policy=NO_CACHE)
def suite(cfg: Config, parent_run_id: str) -> StageReport:
    """Infer and write `<paths.suites_dir>/<data name>.json` when it is missing; else nothing.

    A deployment run enforces the suite committed to the repository it cloned: inferring one in
    a throwaway clone would accept whatever the data is that day (a renamed column, a lost class)
    and lose the suite with the clone.
    """
    from tasks.validate import DataValidationError, init_suite, suite_path

    pause_point("suite")
    start = time.perf_counter()
    path = suite_path(cfg)
    if _deployment_run() and not path.is_file():
        raise DataValidationError(
            f"validation failed for {cfg.data.name}: no committed suite {path} in the "
            "repository this run cloned: run `dlops suite init`, review the suite and commit it "
            "(deployment runs enforce the committed suite)"
        )
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

    pause_point("validate")
    try:
        report, _ = _dvc_stage("validate", lambda: stage.run(cfg, mlflow_run_id=parent_run_id))
    except stage.DataValidationError as exc:
        _markdown("validation", "validation: failed", {"reason": str(exc)})
        raise
    result = stage.ValidateResult.load(cfg)
    report.detail = {"success": result.success, "missing_target": result.missing_target}
    if report.outcome != Outcome.RAN.value:
        c = tracking.client()
        c.log_artifact(parent_run_id, str(result.result_path), "validation")
        c.set_tag(parent_run_id, "validation.success", str(result.success).lower())
    _markdown(
        "validation",
        f"validation: {'passed' if result.success else 'failed'} ({report.outcome})",
        report.detail,
    )
    return report


@task(name="preprocess", cache_policy=NO_CACHE)
def preprocess(cfg: Config, parent_run_id: str) -> StageReport:
    """Clean, split, check leakage and fit the preprocessing (DVC out)."""
    from tasks import preprocess as stage

    pause_point("preprocess")
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
    _markdown("preprocess", f"preprocess: {report.outcome}", report.detail)
    return report


@task(name="tune", cache_policy=NO_CACHE)
def tune(cfg: Config, parent_run_id: str) -> StageReport:
    """Optuna study; trials are nested MLflow runs."""
    from flows.tune_worker import pool_launcher
    from tasks import tune as stage

    launcher = pool_launcher(cfg.tune.workers)  # None: worker processes on this host
    report, _ = _dvc_stage(
        "tune", lambda: stage.run(cfg, parent_run_id=parent_run_id, launcher=launcher)
    )
    best = read_json(cfg.paths.best_params)
    report.detail = {k: best[k] for k in ("study", "best_trial", "params", "n_pruned")}
    _markdown(
        "best-trial",
        f"tune: best trial {best['best_trial']} ({report.outcome})",
        {"study": best["study"], "val/loss": best.get("value"), **best["params"]},
    )
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
    _markdown("training", f"train: {report.outcome}", report.detail)
    return report


def _model_run(cfg: Config) -> str:
    """The training run that produced the model in `paths.train_dir` (its model.json)."""
    return str(read_json(Path(cfg.paths.train_dir) / "model.json")["mlflow_run_id"])


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(cfg: Config, parent_run_id: str, trained_here: bool) -> StageReport:
    """Test metrics and plots, logged to this run's training run.

    When train did not run in this pipeline run (restored from DVC's run cache, or skipped),
    its training run is an earlier run's: the metrics go to an `evaluate` run nested under this
    parent instead, tagged with the training run that produced the model.
    """
    from tasks import evaluate as stage

    pause_point("evaluate")

    def body() -> Any:
        model_run = _model_run(cfg)
        if trained_here:
            return stage.run(cfg, log_run_id=model_run)
        tags = {"dlops.stage": "evaluate", tracking.MODEL_RUN_TAG: model_run}
        child = tracking.start_run(cfg.register_.experiment, "evaluate", parent_run_id, tags)
        try:
            result = stage.run(cfg, log_run_id=child)
        except BaseException:
            tracking.end_run(child, failed=True)
            raise
        tracking.end_run(child)
        return result

    report, _ = _dvc_stage("evaluate", body)
    report.detail = read_json(cfg.paths.metrics)
    _markdown("test-metrics", f"test metrics ({report.outcome})", report.detail)
    return report


@task(name="register", cache_policy=NO_CACHE)
def register(
    cfg: Config,
    parent_run_id: str,
    flow_run_id: str | None,
    ws: workspace.Workspace,
    trained_here: bool,
) -> StageReport:
    """Log the pyfunc and register a version with lineage tags (idempotent).

    A model this run did not train (train restored or skipped) is logged into a `register` run
    under this parent, never into the earlier run that trained it.
    """
    from tasks import lineage
    from tasks import register as stage

    start = time.perf_counter()
    tags = lineage.collect(cfg, flow_run_id, overrides=list(ws.overrides))
    r = stage.run(cfg, tags, parent_run_id=parent_run_id, trained_here=trained_here)
    outcome = "ran" if r.created else "skipped"
    seconds = round(time.perf_counter() - start, 2)
    get_run_logger().info("register: %s version %s (%s)", r.name, r.version, outcome)
    _markdown("register", f"register: {r.name} v{r.version}", {"new version": r.created})
    return StageReport("register", outcome, seconds, {"name": r.name, "version": r.version})


@task(name="promote", cache_policy=NO_CACHE)
def promote(cfg: Config, name: str, version: str) -> StageReport:
    """Move @champion to the new version if it clears the bound and is no worse."""
    from tasks import promote as stage

    start = time.perf_counter()
    r = stage.run(cfg, name, version)
    seconds = round(time.perf_counter() - start, 2)
    get_run_logger().info("promote: %s", r.reason)
    _markdown(
        "promotion",
        f"promotion: {'promoted' if r.promoted else 'not promoted'}",
        {"reason": r.reason, "champion": r.champion_version, "score": r.new_score},
    )
    return StageReport("promote", "ran", seconds, asdict(r))


def _deployment_run() -> bool:
    from prefect.runtime import deployment

    return deployment.id is not None


def run_workspace(overrides: list[str]) -> workspace.Workspace:
    """Where this run executes: a deployment's own clone, the checkout, or its own workspace."""
    from tasks.runtime import find_project_root

    if _deployment_run():
        return workspace.in_clone(Path.cwd(), overrides)
    return workspace.prepare(find_project_root(), overrides)


def flat_params(cfg: Config) -> dict[str, str]:
    """Every parameter as `section.key` -> text (URLs redacted), for MLflow params."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node and prefix != "tune.space":
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            text = node if isinstance(node, str) else json.dumps(node, sort_keys=True)
            out[prefix] = redact(text)

    walk("", cfg.model_dump(by_alias=True, mode="json"))
    return out


def _link(parent: str, flow_run_id: Any) -> None:
    """Link the Prefect flow run and the MLflow parent run both ways (tags, a link artifact)."""
    from prefect.artifacts import create_link_artifact
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_UI_URL

    c = tracking.client()
    ui = PREFECT_UI_URL.value()
    if ui:
        c.set_tag(parent, "prefect.flow_run_url", f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}")
    create_link_artifact(
        key="mlflow-run",
        link=tracking.run_url(parent),
        link_text=f"MLflow run {parent}",
        description="the MLflow parent run of this flow run",
    )
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        client.update_flow_run(flow_run_id, tags=[*run.tags, f"mlflow-run:{parent}"])


def _open_parent(cfg: Config, ws: workspace.Workspace, flow_run_id: Any, token: str) -> str:
    tags = {
        "dlops.stage": "pipeline",
        tracking.TOKEN_TAG: token,
        "prefect.flow_run_id": str(flow_run_id),
        "dlops.overrides": redact(json.dumps(list(ws.overrides))),
        "dlops.workspace": str(ws.root),
    }
    parent = tracking.start_run(cfg.register_.experiment, "pipeline", tags=tags)
    tracking.log_params(parent, flat_params(cfg))
    if flow_run_id is not None:
        _link(parent, flow_run_id)
    return parent


def _crash_flow_run(flow_run_id: str, message: str) -> bool:
    """Set a killed run's Prefect flow run Crashed (it stays Running forever otherwise)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(flow_run_id)
        except ObjectNotFound:  # recorded by another Prefect server (or its database is gone)
            return False
        if run.state is None or run.state.is_final():
            return False
        client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
    return True


def _close_orphans(ws: workspace.Workspace, token: str, parent: str) -> list[str]:
    """Close what runs killed in this workspace left open (MLflow runs, Prefect flow runs)."""
    closed: list[str] = []
    for dead in tracking.close_orphans(ws.root, token, by=parent):
        closed += dead["closed"]
        flow_run_id = dead.get("flow_run_id")
        message = (
            f"dlops: process {dead.get('pid')} on {dead.get('host')} was killed; its MLflow runs "
            f"{', '.join(dead['closed']) or '(none open)'} marked FAILED by run {parent}"
        )
        crashed = bool(flow_run_id and flow_run_id != "None") and _crash_flow_run(
            str(flow_run_id), message
        )
        get_run_logger().warning(
            "a killed run (process %s) left this workspace: %d MLflow run(s) marked FAILED%s",
            dead.get("pid"),
            len(dead["closed"]),
            f", flow run {flow_run_id} marked Crashed" if crashed else "",
        )
    if closed:
        tracking.client().set_tag(parent, "dlops.closed_orphans", ",".join(closed))
    return closed


@flow(name="dlops-pipeline")
def pipeline(overrides: list[str] | None = None) -> dict[str, Any]:
    """Run every stage; unchanged stages are skipped by DVC, the registry is changed last."""
    from prefect.runtime import flow_run

    start = time.perf_counter()
    ws = run_workspace(list(overrides or []))
    flow_run_id = flow_run.get_id()
    with workspace.entered(ws):
        with contextlib.ExitStack() as stack:
            recorder = stack.enter_context(Recorder(ws.root))
            token = _recorder.set(recorder)
            stack.callback(_recorder.reset, token)
            workspace.refresh(ws)
            cfg = load_config(PARAMS_FILE)  # the workspace's params.yaml: checkout + overrides
            # the marker before the parent run: a kill in between leaves nothing unaccounted
            token = uuid.uuid4().hex
            tracking.write_marker(
                ws.root,
                token,
                experiment=cfg.register_.experiment,
                flow_run_id=str(flow_run_id),
                workspace=str(ws.root),
            )
            parent = _open_parent(cfg, ws, flow_run_id, token)
            reports: list[StageReport] = []
            try:
                _close_orphans(ws, token, parent)
                reports.append(ingest(cfg))
                reports.append(suite(cfg, parent))
                reports.append(validate(cfg, parent))
                reports.append(preprocess(cfg, parent))
                reports.append(tune(cfg, parent))
                reports.append(train(cfg, parent))
                # restored from DVC's run cache or skipped, the model is an earlier run's: this
                # run links it (a tag) and never writes into that run
                trained_here = reports[-1].outcome == Outcome.RAN.value
                tracking.client().set_tag(parent, tracking.MODEL_RUN_TAG, _model_run(cfg))
                reports.append(evaluate(cfg, parent, trained_here))
                from tasks.promote import check_compatible

                check_compatible(cfg, cfg.model_name)  # before anything is registered
                reg = register(cfg, parent, flow_run_id, ws, trained_here)
                reports.append(reg)
                reports.append(promote(cfg, reg.detail["name"], reg.detail["version"]))
            except BaseException:
                tracking.end_run(parent, failed=True)
                tracking.remove_marker(ws.root, token)
                raise
            finally:
                suites = workspace.copy_back_new(ws, cfg.paths.suites_dir)
            # past this the lock is released, the parent still open: a next run judges by pid
            tracking.write_marker(ws.root, token, phase=tracking.FINISHING)
        try:
            # the run's DVC lock is released: DVC's experiment executor (and push) take it
            experiment = workspace.save_experiment(ws, cfg, suites)
            pushed = workspace.push_outputs(ws) if _deployment_run() else None
            total = round(time.perf_counter() - start, 2)
            c = tracking.client()
            for r in reports:
                c.log_metric(parent, f"time/{r.name}_s", r.seconds)
                c.set_tag(parent, f"stage.{r.name}", r.outcome)
            c.log_metric(parent, "time/total_s", total)
            if experiment:
                c.set_tag(parent, "dvc.experiment", experiment)
            if pushed is not None:
                c.set_tag(parent, "dvc.pushed", str(pushed))
        except BaseException:
            tracking.end_run(parent, failed=True)
            tracking.remove_marker(ws.root, token)
            raise
        tracking.end_run(parent)
        tracking.remove_marker(ws.root, token)
    by_name = {r.name: r for r in reports}
    return {
        "parent_run_id": parent,
        "flow_run_id": str(flow_run_id),
        "total_seconds": total,
        "workspace": str(ws.root),
        "overrides": list(ws.overrides),
        "experiment": experiment,
        "new_suites": [str(p) for p in suites],
        "stages": [asdict(r) for r in reports],
        "metrics": by_name["evaluate"].detail,
        "model": by_name["register"].detail,
        "promotion": by_name["promote"].detail,
    }
