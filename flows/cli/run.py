"""`dlops run` (the whole pipeline) and `dlops train` (the train stage alone)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _summary(result: dict[str, Any]) -> str:
    from tasks.redact import redact
    from tasks.tracking import tracking_uri

    m, model, promo = result["metrics"], result["model"], result["promotion"]
    lines = ["", f"dlops run finished in {result['total_seconds']:.1f} s", "stages:"]
    for s in result["stages"]:
        lines.append(f"  {s['name']:<11} {s['outcome']:<9} {s['seconds']:7.2f} s")
    details = {s["name"]: s["detail"] for s in result["stages"]}
    data = details["ingest"]
    dropped = details.get("preprocess", {}).get("dropped_missing_target", 0)
    no_target = f"; {dropped} without a target dropped" if dropped else ""
    lines.append(
        f"data: {data.get('source')} ({data.get('modality')}, {data.get('task')}, "
        f"{data.get('rows')} rows{no_target})"
    )
    if details.get("suite", {}).get("created"):
        lines.append(f"suite: inferred {details['suite']['path']}: review it and commit it")
    lines.append(
        "test metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k != "n_test")
    )
    lines.append(f"registered model: {model['name']} version {model['version']}")
    verdict = "is the champion" if promo["promoted"] else "did not become the champion"
    lines.append(f"version {model['version']} {verdict}: {promo['reason']}")
    lines.append(f"champion now: {model['name']}@champion = version {promo['champion_version']}")
    uri = redact(tracking_uri())
    lines.append("look at it:")
    lines.append(
        f"  mlflow ui --backend-store-uri {uri} --host 127.0.0.1   (runs, plots, registry)"
    )
    prefect = result.get("prefect")
    if prefect:
        ui = redact(prefect["url"]).removesuffix("/api")
        local = prefect["server"] != "configured"
        note = "flow runs; dlops' local server: dlops server stop" if local else "flow runs"
        lines.append(f"  {ui}   ({note})")
    if result.get("experiment"):
        name = result["experiment"]
        lines.append(f"  ran in its own workspace {result['workspace']} (params.yaml untouched)")
        lines.append(
            f"  dvc exp show (experiment {name})  |  dvc exp apply {name} (into the checkout)"
        )
    else:
        lines.append(
            "  dvc metrics show  |  dvc plots show  |  dvc repro (re-checks the source only)"
        )
    return "\n".join(lines)


def data_overrides(data: str | None) -> list[str]:
    """`--data PATH`: the source, with modality and task inferred again (absolute local paths).

    A URL with credentials or a query string (presigned) is put in this run's environment as
    `DLOPS_DATA_URL` and recorded as `env:DLOPS_DATA_URL`: the secret never reaches params.yaml,
    dvc.lock or MLflow.
    """
    import os

    from tasks.config import DATA_URL_ENV, ENV_PREFIX
    from tasks.redact import has_secrets

    if not data:
        return []
    if has_secrets(data):
        os.environ[DATA_URL_ENV] = data
        source = f"{ENV_PREFIX}{DATA_URL_ENV}"
    else:
        source = data if "://" in data else str(Path(data).expanduser().resolve())
    return [f"data.source={source}", "data.modality=auto", "data.task=auto"]


def _fail(exc: BaseException, code: int) -> int:
    from tasks.redact import redact

    print(f"dlops: {redact(' '.join(str(exc).split()))}", file=sys.stderr)
    return code


def _preflight(overrides: list[str]) -> Any:
    """Config and source checks that need no server: a bad run fails here in well under 2 s."""
    from tasks.config import load_config
    from tasks.sources import DataError

    cfg = load_config(overrides=overrides)
    from tasks.config import ENV_PREFIX

    source = cfg.data.source
    local = source and ("://" not in source or source.startswith("file://"))
    if local and not source.startswith(ENV_PREFIX):
        # the checks ingest's fetch makes first, with its messages
        path = Path(source.removeprefix("file://"))
        if not path.exists():
            raise DataError(f"{source}: file not found")
        if cfg.modality == "images" and not path.is_dir():
            raise DataError(f"{source}: images need a folder root/<class>/<image>, got a file")
        if cfg.modality != "images" and path.is_dir():
            raise DataError(f"{source}: expected a file for {cfg.modality}, got a folder")
    return cfg


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or a busy workspace: one line, no traceback."""
    from flows.dvc_record import RunLockedError
    from flows.workspace import WorkspaceError
    from tasks.config import ConfigError
    from tasks.sources import DataError
    from tasks.upstream import StaleUpstreamError
    from tasks.validate import DataValidationError

    return (
        ConfigError,
        DataError,
        DataValidationError,
        RunLockedError,
        StaleUpstreamError,
        WorkspaceError,
    )


