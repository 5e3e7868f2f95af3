"""`dlops deploy`: schedule the pipeline on a Prefect work pool."""

from __future__ import annotations

import argparse


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


def register(sub: argparse._SubParsersAction) -> None:
    """Add `deploy`."""
    dep = sub.add_parser("deploy", help="schedule the pipeline on a Prefect process work pool")
    dep.add_argument("--name", default="dlops-scheduled")
    dep.add_argument("--pool", default="dlops")
    dep.add_argument("--cron", default="0 3 * * *", help="cron schedule ('' for none)")
    dep.add_argument("-S", "--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    dep.set_defaults(func=cmd_deploy)
