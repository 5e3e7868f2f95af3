"""`dlops run` (the whole pipeline) and `dlops train` (the train stage alone)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _summary(result: dict[str, Any]) -> str:
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
    from flows.cli.console import quiet_console
    from tasks.sources import DataError
    from tasks.validate import DataValidationError

    quiet_console((DataValidationError, DataError, ConfigError))
    from flows.pipeline import pipeline

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
        run, "override a parameter (validated, then written to params.yaml as `dvc exp run -S`)"
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