def _warm_ups() -> list[Any]:
    """What a first run needs anyway, done while the Prefect server it started boots."""

    def mlflow_store() -> None:  # import MLflow and open (a new one: migrate) its store
        from tasks import tracking

        tracking.client().search_experiments(max_results=1)

    def lightning() -> None:
        import lightning  # noqa: F401

    def great_expectations() -> None:
        import great_expectations  # noqa: F401

    return [mlflow_store, lightning, great_expectations]


def cmd_run(args: argparse.Namespace) -> int:
    """Run the whole pipeline as a Prefect flow (hermetic: params.yaml is never written)."""
    from tasks.config import ConfigError
    from tasks.sources import DataError

    overrides = data_overrides(args.data) + args.set
    try:
        _preflight(overrides)  # fail fast, before Prefect starts
    except ConfigError as exc:
        return _fail(exc, 2)
    except DataError as exc:
        return _fail(exc, 1)
    from flows import server

    try:  # before Prefect is imported: it reads PREFECT_API_URL once
        conn = server.use()
    except (OSError, server.ServerError) as exc:
        return _fail(exc, 1)
    from flows.cli.console import quiet_console

    quiet_console(_expected_errors())
    from flows.pipeline import pipeline  # imports Prefect while a started server boots

    try:
        server.ready(conn, meanwhile=_warm_ups())
        result = pipeline(overrides=overrides)
    except server.ServerError as exc:
        return _fail(exc, 1)
    except _expected_errors() as exc:
        return _fail(exc, 1)
    result["prefect"] = {"url": conn.url, "server": conn.origin}
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(_summary(result))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Run the train stage alone (recorded by DVC), optionally resuming a killed training.

    With `-S` overrides it runs in the workspace of those overrides (the one `dlops run` with
    the same overrides used), so `dlops run -S x=1` killed during training resumes with
    `dlops train --resume -S x=1`.
    """
    from flows import workspace
    from flows.dvc_record import Recorder
    from tasks import train, upstream
    from tasks.config import PARAMS_FILE, ConfigError, load_config
    from tasks.runtime import home

    try:
        ws = workspace.prepare(home(), args.set)
    except ConfigError as exc:
        return _fail(exc, 2)
    try:
        with workspace.entered(ws), Recorder(ws.root) as recorder:
            workspace.refresh(ws)
            cfg = load_config(PARAMS_FILE)
            upstream.check("train", repo=recorder.repo)
            outcome, result = recorder.reproduce(
                "train", lambda: train.run(cfg, resume=args.resume)
            )
    except _expected_errors() as exc:
        return _fail(exc, 1)
    if result is None:
        print(f"train: {outcome.value} (nothing changed since the last training)")
        return 0
    resumed = (
        f"resumed from epoch {result.resumed_from_epoch}; "
        if result.resumed_from_epoch is not None
        else ""
    )
    print(
        f"train: {resumed}best {result.metric_name} {result.best_val_metric:.4f}, val/loss "
        f"{result.best_val_loss:.4f} at epoch {result.best_epoch} of {result.epochs}; "
        f"MLflow run {result.run_id}"
    )
    return 0


def _set_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=help_text,
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add `run` and `train`."""
    run = sub.add_parser("run", help="run the whole pipeline (Prefect flow, DVC-recorded stages)")
    _set_option(
        run,
        "override a parameter for this run only (validated; the run executes in a workspace of "
        "its own and is saved as a DVC experiment; params.yaml is not written)",
    )
    run.add_argument(
        "--data",
        metavar="PATH",
        help="your data: a CSV/Parquet file, an image folder root/<class>/<image>, an .npz, "
        "or an fsspec URI (sets data.source; modality and task are inferred)",
    )
    run.add_argument("--json", action="store_true", help="print the run summary as JSON")
    run.set_defaults(func=cmd_run)
    tr = sub.add_parser("train", help="run the train stage alone (after `dlops run` or dvc repro)")
    tr.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed training from its last checkpoint (same params and data)",
    )
    _set_option(tr, "override a parameter")
    tr.set_defaults(func=cmd_train)
