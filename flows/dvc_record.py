"""Run a dvc.yaml stage in-process and record it in DVC exactly as `dvc repro` would.

`dvc repro` starts `python -m tasks.<stage>` in a fresh process (about 5 s each here for torch
and Lightning). The flow instead calls the stage's `run()` in its own process and then does what
DVC does after a command: save the dependencies and outputs, commit the outputs to the cache,
write the stage to dvc.lock and the run cache. An unchanged stage is skipped; a stage whose
dependencies and params were seen before is restored from DVC's run cache without running.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class Outcome(StrEnum):
    """What happened to a stage."""

    RAN = "ran"
    SKIPPED = "skipped"  # deps, params and outs unchanged since dvc.lock
    RESTORED = "restored"  # outputs checked out from DVC's run cache


def reproduce(root: str | Path, name: str, fn: Callable[[], T]) -> tuple[Outcome, T | None]:
    """Run `fn` as the body of stage `name` unless DVC says the stage is up to date."""
    from dvc.repo import Repo, lock_repo
    from dvc.stage.cache import RunCacheNotFoundError

    with Repo(str(root)) as repo, lock_repo(repo):
        (stage,) = repo.stage.collect(name)
        if not stage.changed():
            return Outcome.SKIPPED, None
        value: T | None = None
        try:
            repo.stage_cache.restore(stage)
            outcome = Outcome.RESTORED
        except RunCacheNotFoundError:
            stage.save_deps()
            value = fn()
            outcome = Outcome.RAN
        no_cache_outs = any(
            not out.use_cache for out in stage.outs if not (out.is_metric or out.is_plot)
        )
        stage.save(run_cache=not no_cache_outs)
        stage.commit()
        stage.dump(update_pipeline=False)
        return outcome, value
