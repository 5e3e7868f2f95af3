"""A study shared by worker processes: its name, its exact budget, orphans and warm start.

- The name is derived from what defines the study (the processed data's content hash, the
  search space, the fixed parameters, the seed), never the clock: rerunning the stage with the
  same definition continues the same study in the same storage.
- The budget is exact across workers: a worker asks for a trial only under the storage's lock
  (`StudyStorage.lock`), after counting the trials that finished or are running, so the study
  ends with exactly `tune.n_trials` of them, whatever the number of workers.
- A trial left RUNNING by a killed worker is an orphan: when the stage starts again it is marked
  FAIL with the user attribute `orphaned`, and not counted.
- Warm start: a new study enqueues, as its first trial, the best parameters of the latest study
  of the same registered model in the storage (only those valid in the current space).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.config import Choices, Config, FloatRange, IntRange

# Study user attributes.
MODEL_ATTR = "dlops.model_name"
CREATED_ATTR = "dlops.created"  # unix time: orders the studies of one model (warm start)
DEFINITION_ATTR = "dlops.definition"
WARM_ATTR = "dlops.warm_start_from"
# Trial user attributes.
WORKER_ATTR = "dlops.worker"  # host:pid of the process that asked for it
RUN_ATTR = "mlflow.run_id"  # its nested MLflow run
ORPHANED_ATTR = "orphaned"
# train keys that do not change a trial's result (the budget and placement are tune's own).
NOT_DEFINING_TRAIN = (
    "max_epochs",
    "min_steps",
    "max_steps",
    "patience",
    "devices",
    "strategy",
    "threads",
    "ensemble",
)


def data_hash(folder: str | Path) -> str:
    """sha256 of a folder's files (relative names and contents), in name order."""
    root = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def definition(cfg: Config) -> dict[str, Any]:
    """What defines the study: data, space, fixed parameters, seed (not the budget, not where)."""
    dump = cfg.model_dump(by_alias=True, mode="json")
    train = {k: v for k, v in dump["train"].items() if k not in NOT_DEFINING_TRAIN}
    return {
        "data": data_hash(cfg.paths.processed_dir),
        # the space searched: tune.space, with model.arch over tune.archs under `auto`
        "space": {k: d.model_dump(mode="json") for k, d in cfg.search_space().items()},
        "fixed": {
            "model": dump["model"],
            "train": train,
            "augment": dump["preprocess"]["augment"],
            "max_epochs": cfg.tune.max_epochs,
            "min_steps": cfg.tune.min_steps,
            "max_steps": cfg.tune.max_steps,
            "cv": [cfg.tune.min_val_examples, cfg.tune.cv_folds],
            "pruner": cfg.tune.pruner,
        },
        "seed": cfg.seed,
    }


def study_name(cfg: Config, defined: dict[str, Any] | None = None) -> str:
    """`<registered model>-<12 hex of the definition's hash>`: same definition, same study."""
    blob = json.dumps(defined or definition(cfg), sort_keys=True, default=str)
    return f"{cfg.model_name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def worker_id() -> str:
    """host:pid of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive_here(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host: the stage that started it has ended (see orphans())
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def counted(trial: Any) -> bool:
    """Whether a trial uses the budget: finished or running, orphans excluded."""
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    return trial.state in live and not trial.user_attrs.get(ORPHANED_ATTR, False)


def used(study: Any) -> int:
    """Trials that use the budget."""
    return sum(counted(t) for t in study.get_trials(deepcopy=False))


def ask_within_budget(study: Any, n_trials: int, lock: Any) -> Any | None:
    """A new trial when fewer than `n_trials` are finished or running, else None.

    Counting and asking happen under `lock` (the storage's, shared by every worker), so two
    workers never both take the last place: the total is exact.
    """
    with lock:
        if used(study) >= n_trials:
            return None
        trial = study.ask()
        trial.set_user_attr(WORKER_ATTR, worker_id())
        return trial


def orphans(study: Any) -> list[Any]:
    """RUNNING trials whose worker is gone (on this host: its pid is dead; elsewhere: any).

    Called when a stage starts, before its workers: a trial still RUNNING from another host
    belongs to a stage that has ended (one tune stage per study at a time: DVC's lock).
    """
    from optuna.trial import TrialState

    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not _alive_here(str(t.user_attrs.get(WORKER_ATTR, "")))
    ]


def fail_orphans(study: Any, end_run: Any = None) -> list[int]:
    """Mark orphaned trials FAIL (`orphaned` user attribute), end their MLflow runs; numbers."""
    from optuna.trial import TrialState

    storage, numbers = study._storage, []
    for t in orphans(study):
        storage.set_trial_user_attr(t._trial_id, ORPHANED_ATTR, True)
        try:
            storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except RuntimeError:  # finished meanwhile by a worker that was alive after all
            continue
        numbers.append(t.number)
        if end_run is not None and t.user_attrs.get(RUN_ATTR):
            end_run(t.user_attrs[RUN_ATTR])
    return numbers


def _valid(value: Any, dim: FloatRange | IntRange | Choices) -> bool:
    if isinstance(dim, Choices):
        return value in dim.choices
    if isinstance(dim, IntRange):
        ok = isinstance(value, int) and dim.low <= value <= dim.high
        return ok and (value - dim.low) % dim.step == 0
    return isinstance(value, int | float) and dim.low <= value <= dim.high


def valid_params(params: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """The parameters that exist in `space` with a value inside their dimension."""
    return {k: v for k, v in params.items() if k in space and _valid(v, space[k])}


def latest_study(summaries: Iterable[Any], model_name: str, exclude: str) -> Any | None:
    """The most recently created study of a model with a completed trial (None: none)."""
    mine = [
        s
        for s in summaries
        if s.user_attrs.get(MODEL_ATTR) == model_name
        and s.study_name != exclude
        and s.best_trial is not None
    ]
    return max(mine, key=lambda s: s.user_attrs.get(CREATED_ATTR, 0.0), default=None)


@dataclass(frozen=True)
class Opened:
    """A study as the stage found it."""

    study: Any
    created: bool  # new in the storage (no trial yet)
    orphaned: list[int]  # trial numbers marked FAIL as orphans now
    warm_start_from: str | None  # the study whose best parameters were enqueued


def open_study(
    cfg: Config,
    name: str,
    storage: Any,
    lock: Any,
    sampler: Any,
    pruner: Any,
    end_run: Any,
    defined: dict[str, Any] | None = None,
) -> Opened:
    """Create or load the study, fail its orphans and (new study) enqueue the warm start."""
    import optuna

    with lock:  # one process creates it and decides the warm start
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction="minimize",
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
        created = MODEL_ATTR not in study.user_attrs
        warm = study.user_attrs.get(WARM_ATTR)
        if created:
            study.set_user_attr(MODEL_ATTR, cfg.model_name)
            study.set_user_attr(CREATED_ATTR, time.time())
            blob = json.dumps(defined or definition(cfg), sort_keys=True)
            study.set_user_attr(DEFINITION_ATTR, blob)
            if storage is not None:
                summaries = optuna.get_all_study_summaries(storage, include_best_trial=True)
                earlier = latest_study(summaries, cfg.model_name, exclude=name)
                if earlier is not None:
                    params = valid_params(earlier.best_trial.params, cfg.search_space())
                    if params:
                        study.enqueue_trial(params, skip_if_exists=True)
                        warm = earlier.study_name
                        study.set_user_attr(WARM_ATTR, warm)
        orphaned = fail_orphans(study, end_run)
    return Opened(study, created, orphaned, warm)
