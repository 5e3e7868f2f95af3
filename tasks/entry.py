"""The one entry of every `python -m tasks.<stage>` (dvc.yaml's commands, a stage run by hand).

Each stage's `main()` parses its own options, then calls `run_stage`, which does once per
process what every stage needs: the process-wide settings (`tasks.runtime.setup()`: telemetry
off, `.env`, `DLOPS_HOME`, log redaction, warning filters; torch's threads for the stages that
use torch), the stale-upstream check (`tasks.upstream.check`, skipped under `dvc repro`), the
config, and one-line errors for bad input instead of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.config import Config

TORCH_STAGES = frozenset({"tune", "train", "evaluate", "promote"})
TRAINING_STAGES = frozenset({"tune", "train"})  # they read train.* (loss, label smoothing, ...)


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or out-of-date inputs: shown as one line, no traceback."""
    from tasks.config import ConfigError  # also the Optuna storage's StorageError
    from tasks.sources import DataError
    from tasks.upstream import StaleUpstreamError
    from tasks.validate.messages import DataValidationError

    return (ConfigError, DataError, DataValidationError, StaleUpstreamError)


def run_stage(stage: str, body: Callable[[Config], str], check_upstream: bool = True) -> None:
    """Set the process up, check upstream, load params.yaml, run `body` and print its line.

    Exits with `<stage>: <message>` (status 1) on an expected error.
    """
    from tasks.config import load_config
    from tasks.runtime import set_torch_threads, setup

    setup()
    try:
        if check_upstream:
            _check(stage)
        cfg = load_config()
        if stage in TRAINING_STAGES:
            _check_task(cfg, stage)
        if stage in TORCH_STAGES:
            set_torch_threads(cfg.train.threads)
        line = body(cfg)
    except expected_errors() as exc:
        sys.exit(f"{stage}: {exc}")
    print(line)


def _check_task(cfg: Config, stage: str) -> None:
    """train.* against the task the processed data holds (ingest no longer checks them)."""
    from pathlib import Path

    from tasks.config import require_task
    from tasks.utils import read_json

    split = Path(cfg.paths.processed_dir) / "split.json"
    if split.is_file():
        require_task(cfg, read_json(split)["task"], str(split.parent), sections=("train",))


def _check(stage: str) -> None:
    """The stale-upstream check, where DVC records the stages (not in a bare folder)."""
    from dvc.exceptions import NotDvcRepoError

    from tasks.upstream import check

    try:
        check(stage)
    except NotDvcRepoError:  # a folder without DVC (a stage run by hand, a test): no record
        return
