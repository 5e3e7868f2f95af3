"""Train: the configured network with the tuned values, early stopping, best and last checkpoints.

Checkpoints go to `paths.checkpoint_dir` while training: `last.ckpt` after every epoch (with the
RNG states and a fingerprint of what is being trained) and `best.ckpt`. `--resume` (and the
flow's retry of this task) continues from `last.ckpt` when its fingerprint matches, in the same
MLflow run, and ends with the metrics of the uninterrupted training. `train.devices` > 1 runs
Lightning DDP (gloo on CPU; processes spawned by `run()` itself) and logs to one MLflow run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the Lightning factories live in models/ (re-exported: tune, cv and tests import them here)
from models.trainer import (  # noqa: E402, F401
    LAUNCHER_VARS,
    build_module,
    launched_rank,
    make_trainer,
    single_process,
    strategy,
)
from tasks import tracking
from tasks.config import PARAMS_FILE, Config
from tasks.utils import atomic_dir, read_json, write_json

MODEL_WEIGHTS = "model.pt"
MODEL_SPEC = "model.json"
PREPROCESSOR = "preprocessor.json"
BEST = "best"
LAST = "last"
FINGERPRINT = "fingerprint.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """The trained model's folder, its MLflow run and its best validation figures."""

    train_dir: Path
    run_id: str
    best_val_loss: float
    best_val_metric: float
    metric_name: str
    epochs: int
    best_epoch: int
    resumed_from_epoch: int | None
    steps: int = 0  # optimizer steps taken (the budget: models.training)


def tuned_config(cfg: Config) -> Config:
    """params.yaml with the tuned values (reports/tune/best_params.json) applied."""
    path = Path(cfg.paths.best_params)
    tuned = read_json(path)["params"] if path.is_file() else {}
    return cfg.with_values(tuned) if tuned else cfg


def tuned_cv(cfg: Config) -> dict[str, Any] | None:
    """The cross-validation record of the tuned trial (best_params.json "cv"), if tune used CV.

    With it, train fits train+validation for the tuned number of steps, without early stopping
    (the validation split was too small to choose a model on; models.cv scored the folds).
    """
    path = Path(cfg.paths.best_params)
    return read_json(path).get("cv") if path.is_file() else None


def train_budget(cfg: Config, info: dict[str, Any]) -> Any:
    """The training budget (models.training.Budget) for the processed data and `train.*`."""
    from models.training import budget, fixed_budget

    t, counts = cfg.train, info["counts"]
    cv = tuned_cv(cfg)
    if cv:
        n = int(counts["train"]) + int(counts.get("val", 0))
        return fixed_budget(n, t.batch_size, int(cv["steps"]), t.max_epochs)
    world = t.devices if launched_rank() is not None or t.devices > 1 else 1
    return budget(
        int(counts["train"]), t.batch_size, t.max_epochs, t.min_steps, t.max_steps, world
    )


def trial_budget(cfg: Config, info: dict[str, Any]) -> Any:
    """A tuning trial's budget (`tune.max_epochs`, `tune.min_steps`, `tune.max_steps`)."""
    from models.training import budget

    t = cfg.tune
    return budget(
        int(info["counts"]["train"]), cfg.train.batch_size, t.max_epochs, t.min_steps, t.max_steps
    )


def data_info(processed_dir: str | Path) -> dict[str, Any]:
    """split.json plus what the network needs from the fitted preprocessor."""
    from models.preprocessing import load

    folder = Path(processed_dir)
    info = read_json(folder / "split.json")
    pre = load(folder / PREPROCESSOR)
    info["n_outputs"] = pre.target.n_outputs
    info["target_std"] = pre.target.std
    info["input_shape"] = list(pre.input_shape)
    return info


def fingerprint(cfg: Config) -> str:
    """What a checkpoint must match to be resumed: every training input and parameter."""
    h = hashlib.sha256()
    h.update(cfg.section_hash("seed", "model", "train", "preprocess.augment").encode())
    for name in ("split.json", PREPROCESSOR):
        h.update((Path(cfg.paths.processed_dir) / name).read_bytes())
    best = Path(cfg.paths.best_params)
    if best.is_file():
        h.update(json.dumps(read_json(best).get("params"), sort_keys=True).encode())
    return h.hexdigest()


