"""`dlops suite init`: infer the data's GX suite (the explicit suite step), for review."""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

SCRATCH_PARENT = ".dlops"  # ignored by git: the source is copied there, then removed


def cmd_init(args: argparse.Namespace) -> int:
    """Copy the source to a scratch folder, infer its suite, write it once the data passes."""
    from flows.cli.run import data_overrides
    from tasks.config import ConfigError, load_config

    try:
        cfg = load_config(overrides=data_overrides(args.data) + args.set)
    except ConfigError as exc:
        print(f"dlops: {exc}", file=sys.stderr)
        return 2
    from tasks import ingest
    from tasks.names import check_name, source_of
    from tasks.sources import DataError
    from tasks.validate import DataValidationError, init_suite, suite_path

    path = suite_path(cfg)
    if path.is_file() and not args.force:
        print(f"suite: {path} exists (enforced by every run); --force infers it again")
        return 0
    Path(SCRATCH_PARENT).mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=SCRATCH_PARENT, prefix="suite-init."))
    try:
        check_name(cfg, rehome=args.force)
        raw = scratch / "raw"
        ingest.run(cfg, verify_name=False, raw_dir=raw)
        result = init_suite(cfg, force=args.force, raw_dir=raw, report=False)
    except (DataValidationError, DataError, ConfigError) as exc:
        # name the user's source, not its scratch copy
        text = re.sub(re.escape(str(scratch / "raw")) + r"/[^:\s]*", source_of(cfg), str(exc))
        print(f"dlops: {text}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"suite: wrote {result.path} ({result.n_expectations} expectations, inferred from "
        f"{source_of(cfg)}); review it and commit it: every run enforces it"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `suite init`."""
    suite = sub.add_parser("suite", help="the data's Great Expectations suite")
    commands = suite.add_subparsers(dest="suite_command", required=True)
    init = commands.add_parser(
        "init",
        help="infer expectations/<data name>.json from the data (when missing, or --force)",
    )
    init.add_argument(
        "--force", action="store_true", help="infer it again even if it exists (overwrites it)"
    )
    init.add_argument("--data", metavar="PATH", help="the source (as `dlops run --data`)")
    init.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a parameter for this command (params.yaml is not written)",
    )
    init.set_defaults(func=cmd_init)
