"""Tune: an Optuna study (TPE + pruning in Lightning's validation loop), trials as nested runs.

`tune.workers` processes share the study: this one (worker 0) and `workers - 1` more, started
by tasks.tune_workers as `python -m tasks.tune --worker - --index i` on this host (or, on the
team stack, as Prefect flow runs by a launcher that flows/ passes in: tasks/ imports no
Prefect). Each worker asks for trials under the storage's lock until the study holds
`tune.n_trials` (tasks.tune_study), so the total is exact; the study's name comes from its
definition, so a rerun continues it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from models.trainer import build_module, make_trainer
from tasks import cv, optuna_storage, tracking, tune_study
from tasks.config import Choices, Config, FloatRange, IntRange
from tasks.train import data_info, trial_budget
from tasks.tune_workers import Launcher, WorkerSpec, check_workers, die_with_parent, launch_local
from tasks.utils import write_json

log = logging.getLogger("dlops")


@dataclass(frozen=True)
class TuneResult:
    """The best trial of the study and where its parameters went."""

    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    study_name: str
    n_complete: int
    n_pruned: int
    path: Path
    run_id: str
    n_failed: int = 0
    n_orphaned: int = 0  # trials of killed workers, marked FAIL and not counted
    warm_start_from: str | None = None
    workers: int = 1


def _draw(trial: Any, name: str, dim: FloatRange | IntRange | Choices) -> Any:
    if isinstance(dim, Choices):
        return trial.suggest_categorical(name, dim.choices)
    if isinstance(dim, IntRange):
        return trial.suggest_int(name, dim.low, dim.high, step=dim.step)
    return trial.suggest_float(name, dim.low, dim.high, log=dim.log)


def suggest(trial: Any, cfg: Config) -> dict[str, Any]:
    """Draw one point of the search space (dotted params.yaml paths).

    `model.arch` is drawn first; `model.<arch>.*` dimensions are drawn only when that arch is the
    trial's (conditional parameters: an LSTM's hidden size only for RNNs).
    """
    space = cfg.search_space()
    params: dict[str, Any] = {}
    if "model.arch" in space:
        params["model.arch"] = _draw(trial, "model.arch", space["model.arch"])
    arch = cfg.with_values(params).arch if params else cfg.arch
    for name, dim in space.items():
        if name == "model.arch":
            continue
        parts = name.split(".")
        if parts[0] == "model" and len(parts) == 3 and parts[1] != arch:
            continue
        params[name] = _draw(trial, name, dim)
    return params


def make_pruner(kind: str, max_epochs: int) -> Any:
    """Hyperband, median or no pruning, by name."""
    import optuna

    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs)
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


@dataclass
class TrialData:
    """What every trial of a worker shares: the data module, the data's facts, the headline."""

    dm: Any
    info: dict[str, Any]
    headline: str
    use_cv: bool = False  # a small validation split: trials scored by k-fold CV (tasks.cv)

    @classmethod
    def load(cls, cfg: Config) -> TrialData:
        """The processed data, preprocessed once per worker."""
        import lightning  # noqa: F401  (imported here, before the worker holds a trial)
        import optuna_integration  # noqa: F401

        from models.datamodule import DataModule
        from models.metrics import HEADLINE

        dm = DataModule(cfg.paths.processed_dir, seed=cfg.seed)
        dm.setup()
        info = data_info(cfg.paths.processed_dir)
        return cls(dm, info, HEADLINE[info["task"]]["val"], cv.needed(cfg, info))


