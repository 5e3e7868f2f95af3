"""`dlops server start|status|stop`: the local Prefect server dlops starts once and reuses.

One per user (Prefect's home and database), shared by every project; a configured
PREFECT_API_URL (environment, `.env`, profile) is used instead and never started or stopped.
"""

from __future__ import annotations

import argparse
import sys


def cmd_server(args: argparse.Namespace) -> int:
    """Start, show or stop the local Prefect server (a configured PREFECT_API_URL wins)."""
    from flows import server
    from tasks.redact import redact

    configured = server.configured_url()
    if args.action == "start":
        try:
            conn = server.ensure()
        except server.ServerError as exc:
            print(f"dlops: {exc}", file=sys.stderr)
            return 1
        what = {"configured": "configured (PREFECT_API_URL)", "reused": "already running"}
        print(f"prefect server {what.get(conn.origin, 'started')}: {redact(conn.url)}")
        return 0
    if args.action == "status":
        state = server.read_state()
        if configured:
            up = "up" if server.healthy(configured) else "not answering"
            print(f"PREFECT_API_URL is set: commands use {redact(configured)} ({up})")
        if state is None:
            print("no local Prefect server running (dlops starts one on the next run)")
            return 0 if configured else 3
        up = "healthy" if server.healthy(state.url) else "not answering"
        print(
            f"local Prefect server {up}: {state.url} (UI {state.ui}), pid {state.pid}, "
            f"state and log in {server.state_dir()}"
        )
        return 0
    state = server.stop()
    if state is None:
        print("no local Prefect server running")
    else:
        print(f"stopped the local Prefect server {state.url} (pid {state.pid})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `server`."""
    srv = sub.add_parser(
        "server",
        help="the local Prefect server dlops starts once and reuses (unless PREFECT_API_URL)",
    )
    srv.add_argument("action", choices=("start", "status", "stop"))
    srv.set_defaults(func=cmd_server)
