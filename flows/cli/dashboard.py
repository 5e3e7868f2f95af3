"""`dlops dashboard`: optuna-dashboard on the studies' storage, bound to 127.0.0.1."""

from __future__ import annotations

import argparse
import sys

DEFAULT_PORT = 8080
HOST = "127.0.0.1"


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard on the storage `tune.storage` resolves to, until Ctrl-C."""
    from tasks import optuna_storage
    from tasks.config import ConfigError, load_config
    from tasks.redact import redact

    try:
        cfg = load_config(overrides=args.set)
        storage = optuna_storage.resolve(cfg)
        if storage.kind == "memory":
            raise ConfigError(
                "tune.storage memory: a study in memory ends with its tune process; "
                "nothing to show (use auto or journal)"
            )
        if storage.kind == "journal" and not (storage.path and storage.path.is_file()):
            raise ConfigError(f"no study yet in {storage.label}: run the tune stage first")
        opened = storage.open()
    except ConfigError as exc:  # StorageError included: one redacted line
        print(f"dlops: {redact(exc)}", file=sys.stderr)
        return 2
    import socket

    with socket.socket() as probe:  # a busy port is one line, not a server traceback
        try:
            probe.bind((HOST, args.port))
        except OSError:
            print(f"dlops: port {args.port} on {HOST} is in use: pass --port", file=sys.stderr)
            return 2
    from optuna_dashboard import run_server

    print(f"optuna-dashboard on {storage.label}: http://{HOST}:{args.port}/  (Ctrl-C stops it)")
    sys.stdout.flush()
    try:
        run_server(opened, host=HOST, port=args.port)
    except KeyboardInterrupt:
        pass
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `dashboard`."""
    dash = sub.add_parser(
        "dashboard", help="optuna-dashboard on the tuning studies (127.0.0.1, address printed)"
    )
    dash.add_argument("--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1")
    dash.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="overrides (e.g. tune.storage=journal) deciding which storage to show",
    )
    dash.set_defaults(func=cmd_dashboard)