def objective(
    trial: Any, cfg: Config, data: TrialData, parent_run_id: str, study_name: str
) -> float:
    """Train one trial's configuration, pruned by the study; its nested MLflow run; val/loss."""
    import lightning as L
    from optuna_integration import PyTorchLightningPruningCallback

    from models.metrics import VAL_LOSS
    from models.progress import Progress
    from tasks.testhook import pause_point

    values = suggest(trial, cfg)
    trial_cfg = cfg.with_values(values)
    trial_run = tracking.start_run(
        cfg.register_.experiment,
        f"trial-{trial.number}",
        parent_run_id,
        tags={"dlops.stage": "tune", "optuna.study": study_name},
    )
    trial.set_user_attr(tune_study.RUN_ATTR, trial_run)  # an orphan's run is ended FAILED
    c = tracking.client()
    tracking.log_params(trial_run, {**values, "arch": trial_cfg.arch})
    if data.use_cv:  # k-fold CV inside train; cv.run_trial logs and ends the trial's run
        seed = cfg.seed + trial.number
        return cv.run_trial(trial, trial_cfg, data.info, data.dm, trial_run, seed)
    L.seed_everything(cfg.seed + trial.number, workers=True, verbose=False)
    b = trial_budget(trial_cfg, data.info)
    data.dm.batch_size, data.dm.repeats = trial_cfg.train.batch_size, b.repeats
    module = build_module(trial_cfg, data.info, b.epochs)
    pruning = PyTorchLightningPruningCallback(trial, monitor=VAL_LOSS)
    # one process per trial: parallelism is across trials (workers), not inside one
    # per-epoch progress on the logger "dlops"; the test hook pauses after the first epoch
    progress = Progress(f"tune trial {trial.number}", "tune", partial(pause_point, "tune"))
    trainer = make_trainer(
        trial_cfg,
        b.epochs,
        [pruning, progress],
        enable_checkpointing=False,
        devices=1,
        strategy="auto",
        max_steps=b.max_steps,
    )
    with tracking.trial_run(trial_run, trial):
        try:
            trainer.fit(module, datamodule=data.dm)
            pruning.check_pruned()
        finally:
            m = trainer.callback_metrics
            for key in (VAL_LOSS, data.headline):
                if key in m:
                    c.log_metric(trial_run, key, float(m[key]), step=trainer.current_epoch)
            # epochs spent, pruned or not (benchmarks/tuning.py sums them)
            trial.set_user_attr("epochs", int(trainer.current_epoch))
    return float(trainer.callback_metrics[VAL_LOSS])


def pruner(cfg: Config) -> Any:
    """The study's pruner; under k-fold CV a trial reports folds x epochs steps."""
    t = cfg.tune
    folds = t.cv_folds if cv.needed(cfg, data_info(cfg.paths.processed_dir)) else 1
    return make_pruner(t.pruner, t.max_epochs * folds)


def sampler(cfg: Config, index: int) -> Any:
    """TPE seeded per worker (the same seed would draw the same points in every worker)."""
    import optuna

    return optuna.samplers.TPESampler(seed=cfg.seed + index, constant_liar=True)


