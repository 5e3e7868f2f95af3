"""Run dvc.yaml stages in-process and record them in DVC exactly as `dvc repro` would.

`dvc repro` starts `python -m tasks.<stage>` in a fresh process (about 5 s each here for torch
and Lightning). The flow instead calls the stage's `run()` in its own process and then does what
DVC does after a command: save the dependencies and outputs, commit the outputs to the cache,
write the stage to dvc.lock and the run cache. An unchanged stage is skipped; a stage whose
dependencies and params were seen before is restored from DVC's run cache without running.

A `Recorder` holds DVC's repository lock for a whole run, as `dvc repro` does, so a second run
(or `dvc repro`) in the same workspace is refused instead of interleaving its stages. The DVC
calls used here (`stage.changed`, `save_deps`, `stage_cache.restore`, `save`, `commit`, `dump`)
are DVC internals: pyproject pins DVC's major version and tests/unit/test_dvc_contract.py checks
their behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class Outcome(StrEnum):
    """What happened to a stage."""

    RAN = "ran"
    SKIPPED = "skipped"  # deps, params and outs unchanged since dvc.lock
    RESTORED = "restored"  # outputs checked out from DVC's run cache


class RunLockedError(RuntimeError):
    """Another run (or a dvc command) holds the workspace's DVC lock."""


class Recorder:
    """One DVC repository, locked for the duration of a run; records stages as they finish."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.repo: Any = None
        self._lock: Any = None
        self._stages: dict[str, Any] | None = None

    def __enter__(self) -> Recorder:
        from dvc.lock import LockError
        from dvc.repo import Repo, lock_repo

        self.repo = Repo(str(self.root))
        self._lock = lock_repo(self.repo)
        try:
            self._lock.__enter__()
        except LockError:
            self.repo.close()
            raise RunLockedError(
                f"another dlops run or dvc command holds the DVC lock of {self.root.resolve()} "
                "(.dvc/tmp/lock): wait for it to finish, or run with other overrides, which get "
                "a workspace of their own"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._lock.__exit__(*exc)
        finally:
            self.repo.close()

    def stage(self, name: str) -> Any:
        """The stage as dvc.yaml and dvc.lock describe it now."""
        if self._stages is None:  # dvc.yaml and dvc.lock parsed once, until a stage writes
            self.repo._reset()
            self._stages = {s.name: s for s in self.repo.index.stages}
        if name not in self._stages:
            self._stages = None
            (stage,) = self.repo.stage.collect(name)  # DVC's own error for an unknown name
            return stage
        return self._stages[name]

    def reproduce(
        self, name: str, fn: Callable[[], T], deterministic: bool = False
    ) -> tuple[Outcome, T | None]:
        """Run `fn` as the body of stage `name` unless DVC says the stage is up to date.

        `deterministic`: this time the outputs follow from the stage's code and params alone
        (ingest of a built-in set), so `always_changed` does not force a run.
        """
        from dvc.stage.cache import RunCacheNotFoundError

        stage = self.stage(name)
        if deterministic and stage.always_changed:
            changed = stage.changed_stage() or stage._changed_deps() or stage.changed_outs()
        else:
            changed = stage.changed()
        if not changed:
            return Outcome.SKIPPED, None
        value: T | None = None
        try:
            self.repo.stage_cache.restore(stage)
            outcome = Outcome.RESTORED
        except RunCacheNotFoundError:
            stage.save_deps()
            value = fn()
            outcome = Outcome.RAN
        no_cache_outs = any(
            not out.use_cache for out in stage.outs if not (out.is_metric or out.is_plot)
        )
        self._stages = None  # dvc.lock changes: the next stage reads it again
        stage.save(run_cache=not no_cache_outs)
        stage.commit()
        stage.dump(update_pipeline=False)
        return outcome, value


def reproduce(root: str | Path, name: str, fn: Callable[[], T]) -> tuple[Outcome, T | None]:
    """One stage, recorded under its own lock (the CLI's stage commands, tests)."""
    with Recorder(root) as recorder:
        return recorder.reproduce(name, fn)
