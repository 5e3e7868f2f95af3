"""The `dlops` command line. Heavy libraries are imported only inside commands.

Each command group is a module of this package exposing `register(subparsers)`; the modules
import nothing heavy at the top, so `dlops --help` stays fast (no torch, no Prefect).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tasks.runtime import configure_environment, find_project_root, setup

# The command groups, in the order `dlops --help` lists them.
COMMAND_MODULES = (
    "flows.cli.run",
    "flows.cli.deploy",
    "flows.cli.suite",
    "flows.cli.server",
    "flows.cli.dashboard",
    "flows.cli.serve",
)

__all__ = ["build_parser", "configure_environment", "find_project_root", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (no heavy imports)."""
    parser = argparse.ArgumentParser(
        prog="dlops", description="Orchestrated, tracked, reproducible deep learning."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `dlops` script."""
    args = build_parser().parse_args(argv)
    configure_environment()
    try:
        root = find_project_root()
    except FileNotFoundError as exc:
        print(f"dlops: {exc}", file=sys.stderr)
        sys.exit(2)
    os.chdir(root)  # stages, DVC and params.yaml work from the root
    setup(root)
    code = args.func(args)
    if argv is None:  # the `dlops` script, not a caller in this process (tests)
        _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> None:
    """Exit without tearing the interpreter down (seconds with Prefect, MLflow, DVC loaded).

    Everything a normal exit does first still happens: other threads are joined, the atexit
    handlers run (Prefect's log and event flush, logging's shutdown), the streams are flushed.
    """
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