def resumable(cfg: Config, print_fn: Any = log.info) -> tuple[Path | None, str | None]:
    """The last checkpoint and its MLflow run when they belong to this very training."""
    folder = Path(cfg.paths.checkpoint_dir)
    last, meta = folder / f"{LAST}.ckpt", folder / FINGERPRINT
    if not (last.is_file() and meta.is_file()):
        print_fn(f"train: nothing to resume in {folder}; starting from scratch")
        return None, None
    saved = read_json(meta)
    if saved.get("fingerprint") != fingerprint(cfg):
        print_fn(f"train: {last} belongs to other parameters or data; starting from scratch")
        return None, None
    import torch

    try:  # a copy cut short (temp file on another filesystem, disk full) does not load
        torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        print_fn(f"train: {last} is unreadable ({type(exc).__name__}); starting from scratch")
        return None, None
    return last, saved.get("run_id")


def _log_checkpointed_epoch(run_id: str, state: dict[str, Any]) -> None:
    """Log the checkpoint's epoch training metrics when the kill came before the logger did."""
    from mlflow.entities import Metric

    from models.module import EPOCH_METRICS_KEY

    pending = state.get(EPOCH_METRICS_KEY) or {}
    if not pending:
        return
    # Lightning logs epoch-end metrics at the epoch's last optimizer step.
    step = int(state["global_step"]) - 1
    c = tracking.client()
    if any(m.step == step for m in c.get_metric_history(run_id, next(iter(pending)))):
        return
    now = int(time.time() * 1000)
    values = {**pending, "epoch": float(state["epoch"])}
    c.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])


def _log_inputs(cfg: Config, run_id: str) -> None:
    c = tracking.client()
    if Path(PARAMS_FILE).is_file():
        c.log_artifact(run_id, PARAMS_FILE)
    result = Path(cfg.paths.validation_dir) / "result.json"
    if result.is_file():
        c.log_artifact(run_id, str(result), "validation")
        success = read_json(result).get("success")
        c.set_tag(run_id, "validation.success", str(bool(success)).lower())


def close_killed_run(ckpt_dir: Path) -> str | None:
    """faults: a training killed mid-way left its run RUNNING and its id in the checkpoints.

    A training that starts afresh (the stage holds the workspace's DVC lock: `dvc repro`,
    `dlops train`, the flow) marks that run FAILED with the reason before it drops the
    checkpoints; a pipeline's rerun has usually closed it already. Returns the run id closed.
    """
    meta = ckpt_dir / FINGERPRINT
    run_id = read_json(meta).get("run_id") if meta.is_file() else None
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    c = tracking.client()
    try:
        run = c.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None  # another store's run
    if run.info.status != "RUNNING":
        return None
    c.set_tag(
        run_id,
        tracking.ORPHAN_TAG,
        f"training ended without closing this run (killed); its checkpoints in {ckpt_dir} were "
        "dropped by the next training, which started afresh",
    )
    c.set_terminated(run_id, status="FAILED")
    return run_id


def _open_run(cfg: Config, parent_run_id: str | None, resume_run: str | None) -> str:
    if resume_run:
        from mlflow.exceptions import MlflowException

        try:
            tracking.client().update_run(resume_run, status="RUNNING")
            return resume_run
        except MlflowException as exc:  # faults: only a missing run means "a new one"
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise  # network, credentials, a locked database: not a reason to fork the run
            log.warning("train: checkpoint run %s is not in this store: new run", resume_run)
    return tracking.start_run(
        cfg.register_.experiment, "train", parent_run_id, tags={"dlops.stage": "train"}
    )