def work(spec: WorkerSpec, index: int, storage: optuna_storage.StudyStorage | None = None) -> int:
    """Run trials of the study until its budget is used (or the deadline); the number run."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    cfg = spec.cfg()
    storage = storage or optuna_storage.resolve(cfg)
    study = optuna.load_study(
        study_name=spec.study,
        storage=storage.open(),
        sampler=sampler(cfg, index),
        pruner=pruner(cfg),
    )
    return _trials(study, cfg, spec, storage)


def _trials(study: Any, cfg: Config, spec: WorkerSpec, storage: Any) -> int:
    import optuna
    from optuna.trial import TrialState

    if tune_study.used(study) >= cfg.tune.n_trials:
        return 0  # nothing left: no need to load torch and the data
    # Load before the first ask: a trial is counted from its ask, so a worker still importing
    # torch must not hold a place of the budget that running workers could use.
    data = TrialData.load(cfg)
    done = 0
    while spec.deadline is None or time.time() < spec.deadline:
        trial = tune_study.ask_within_budget(study, cfg.tune.n_trials, storage.lock(spec.study))
        if trial is None:
            break
        try:
            value = objective(trial, cfg, data, spec.parent_run_id, spec.study)
        except optuna.TrialPruned:
            _tell(study, trial, None, TrialState.PRUNED)
        except Exception as exc:  # counted as finished (failed); the study goes on
            log.warning("tune: trial %s failed: %s", trial.number, exc)
            _tell(study, trial, None, TrialState.FAIL)
        except BaseException:
            _tell(study, trial, None, TrialState.FAIL)
            raise
        else:
            _tell(study, trial, value, TrialState.COMPLETE)
        done += 1
    return done


def _tell(study: Any, trial: Any, value: float | None, state: Any) -> None:
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as exc:  # marked an orphan by another stage meanwhile: its verdict stands
        log.warning("tune: trial %s already finished (%s)", trial.number, exc)


def run(
    cfg: Config, parent_run_id: str | None = None, launcher: Launcher | None = None
) -> TuneResult:
    """Run (or continue) the study with `tune.workers` workers; write the best parameters.

    `launcher` starts the extra workers (default: processes on this host); each returned handle
    has `wait() -> int` and `kill()`.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    t = cfg.tune
    storage = optuna_storage.resolve(cfg)
    check_workers(cfg, storage, local=launcher is None)
    opened = storage.open()  # before any MLflow run: a bad storage fails fast, in one line
    defined = tune_study.definition(cfg)  # hashes the processed data: once
    name = tune_study.study_name(cfg, defined)
    c = tracking.client()

    def end_orphan_run(run_id: str) -> None:
        try:
            tracking.end_run(run_id, failed=True)
        except Exception as exc:  # the run may live in another store; the trial is what counts
            log.warning("tune: cannot end orphaned run %s: %s", run_id, exc)

    found = tune_study.open_study(
        cfg,
        name,
        opened,
        storage.lock(name),
        sampler(cfg, 0),
        pruner(cfg),
        end_orphan_run,
        defined,
    )
    study = found.study
    archs = cfg.search_space().get("model.arch")
    if (
        not study.trials  # a new study (a resumed one keeps its queue)
        and cfg.model.arch == "auto"
        and isinstance(archs, Choices)
        and cfg.arch in archs.choices
    ):
        # a trial with `auto`'s own arch comes early: a short study (or a timeout) still tries it
        study.enqueue_trial({"model.arch": cfg.arch}, skip_if_exists=True)
    if found.orphaned:
        log.warning("tune: %s: trials %s of killed workers marked failed", name, found.orphaned)
    # Trials nest under the pipeline's parent run; without a flow, under the tune run itself.
    tune_run = tracking.start_run(
        cfg.register_.experiment, "tune", parent_run_id, tags={"dlops.stage": "tune"}
    )
    handles: list[Any] = []
    try:
        c.set_tag(tune_run, "optuna.study", name)
        c.set_tag(tune_run, "optuna.storage", storage.label)  # redacted: no password
        c.set_tag(tune_run, "optuna.workers", str(t.workers))
        if found.warm_start_from:
            c.set_tag(tune_run, "optuna.warm_start_from", found.warm_start_from)
        deadline = time.time() + t.timeout_s if t.timeout_s else None
        spec = WorkerSpec(
            name, cfg.model_dump(by_alias=True, mode="json"), parent_run_id or tune_run, deadline
        )
        if t.workers > 1:
            handles = (launcher or launch_local)(spec, range(1, t.workers))
        _trials(study, cfg, spec, storage)
        for h in handles:
            h.wait()
        # a worker that died left its trial RUNNING: fail it, then fill its place here
        if tune_study.fail_orphans(study, end_orphan_run):
            _trials(study, cfg, spec, storage)
        result = _summarize(cfg, study, storage, tune_run, found)
    except BaseException:
        for h in handles:
            h.kill()
        tracking.end_run(tune_run, failed=True)
        raise
    tracking.end_run(tune_run)
    log.info("tune: %s: best val/loss %.4f", name, result.best_value)
    return result


