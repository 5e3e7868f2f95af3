"""`dlops serve`, `rollback`, `history`, `predict`, `drift`: the champion online and in batch.

The server and batch inference live in `serving/` (LitServe, the registered model's own code);
these commands read params.yaml's `serve:` section and the registry's ledger (tasks.ledger).
"""

from __future__ import annotations

import argparse
import os
import sys


def _config(args: argparse.Namespace):  # noqa: ANN202 (tasks.config.Config, imported lazily)
    from tasks.config import load_config

    return load_config(overrides=getattr(args, "set", []))


def _config_or_exit(args: argparse.Namespace):  # noqa: ANN202 (as _config)
    """params.yaml with the command's -S overrides; a bad key or value: one line, exit 2."""
    from tasks.config import ConfigError

    try:
        return _config(args)
    except ConfigError as exc:
        print(f"dlops: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def model_ref(model: str | None, default: str) -> tuple[str, str]:
    """`NAME[@ALIAS]` (default: the configured model) as (name, alias); the alias: champion."""
    name, _, alias = (model or default).partition("@")
    return name, alias or "champion"


def _tracking_env() -> None:
    """Pin the store for the processes a command starts (the server's workers are spawned)."""
    from tasks import tracking

    os.environ["MLFLOW_TRACKING_URI"] = tracking.tracking_uri()


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve models:/<name>@<alias> until interrupted; follows the alias (hot swap)."""
    from pathlib import Path

    cfg = _config_or_exit(args)
    if args.host not in ("127.0.0.1", "0.0.0.0", "::"):
        print(
            f"dlops: serve: --host must be 127.0.0.1, 0.0.0.0 or ::, not {args.host}",
            file=sys.stderr,
        )
        return 2
    if not 1024 <= args.port <= 65535:
        print(f"dlops: serve: --port must be 1024..65535, not {args.port}", file=sys.stderr)
        return 2
    _tracking_env()
    from serving.model import alias_version
    from serving.settings import Settings, tracking_uri

    s = cfg.serve
    settings = Settings(
        name=args.model or cfg.model_name,
        alias=args.alias,
        host=args.host,
        port=args.port,
        workers=args.workers or s.workers,
        max_batch_size=s.max_batch_size,
        batch_timeout=s.batch_timeout,
        threads=s.threads,
        poll_s=s.poll_s,
        max_rows=s.max_rows,
        max_body_bytes=s.max_body_bytes,
        timeout_s=s.timeout_s,
        sample_rate=s.sample_rate,
        sample_dir=str(Path(s.sample_dir).resolve()),
    )
    if alias_version(tracking_uri(), settings.name, settings.alias) is None:
        print(
            f"serve: no models:/{settings.name}@{settings.alias} yet (make run promotes one); "
            "/ready answers 503 until there is",
            flush=True,
        )
    from serving.server import serve

    serve(settings)
    return 0


def _client():  # noqa: ANN202
    from tasks import tracking

    return tracking.client()


def cmd_rollback(args: argparse.Namespace) -> int:
    """Move @champion back to the previous champion (or --to VERSION)."""
    from mlflow.exceptions import MlflowException

    from tasks.config import ConfigError
    from tasks.ledger import LedgerError, rollback

    try:
        name = args.model or _config(args).model_name
        before, after = rollback(_client(), name, to=args.to, reason=args.reason or "")
    except (LedgerError, ConfigError) as exc:
        print(f"dlops: {exc}", file=sys.stderr)
        return 1
    except MlflowException as exc:
        print(f"dlops: rollback: {' '.join(exc.message.split())[:300]}", file=sys.stderr)
        return 1
    print(f"rollback: {name} @champion v{before} -> v{after} (servers follow within poll_s)")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """Print the promotion ledger, oldest first."""
    from mlflow.exceptions import MlflowException

    from tasks.config import ConfigError
    from tasks.ledger import champion, describe, history

    try:
        name = args.model or _config(args).model_name
        client = _client()
        entries = history(client, name)
        current = champion(client, name)
    except ConfigError as exc:
        print(f"dlops: {exc}", file=sys.stderr)
        return 2
    except MlflowException as exc:
        print(f"dlops: history: {' '.join(exc.message.split())[:300]}", file=sys.stderr)
        return 1
    print(f"{name}: @champion is {'v' + current if current else 'unset'}; {len(entries)} entries")
    for entry in entries:
        print(describe(entry))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Score a file or an image folder with the champion; write the predictions atomically."""
    cfg = _config_or_exit(args)
    _tracking_env()
    from serving.batch import BatchError, predict_file
    from serving.model import NoModelError
    from serving.settings import tracking_uri

    name, alias = model_ref(args.model, cfg.model_name)
    try:
        r = predict_file(
            tracking_uri(),
            name,
            alias,
            args.input,
            args.output,
            on_error=args.on_error,
            chunk_rows=args.chunk_rows,
            version=args.version,
        )
    except (BatchError, NoModelError) as exc:
        print(f"dlops: {exc}", file=sys.stderr)
        return 1
    skipped = f", {r.skipped} bad rows skipped" if r.skipped else ""
    print(
        f"predict: {r.rows} rows of {args.input} scored by {name} v{r.version} -> {r.output} "
        f"({r.seconds:.1f} s, {r.rows / max(r.seconds, 1e-9):.0f} rows/s{skipped})"
    )
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    """Drift of --input against the training split; exit 1 above --max-share."""
    from pathlib import Path

    cfg = _config_or_exit(args)
    _tracking_env()
    from serving import drift
    from serving.settings import tracking_uri
    from tasks import tracking

    tracking.experiment_id(drift.EXPERIMENT)  # created where this project keeps artifacts
    name, alias = model_ref(args.model, cfg.model_name)
    reference = args.reference or str(Path(cfg.paths.processed_dir) / "train.parquet")
    try:
        r = drift.run(
            tracking_uri(),
            name,
            alias,
            reference,
            args.input,
            args.out,
            max_share=args.max_share,
        )
    except drift.DriftError as exc:
        print(f"dlops: {exc}", file=sys.stderr)
        return 2
    for column, c in r.columns.items():
        mark = "DRIFT" if c["drifted"] else "ok"
        print(
            f"  {column:<24} {mark:<5} {c['method']} {c['score']:.4g} "
            f"(threshold {c['threshold']:g})"
        )
    verdict = "drifted" if r.drifted else "no drift"
    print(
        f"drift: {verdict}: {r.share:.0%} of {len(r.columns)} columns drifted (max "
        f"{args.max_share:.0%}) vs {reference}; {r.html}, {r.json}; MLflow run {r.run_id}"
    )
    return 1 if r.drifted else 0


def _set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a parameter for this command (params.yaml is not written)",
    )


