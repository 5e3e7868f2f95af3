"""`dlops deploy`: nightly retraining and a data watch, as Prefect deployments on a work pool."""

from __future__ import annotations

import argparse
import sys


def cmd_deploy(args: argparse.Namespace) -> int:
    """Register the nightly and the data-triggered deployments on a process work pool."""
    from flows.deploy import DATA_CHANGED, NIGHTLY, PIPELINE_FLOW, WATCH_FLOW, deploy
    from flows.tune_worker import TUNE_WORKER, TUNE_WORKER_FLOW, deploy_tune_worker
    from tasks.config import ConfigError, load_config
    from tasks.redact import redact

    try:
        load_config(overrides=args.set)  # the deployments' overrides must be valid now
        done = deploy(
            pool=args.pool,
            nightly_cron=args.cron or None,
            watch_cron=args.watch_cron or None,
            overrides=args.set,
            repository=args.repo,
            branch=args.branch,
        )
        worker = deploy_tune_worker(args.pool, done.repository, done.branch)
    except (ConfigError, RuntimeError) as exc:
        print(f"dlops: {redact(exc)}", file=sys.stderr)
        return 2
    print(
        f"deployments on work pool {args.pool!r}, code cloned from {redact(done.repository)}"
        f"{f' (branch {done.branch})' if done.branch else ''} for every run:"
    )
    print(f"  {PIPELINE_FLOW}/{NIGHTLY}  cron {args.cron!r}  ({done.nightly})")
    print(f"  {WATCH_FLOW}/{DATA_CHANGED}  cron {args.watch_cron!r}  ({done.data_changed})")
    print(f"  {TUNE_WORKER_FLOW}/{TUNE_WORKER}  started by tune (tune.workers > 1)  ({worker})")
    print(f"run one now: prefect deployment run {PIPELINE_FLOW}/{NIGHTLY}")
    print(f"workers pick them up: prefect worker start --pool {args.pool}  (make up starts two)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `deploy`."""
    from flows.deploy import NIGHTLY_CRON, POOL, WATCH_CRON

    dep = sub.add_parser(
        "deploy", help="schedule the pipeline (nightly + when the data changes) on a work pool"
    )
    dep.add_argument("--pool", default=POOL, help="Prefect process work pool (created if new)")
    dep.add_argument("--cron", default=NIGHTLY_CRON, help="the nightly schedule ('' for none)")
    dep.add_argument(
        "--watch-cron", default=WATCH_CRON, help="how often to check the data ('' for none)"
    )
    dep.add_argument("--repo", help="git repository the workers clone (default: DLOPS_REPO)")
    dep.add_argument("--branch", help="branch to clone (default: the checkout's)")
    dep.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="overrides for the deployments' runs (their own clone; params.yaml untouched)",
    )
    dep.set_defaults(func=cmd_deploy)
