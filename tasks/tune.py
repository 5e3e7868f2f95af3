"""Tune: an Optuna study (TPE + pruning in Lightning's validation loop), trials as nested runs."""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import cv, optuna_storage, tracking
from tasks.config import Choices, Config, FloatRange, IntRange, load_config
from tasks.train import build_module, data_info, make_trainer, trial_budget
from tasks.utils import write_json


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


def run(cfg: Config, parent_run_id: str | None = None) -> TuneResult:
    """Run the study, each trial a nested MLflow run; write the best parameters as JSON."""
    import lightning as L
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    from models.datamodule import DataModule
    from models.metrics import HEADLINE, VAL_LOSS

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    t = cfg.tune
    storage = optuna_storage.resolve(cfg)
    opened = storage.open()  # before any MLflow run: a bad storage fails fast, in one line
    # unique in a shared storage (journal, database): two studies may start in one second
    study_name = f"{cfg.model_name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
    # Trials nest under the pipeline's parent run; without a flow, under the tune run itself.
    tune_run = tracking.start_run(
        cfg.register_.experiment, "tune", parent_run_id, tags={"dlops.stage": "tune"}
    )
    c = tracking.client()
    dm = DataModule(cfg.paths.processed_dir, seed=cfg.seed)
    dm.setup()
    info = data_info(cfg.paths.processed_dir)
    headline = HEADLINE[info["task"]]["val"]
    use_cv = cv.needed(cfg, info)

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, cfg)
        trial_cfg = cfg.with_values(values)
        trial_run = tracking.start_run(
            cfg.register_.experiment,
            f"trial-{trial.number}",
            parent_run_id or tune_run,
            tags={"dlops.stage": "tune", "optuna.study": study_name},
        )
        tracking.log_params(trial_run, {**values, "arch": trial_cfg.arch})
        if use_cv:  # a small validation split: k-fold CV inside train (tasks.cv)
            return cv.run_trial(trial, trial_cfg, info, dm, trial_run, cfg.seed + trial.number)
        L.seed_everything(cfg.seed + trial.number, workers=True, verbose=False)
        b = trial_budget(trial_cfg, info)
        dm.batch_size, dm.repeats = trial_cfg.train.batch_size, b.repeats
        module = build_module(trial_cfg, info, b.epochs)
        pruning = PyTorchLightningPruningCallback(trial, monitor=VAL_LOSS)
        # trials run in this process (several processes would each start their own study)
        trainer = make_trainer(
            trial_cfg,
            b.epochs,
            [pruning],
            enable_checkpointing=False,
            devices=1,
            strategy="auto",
            max_steps=b.max_steps,
        )
        state = "COMPLETE"
        try:
            trainer.fit(module, datamodule=dm)
            pruning.check_pruned()
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except BaseException:
            state = "FAILED"
            raise
        finally:
            m = trainer.callback_metrics
            for key in (VAL_LOSS, headline):
                if key in m:
                    c.log_metric(trial_run, key, float(m[key]), step=trainer.current_epoch)
            c.set_tag(trial_run, "optuna.trial", str(trial.number))
            c.set_tag(trial_run, "optuna.state", state)
            tracking.end_run(trial_run, failed=state == "FAILED")
        return float(trainer.callback_metrics[VAL_LOSS])

    try:
        study = optuna.create_study(
            study_name=study_name,
            storage=opened,
            direction="minimize",
            sampler=optuna.samplers.TPESampler(seed=cfg.seed),
            pruner=make_pruner(t.pruner, t.max_epochs * (t.cv_folds if use_cv else 1)),
        )
        archs = cfg.search_space().get("model.arch")
        if cfg.model.arch == "auto" and isinstance(archs, Choices) and cfg.arch in archs.choices:
            # the first trial is `auto`'s own arch: a short study (or a timeout) still tries it
            study.enqueue_trial({"model.arch": cfg.arch}, skip_if_exists=True)
        study.optimize(objective, n_trials=t.n_trials, timeout=t.timeout_s)
        states = [tr.state for tr in study.trials]
        n_complete = sum(s == optuna.trial.TrialState.COMPLETE for s in states)
        n_pruned = sum(s == optuna.trial.TrialState.PRUNED for s in states)
        if n_complete == 0:
            raise RuntimeError(f"tune: no trial of study {study_name} completed")
        best = study.best_trial
        result = TuneResult(
            best_params=dict(best.params),  # dotted params.yaml paths
            best_value=float(best.value),
            best_trial=best.number,
            study_name=study_name,
            n_complete=n_complete,
            n_pruned=n_pruned,
            path=Path(cfg.paths.best_params),
            run_id=tune_run,
        )
        write_json(
            result.path,
            {
                "params": result.best_params,
                "value": result.best_value,
                "objective": f"min {VAL_LOSS}",
                "study": study_name,
                "best_trial": best.number,
                "n_trials": len(study.trials),
                "n_complete": n_complete,
                "n_pruned": n_pruned,
                # cross-validated (small validation split): what train fits on train+val
                "cv": best.user_attrs.get(cv.CV_ATTR),
            },
        )
        tracking.log_params(tune_run, {f"best.{k}": v for k, v in best.params.items()})
        c.log_metric(tune_run, f"best/{VAL_LOSS}", result.best_value)
        c.set_tag(tune_run, "optuna.study", study_name)
        c.set_tag(tune_run, "optuna.storage", storage.label)  # redacted: no password
        c.set_tag(tune_run, "optuna.best_trial", str(best.number))
    except BaseException:
        tracking.end_run(tune_run, failed=True)
        raise
    tracking.end_run(tune_run)
    return result


def main() -> None:
    """Entry point for `python -m tasks.tune` (dvc.yaml)."""
    import sys

    from tasks.runtime import setup

    argparse.ArgumentParser(description=__doc__).parse_args()
    setup()  # .env (DLOPS_OPTUNA_STORAGE), and redaction of logs and tracebacks
    try:
        r = run(load_config())
    except optuna_storage.StorageError as exc:
        sys.exit(f"tune: {exc}")
    print(
        f"tune: best trial {r.best_trial} of {r.study_name} val/loss {r.best_value:.4f} "
        f"{r.best_params} ({r.n_complete} complete, {r.n_pruned} pruned)"
    )


if __name__ == "__main__":
    main()