def _model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="registered model name (default: register.model_name)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `serve`, `rollback`, `history`, `predict` and `drift`."""
    serve = sub.add_parser(
        "serve", help="serve models:/<name>@champion over HTTP (LitServe, dynamic batching)"
    )
    _model(serve)
    serve.add_argument("--alias", default="champion", help="the alias to follow")
    serve.add_argument("--host", default="127.0.0.1", help="127.0.0.1, 0.0.0.0 or ::")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, help="inference processes (default: serve.workers)")
    _set(serve)
    serve.set_defaults(func=cmd_serve)

    rollback = sub.add_parser(
        "rollback", help="move @champion back to the previous champion (servers follow)"
    )
    _model(rollback)
    rollback.add_argument("--to", metavar="VERSION", help="this version instead of the previous")
    rollback.add_argument("--reason", help="why (recorded in the ledger)")
    _set(rollback)
    rollback.set_defaults(func=cmd_rollback)

    history = sub.add_parser("history", help="the promotion ledger: every move of @champion")
    _model(history)
    _set(history)
    history.set_defaults(func=cmd_history)

    predict = sub.add_parser(
        "predict", help="batch inference: a CSV/Parquet/NPZ file or image folder -> predictions"
    )
    predict.add_argument("--input", "--data", required=True, metavar="PATH")
    predict.add_argument(
        "--output", "--out", required=True, metavar="PATH", help=".parquet or .csv"
    )
    predict.add_argument("--model", help="NAME or NAME@ALIAS (default: <register name>@champion)")
    predict.add_argument("--version", help="a version instead of the alias")
    predict.add_argument(
        "--on-error",
        choices=["fail", "skip"],
        default="fail",
        help="a bad row fails the run (nothing written) or is skipped and reported",
    )
    predict.add_argument("--chunk-rows", type=int, default=4096, help="rows per forward pass")
    _set(predict)
    predict.set_defaults(func=cmd_predict)

    drift = sub.add_parser(
        "drift", help="drift of new input rows against the training split (Evidently, tables)"
    )
    drift.add_argument("--input", required=True, metavar="PATH", help="a .csv or .parquet table")
    drift.add_argument(
        "--reference", metavar="PATH", help="default: <paths.processed_dir>/train.parquet"
    )
    drift.add_argument("--model", help="NAME or NAME@ALIAS (its input columns are compared)")
    drift.add_argument("--out", default="reports/drift", help="folder for drift.html, drift.json")
    drift.add_argument(
        "--max-share", type=float, default=0.5, help="share of drifted columns that fails (exit 1)"
    )
    _set(drift)
    drift.set_defaults(func=cmd_drift)
