"""The `dlops` command line. Heavy libraries are imported only inside commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

# Nothing leaves the machine: every library's telemetry is off, every server on loopback.
LOCAL_ENV = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_API_HOST": "127.0.0.1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "true",
    "LITLOGGER_DISABLE": "1",
}


def configure_environment() -> None:
    """Set the local, telemetry-free defaults without overriding what the user set."""
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` holding both params.yaml and dvc.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file() and (folder / "dvc.yaml").is_file():
            return folder
    raise FileNotFoundError(f"no params.yaml and dvc.yaml in {here} or any folder above it")


def _summary(result: dict[str, Any]) -> str:
    from tasks.tracking import tracking_uri

    m, model, promo = result["metrics"], result["model"], result["promotion"]
    lines = ["", f"dlops run finished in {result['total_seconds']:.1f} s", "stages:"]
    for s in result["stages"]:
        lines.append(f"  {s['name']:<11} {s['outcome']:<9} {s['seconds']:7.2f} s")
    data = result["stages"][0]["detail"]
    lines.append(
        f"data: {data.get('source')} ({data.get('modality')}, {data.get('task')}, "
        f"{data.get('rows')} rows)"
    )
    lines.append(
        "test metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k != "n_test")
    )
    lines.append(f"registered model: {model['name']} version {model['version']}")
    verdict = "is the champion" if promo["promoted"] else "did not become the champion"
    lines.append(f"version {model['version']} {verdict}: {promo['reason']}")
    lines.append(f"champion now: {model['name']}@champion = version {promo['champion_version']}")
    uri = tracking_uri()
    lines += [
        "look at it:",
        f"  mlflow ui --backend-store-uri {uri} --host 127.0.0.1   (runs, plots, registry)",
        "  dvc metrics show  |  dvc plots show  |  dvc repro (re-checks the source only)",
    ]
    return "\n".join(lines)


def data_overrides(data: str | None) -> list[str]:
    """`--data PATH`: the source, with modality and task inferred again (absolute local paths)."""
    if not data:
        return []
    source = data if "://" in data else str(Path(data).expanduser().resolve())
    return [f"data.source={source}", "data.modality=auto", "data.task=auto"]


def cmd_run(args: argparse.Namespace) -> int:
    """Run the whole pipeline as a Prefect flow."""
    from tasks.config import ConfigError, load_config

    overrides = data_overrides(args.data) + args.set
    try:
        load_config(overrides=overrides)  # fail fast, before Prefect starts
    except ConfigError as exc:
        print(f"dlops: {exc}", file=sys.stderr)
        return 2
    from flows.pipeline import pipeline
    from tasks.sources import DataError
    from tasks.validate import DataValidationError

    try:
        result = pipeline(overrides=overrides)
    except (DataValidationError, DataError, ConfigError) as exc:
        print(f"dlops: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(_summary(result))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Run the train stage alone (recorded by DVC), optionally resuming a killed training."""
    from tasks.config import ConfigError, write_overrides

    try:
        cfg = write_overrides("params.yaml", args.set)
    except ConfigError as exc:
        print(f"dlops: {exc}", file=sys.stderr)
        return 2
    from flows.dvc_record import reproduce
    from tasks import train

    outcome, result = reproduce(".", "train", lambda: train.run(cfg, resume=args.resume))
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


def cmd_deploy(args: argparse.Namespace) -> int:
    """Create the work pool and a scheduled deployment of the pipeline."""
    from flows.deploy import deploy

    deployment_id = deploy(
        name=args.name, pool=args.pool, cron=args.cron or None, overrides=args.set
    )
    print(
        f"deployment {args.name} ({deployment_id}) on work pool {args.pool!r}, cron {args.cron!r}"
    )
    print(f"start a worker to run it: prefect worker start --pool {args.pool}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (no heavy imports)."""
    parser = argparse.ArgumentParser(
        prog="dlops", description="Orchestrated, tracked, reproducible deep learning."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline (Prefect flow, DVC-recorded stages)")
    run.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a parameter (validated, then written to params.yaml as `dvc exp run -S`)",
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
    tr.add_argument("-S", "--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    tr.set_defaults(func=cmd_train)
    dep = sub.add_parser("deploy", help="schedule the pipeline on a Prefect process work pool")
    dep.add_argument("--name", default="dlops-scheduled")
    dep.add_argument("--pool", default="dlops")
    dep.add_argument("--cron", default="0 3 * * *", help="cron schedule ('' for none)")
    dep.add_argument("-S", "--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    dep.set_defaults(func=cmd_deploy)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `dlops` script."""
    args = build_parser().parse_args(argv)
    configure_environment()
    try:
        os.chdir(find_project_root())  # stages, DVC and params.yaml work from the root
    except FileNotFoundError as exc:
        print(f"dlops: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
