"""Cross-validated trial scores for small data (called by the tune objective).

A validation split of a handful of examples cannot tell two trials apart: when it holds fewer
than `tune.min_val_examples`, each trial is scored by stratified, seeded k-fold CV inside the
training split instead (the validation split is not used), and train then fits
train+validation for the tuned number of steps (tasks.train.tuned_cv).

Pruning works per fold: the fold `i`'s epoch `e` is reported to Optuna at step
`i * epochs + e`, the same step for every trial (the folds are the same for all trials), so
the pruner compares like with like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tasks.config import Config

CV_ATTR = "cv"  # the Optuna trial's user attribute that holds the CV record


@dataclass(frozen=True)
class CVScore:
    """A trial's k-fold score and what the final fit needs of it."""

    value: float  # mean over folds of each fold's best val/loss
    fold_losses: list[float]
    fold_best_epochs: list[int]
    epochs: int  # epochs per fold (the trial's budget)
    steps: int  # the tuned steps, for a fit on train+validation
    record: dict[str, Any] = field(default_factory=dict)


def needed(cfg: Config, info: dict[str, Any]) -> bool:
    """True when the validation split is too small to score trials on (split.json counts)."""
    return int(info["counts"].get("val", 0)) < cfg.tune.min_val_examples


def folds(y: Any, k: int, seed: int, classification: bool) -> list[tuple[Any, Any]]:
    """(train indices, held-out indices) of seeded k folds, stratified for classification.

    k shrinks to the size of the smallest class (each fold holds every class), at least 2.
    """
    import numpy as np
    from sklearn.model_selection import KFold, StratifiedKFold

    y = np.asarray(y)
    if classification:
        smallest = min(c for c in np.bincount(y) if c > 0)
        k = max(2, min(k, smallest))
        splitter: Any = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(y)), y))
    splitter = KFold(n_splits=max(2, min(k, len(y))), shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y))))


def score(
    cfg: Config, info: dict[str, Any], dm: Any, trial: Any = None, seed: int | None = None
) -> CVScore:
    """Score a trial's config by k-fold CV on `dm`'s training split (set up already).

    `trial` (optuna) receives each fold's per-epoch val/loss and may prune; the CV record is
    stored in its user attributes (`cv`), from which tune writes best_params.json.
    """
    import lightning as L
    import optuna
    import torch
    from lightning.pytorch.callbacks import Callback
    from torch.utils.data import TensorDataset

    from models.datamodule import DataModule
    from models.metrics import VAL_LOSS
    from models.trainer import build_module, make_trainer
    from models.training import budget

    t = cfg.tune
    seed = cfg.seed if seed is None else seed
    x, y = dm.datasets["train"].tensors
    classification = info["task"] == "classification"
    splits = folds(y.numpy(), t.cv_folds, cfg.seed, classification)  # the same for all trials
    bs = cfg.train.batch_size
    b = budget(max(len(tr) for tr, _ in splits), bs, t.max_epochs, t.min_steps, t.max_steps)

    class Report(Callback):
        """Record each epoch's val/loss; report it to the trial at the fold's offset."""

        def __init__(self, offset: int) -> None:
            self.offset, self.losses, self.pruned = offset, [], False

        def on_validation_end(self, trainer: Any, module: Any) -> None:
            loss = float(trainer.callback_metrics[VAL_LOSS])
            self.losses.append(loss)
            if trial is not None:
                trial.report(loss, self.offset + len(self.losses) - 1)
                if trial.should_prune():
                    self.pruned, trainer.should_stop = True, True

    losses, best_epochs = [], []
    for i, (tr, ho) in enumerate(splits):
        L.seed_everything(seed + 1000 * i, workers=True, verbose=False)
        fold = DataModule(dm.processed_dir, batch_size=bs, seed=seed + i, repeats=b.repeats)
        tr_t, ho_t = torch.as_tensor(tr), torch.as_tensor(ho)
        fold.datasets = {
            "train": TensorDataset(x[tr_t], y[tr_t]),
            "val": TensorDataset(x[ho_t], y[ho_t]),
        }
        report = Report(i * b.epochs)
        trainer = make_trainer(
            cfg,
            b.epochs,
            [report],
            enable_checkpointing=False,
            devices=1,
            strategy="auto",
            max_steps=b.max_steps,
        )
        trainer.fit(build_module(cfg, info, b.epochs), datamodule=fold)
        if report.pruned:
            raise optuna.TrialPruned(f"pruned in fold {i}")
        best = min(range(len(report.losses)), key=report.losses.__getitem__)
        losses.append(report.losses[best])
        best_epochs.append(best)
    # The tuned length, in passes over the examples, turned into steps on train+validation.
    passes = sum((e + 1) * b.repeats for e in best_epochs) / len(best_epochs)
    n_full = int(info["counts"]["train"]) + int(info["counts"].get("val", 0))
    steps = max(1, math.ceil(passes * n_full / bs))
    value = sum(losses) / len(losses)
    record = {
        "folds": len(splits),
        "fold_losses": losses,
        "fold_best_epochs": best_epochs,
        "epochs": b.epochs,
        "repeats": b.repeats,
        "steps": steps,
        "value": value,
    }
    if trial is not None:
        trial.set_user_attr(CV_ATTR, record)
    return CVScore(value, losses, best_epochs, b.epochs, steps, record)


def run_trial(
    trial: Any, cfg: Config, info: dict[str, Any], dm: Any, run_id: str, seed: int
) -> float:
    """The tune objective's k-fold branch: score, log to the trial's MLflow run, close it.

    Logs `cv/fold_val_loss` per fold, `val/loss` (the mean) and `cv/steps`; tags the run with
    its Optuna state (COMPLETE, PRUNED, FAILED) and `dlops.cv`.
    """
    from models.metrics import VAL_LOSS
    from tasks import tracking

    c = tracking.client()
    with tracking.trial_run(run_id, trial, {"dlops.cv": "true"}):
        scored = score(cfg, info, dm, trial, seed=seed)
        for i, loss in enumerate(scored.fold_losses):
            c.log_metric(run_id, "cv/fold_val_loss", loss, step=i)
        c.log_metric(run_id, VAL_LOSS, scored.value)
        c.log_metric(run_id, "cv/steps", scored.steps)
        return scored.value