def _summarize(
    cfg: Config, study: Any, storage: Any, tune_run: str, found: tune_study.Opened
) -> TuneResult:
    from optuna.trial import TrialState

    from models.metrics import VAL_LOSS

    trials = study.get_trials(deepcopy=False)
    orphaned = sum(bool(tr.user_attrs.get(tune_study.ORPHANED_ATTR)) for tr in trials)
    n = {s: sum(tr.state == s for tr in trials) for s in TrialState}
    n_complete, n_pruned = n[TrialState.COMPLETE], n[TrialState.PRUNED]
    n_failed = n[TrialState.FAIL] - orphaned
    name = study.study_name
    if n_complete == 0:
        raise RuntimeError(f"tune: no trial of study {name} completed")
    best = study.best_trial
    result = TuneResult(
        best_params=dict(best.params),  # dotted params.yaml paths
        best_value=float(best.value),
        best_trial=best.number,
        study_name=name,
        n_complete=n_complete,
        n_pruned=n_pruned,
        path=Path(cfg.paths.best_params),
        run_id=tune_run,
        n_failed=n_failed,
        n_orphaned=orphaned,
        warm_start_from=found.warm_start_from,
        workers=cfg.tune.workers,
    )
    write_json(
        result.path,
        {
            "params": result.best_params,
            "value": result.best_value,
            "objective": f"min {VAL_LOSS}",
            "study": name,
            "best_trial": best.number,
            "n_trials": n_complete + n_pruned + n_failed,
            "n_complete": n_complete,
            "n_pruned": n_pruned,
            "n_failed": n_failed,
            "n_orphaned": orphaned,
            "warm_start_from": found.warm_start_from,
            # cross-validated (small validation split): what train fits on train+val
            "cv": best.user_attrs.get(cv.CV_ATTR),
        },
    )
    c = tracking.client()
    tracking.log_params(tune_run, {f"best.{k}": v for k, v in best.params.items()})
    c.log_metric(tune_run, f"best/{VAL_LOSS}", result.best_value)
    for key, value in (("complete", n_complete), ("pruned", n_pruned), ("failed", n_failed)):
        c.log_metric(tune_run, f"trials/{key}", value)
    c.set_tag(tune_run, "optuna.best_trial", str(best.number))
    log_plots(tune_run, study)
    return result


def log_plots(run_id: str, study: Any) -> list[str]:
    """Optimization history and (2+ completed trials) parameter importances as PNG artifacts."""
    import warnings

    import matplotlib
    import optuna

    matplotlib.use("Agg")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis
    from optuna.trial import TrialState

    plots = {"optimization_history": vis.plot_optimization_history}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) >= 2 and len(study.best_trial.params) >= 1:
        plots["param_importances"] = vis.plot_param_importances
    logged = []
    c = tracking.client()
    with tempfile.TemporaryDirectory() as tmp:
        for name, plot in plots.items():
            try:
                ax = plot(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances of constant params
                log.warning("tune: no %s plot: %s", name, exc)
                continue
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            path = Path(tmp) / f"{name}.png"
            fig.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(fig)
            c.log_artifact(run_id, str(path), "optuna")
            logged.append(path.name)
    return logged


def main(argv: list[str] | None = None) -> None:
    """Entry point for `python -m tasks.tune` (dvc.yaml), and for its workers (`--worker`)."""
    from tasks.entry import run_stage
    from tasks.runtime import setup

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--worker", metavar="SPEC.json", help="run trials of a started study (-: spec on stdin)"
    )
    parser.add_argument("--index", type=int, default=1, help="the worker's index (its seed)")
    args = parser.parse_args(argv)
    if args.worker:
        setup()  # .env (DLOPS_OPTUNA_STORAGE), and redaction of logs and tracebacks
        try:
            die_with_parent()
            text = sys.stdin.read() if args.worker == "-" else Path(args.worker).read_text()
            spec = WorkerSpec(**json.loads(text))
            n = work(spec, args.index)
        except optuna_storage.StorageError as exc:
            sys.exit(f"tune: {exc}")
        print(f"tune worker {args.index}: {n} trials of {spec.study}")
        return

    def body(cfg: Config) -> str:
        r = run(cfg)
        return (
            f"tune: best trial {r.best_trial} of {r.study_name} val/loss {r.best_value:.4f} "
            f"{r.best_params} ({r.n_complete} complete, {r.n_pruned} pruned, {r.n_failed} "
            f"failed, {r.workers} workers)"
        )

    # setup(): .env, redaction; a StorageError is one line (a ConfigError); upstream checked
    run_stage("tune", body)


if __name__ == "__main__":
    main()