def _fit_parts(
    cfg: Config, info: dict[str, Any], ckpt_dir: Path | None = None
) -> tuple[Any, Any, list, Any]:
    """Seeded module, DataModule, callbacks (best, last, early stop), budget: as every rank.

    After cross-validated tuning: train+validation, the tuned steps, no early stopping.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from torch.utils.data import ConcatDataset

    from models.datamodule import DataModule
    from models.metrics import VAL_LOSS
    from models.progress import Progress
    from tasks.testhook import pause_point

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    b = train_budget(cfg, info)
    module = build_module(cfg, info, b.epochs)
    dm = DataModule(
        cfg.paths.processed_dir, batch_size=cfg.train.batch_size, seed=cfg.seed, repeats=b.repeats
    )
    ckpt_dir = ckpt_dir or Path(cfg.paths.checkpoint_dir)
    # every epoch: `save_last=True` writes only in epochs that improve val/loss (Lightning 2.6)
    last = ModelCheckpoint(dirpath=ckpt_dir, filename=LAST, enable_version_counter=False)
    if tuned_cv(cfg):
        dm.setup()
        dm.datasets["train"] = ConcatDataset([dm.datasets["train"], dm.datasets["val"]])
        return module, dm, [last], b  # no validation to choose on: the best is the last
    callbacks = [
        ModelCheckpoint(dirpath=ckpt_dir, filename=BEST, monitor=VAL_LOSS, mode="min"),
        last,
        EarlyStopping(monitor=VAL_LOSS, mode="min", patience=cfg.train.patience),
        # faults: per-epoch progress on the logger "dlops"; the test hook (tasks/testhook.py)
        Progress("train", after_first_epoch=functools.partial(pause_point, "train")),
    ]
    return module, dm, callbacks, b


def run(cfg: Config, parent_run_id: str | None = None, resume: bool = False) -> TrainResult:
    """Train with early stopping on val/loss; write weights, spec and preprocessor to train_dir."""
    import torch
    from lightning.pytorch.loggers import MLFlowLogger

    from models.metrics import HEADLINE, VAL_LOSS

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    cfg = tuned_config(cfg)
    info = data_info(cfg.paths.processed_dir)
    metric_name = HEADLINE[info["task"]]["val"]
    ckpt_dir = Path(cfg.paths.checkpoint_dir)
    rank = launched_rank()
    if rank:  # a torchrun/SLURM worker: trains its shard; rank zero logs and writes
        return _worker(cfg, info, resume)
    last, resume_run = resumable(cfg, print) if resume else (None, None)
    if last is None:
        close_killed_run(ckpt_dir)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    module, dm, callbacks, b = _fit_parts(cfg, info)

    run_id = _open_run(cfg, parent_run_id, resume_run)
    resumed_epoch = None
    try:
        if last is None:
            _log_inputs(cfg, run_id)
            tracking.log_params(
                run_id,
                {
                    "arch": cfg.arch,
                    "task": info["task"],
                    "modality": info["modality"],
                    "budget.epochs": b.epochs,
                    "budget.repeats": b.repeats,
                    "budget.steps": b.total_steps,
                    "budget.train_on": "train+val" if tuned_cv(cfg) else "train",
                },
            )
        else:
            tracking.client().set_tag(run_id, "dlops.resumed_from", str(last))
            state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
            resumed_epoch = int(state["epoch"])
            _log_checkpointed_epoch(run_id, state)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_json(ckpt_dir / FINGERPRINT, {"fingerprint": fingerprint(cfg), "run_id": run_id})
        logger = MLFlowLogger(
            experiment_name=cfg.register_.experiment,
            run_id=run_id,
            tracking_uri=tracking.tracking_uri(),
            log_model=False,
        )
        ckpt = callbacks[0]
        trainer = make_trainer(cfg, b.epochs, callbacks, logger=logger, max_steps=b.max_steps)
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last else None)
        best_path = Path(ckpt.best_model_path or ckpt_dir / f"{BEST}.ckpt")
        state = torch.load(best_path, map_location="cpu", weights_only=True)
        net_state = {
            k.removeprefix("net."): v
            for k, v in state["state_dict"].items()
            if k.startswith("net.")
        }
        best_epoch = int(state["epoch"])
        # under ddp_spawn this process's trainer does not count the epochs: last.ckpt does
        last_ckpt = ckpt_dir / f"{LAST}.ckpt"
        last_state = torch.load(last_ckpt, weights_only=True, mmap=True)
        epochs, steps = int(last_state["epoch"]) + 1, int(last_state["global_step"])
        module.net.load_state_dict(net_state)
        if cfg.train.ensemble > 1:
            from models.networks import Ensemble

            members = [module.net]
            with tempfile.TemporaryDirectory(dir=ckpt_dir) as tmp:
                for i in range(1, cfg.train.ensemble):
                    members.append(_fit_member(cfg, info, i, Path(tmp) / f"member-{i}"))
            module.net = Ensemble(members, info["task"])
            net_state = module.net.state_dict()
        # re-score the best epoch in this process, without the logger (one point per epoch)
        with single_process() if rank is not None else contextlib.nullcontext():
            scorer = make_trainer(
                cfg,
                1,
                [],
                enable_checkpointing=False,
                devices=1,
                strategy="auto",
                precision="32-true",
            )
            val = scorer.validate(module, datamodule=dm, verbose=False)[0]
        with atomic_dir(cfg.paths.train_dir) as out:
            torch.save(net_state, out / MODEL_WEIGHTS)
            shutil.copy(Path(cfg.paths.processed_dir) / PREPROCESSOR, out / PREPROCESSOR)
            shutil.copy(best_path, out / f"{BEST}.ckpt")
            shutil.copy(last_ckpt, out / f"{LAST}.ckpt")
            write_json(
                out / MODEL_SPEC,
                {
                    "arch": cfg.arch,
                    "task": info["task"],
                    "modality": info["modality"],
                    "spec": module.spec.to_dict(),
                    "ensemble": cfg.train.ensemble,
                    "hyperparameters": dict(module.hparams),
                    "batch_size": cfg.train.batch_size,
                    "mlflow_run_id": run_id,
                    "best_epoch": best_epoch,
                    "steps": steps,
                },
            )
        result = TrainResult(
            train_dir=Path(cfg.paths.train_dir),
            run_id=run_id,
            best_val_loss=float(val[VAL_LOSS]),
            best_val_metric=float(val[metric_name]),
            metric_name=metric_name,
            epochs=epochs,
            best_epoch=best_epoch,
            resumed_from_epoch=resumed_epoch,
            steps=steps,
        )
        write_json(
            cfg.paths.train_metrics,
            {
                "best_val_loss": result.best_val_loss,
                f"best_{metric_name.replace('/', '_')}": result.best_val_metric,
                "epochs": result.epochs,
                "best_epoch": result.best_epoch,
                "steps": steps,
            },
        )
        c = tracking.client()
        cv = tuned_cv(cfg)
        if cv:  # the validation split was trained on: the honest estimate is the CV score
            c.log_metric(run_id, "cv/val_loss", float(cv["value"]))
            c.set_tag(run_id, "dlops.val_in_training", "true")
        c.log_metric(run_id, "best/val_loss", result.best_val_loss)
        c.log_metric(run_id, f"best/{metric_name}", result.best_val_metric)
        c.log_metric(run_id, "best/epoch", best_epoch)
    except BaseException:
        tracking.end_run(run_id, failed=True)
        raise
    tracking.end_run(run_id)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # train_dir holds best.ckpt and last.ckpt now
    return result


def _fit_member(cfg: Config, info: dict[str, Any], i: int, ckpt_dir: Path) -> Any:
    """Ensemble member i: the same fit with seed + i, its best network (no MLflow, no files)."""
    import torch

    member_cfg = cfg.with_values({"seed": cfg.seed + i})
    module, dm, callbacks, b = _fit_parts(member_cfg, info, ckpt_dir)
    trainer = make_trainer(member_cfg, b.epochs, callbacks, max_steps=b.max_steps)
    trainer.fit(module, datamodule=dm)
    state = torch.load(callbacks[0].best_model_path, map_location="cpu", weights_only=True)
    module.net.load_state_dict(
        {k.removeprefix("net."): v for k, v in state["state_dict"].items() if k.startswith("net.")}
    )
    return module.net.eval()


def _worker(cfg: Config, info: dict[str, Any], resume: bool) -> TrainResult:
    """A non-zero rank under torchrun or SLURM: the same fit, no MLflow run, no files."""
    from models.metrics import HEADLINE

    last, _ = resumable(cfg, lambda _: None) if resume else (None, None)
    # the same callbacks as rank zero (their state is synchronized), which alone writes files
    module, dm, callbacks, b = _fit_parts(cfg, info)
    trainer = make_trainer(cfg, b.epochs, callbacks, max_steps=b.max_steps)
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last else None)
    nan = float("nan")
    metric = HEADLINE[info["task"]]["val"]
    return TrainResult(Path(cfg.paths.train_dir), "", nan, nan, metric, 0, -1, None)


def main() -> None:
    """Entry point for `python -m tasks.train` (dvc.yaml); `--resume` continues a killed run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint if it matches"
    )
    args = parser.parse_args()
    from tasks.entry import run_stage

    def body(cfg: Config) -> str:
        r = run(cfg, resume=args.resume)
        if not r.run_id:  # a worker rank: rank zero reports
            return ""
        return (
            f"train: best {r.metric_name} {r.best_val_metric:.4f} val/loss "
            f"{r.best_val_loss:.4f} at epoch {r.best_epoch} of {r.epochs}; MLflow run {r.run_id}"
        )

    run_stage("train", body, check_upstream=launched_rank() in (None, 0))


if __name__ == "__main__":
    main()
