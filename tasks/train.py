"""Train: the CNN with the tuned hyperparameters, early stopping and a best-epoch checkpoint."""

from __future__ import annotations

import argparse
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import tracking
from tasks.config import PARAMS_FILE, Config, load_config
from tasks.utils import atomic_dir, read_json, write_json

MODEL_WEIGHTS = "model.pt"
MODEL_SPEC = "model.json"
NORMALIZER = "normalizer.json"
CHECKPOINT = "best.ckpt"


@dataclass(frozen=True)
class TrainResult:
    """The trained model's folder, its MLflow run and its best validation figures."""

    train_dir: Path
    run_id: str
    best_val_loss: float
    best_val_acc: float
    epochs: int
    best_epoch: int


def hyperparameters(cfg: Config, tuned: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults from params.yaml (train + model), overridden by the tuned values."""
    hp: dict[str, Any] = {
        "lr": cfg.train.lr,
        "batch_size": cfg.train.batch_size,
        "weight_decay": cfg.train.weight_decay,
        "channels": cfg.model.channels,
        "dropout": cfg.model.dropout,
        "hidden": cfg.model.hidden,
    }
    hp.update(tuned or {})
    return hp


def build_module(cfg: Config, hp: dict[str, Any], max_epochs: int) -> Any:
    """The LightningModule for a set of hyperparameters."""
    from models.module import ClassifierModule
    from models.networks import CNNSpec

    spec = CNNSpec(
        channels=int(hp["channels"]),
        dropout=float(hp["dropout"]),
        hidden=int(hp["hidden"]),
        n_classes=cfg.validate_.n_classes,
    )
    return ClassifierModule(
        spec=spec.to_dict(),
        lr=float(hp["lr"]),
        weight_decay=float(hp["weight_decay"]),
        scheduler=cfg.train.scheduler,
        max_epochs=max_epochs,
        label_smoothing=cfg.train.label_smoothing,
        augment=cfg.preprocess.augment.model_dump(),
        optimizer=cfg.train.optimizer,
        momentum=cfg.train.momentum,
        nesterov=cfg.train.nesterov,
        warmup_epochs=min(cfg.train.warmup_epochs, max_epochs - 1),
        step_size=cfg.train.step_size,
        gamma=cfg.train.gamma,
    )


def make_trainer(
    cfg: Config, max_epochs: int, callbacks: list, logger: Any = False, **kwargs: Any
) -> Any:
    """A quiet, deterministic CPU trainer (one definition for tuning and training)."""
    import lightning as L
    import torch

    # 8x8 convolutions are too small to split across threads; a second thread only contends.
    torch.set_num_threads(cfg.train.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        gradient_clip_val=cfg.train.grad_clip,
        **kwargs,
    )


def _log_inputs(cfg: Config, run_id: str) -> None:
    c = tracking.client()
    if Path(PARAMS_FILE).is_file():
        c.log_artifact(run_id, PARAMS_FILE)
    result = Path(cfg.paths.validation_dir) / "result.json"
    if result.is_file():
        c.log_artifact(run_id, str(result), "validation")
        success = read_json(result).get("success")
        c.set_tag(run_id, "validation.success", str(bool(success)).lower())


def run(cfg: Config, parent_run_id: str | None = None) -> TrainResult:
    """Train with early stopping on val/loss; write weights, spec and normalizer to train_dir."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger

    from models.datamodule import DigitsDataModule
    from models.metrics import VAL_ACC, VAL_LOSS

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    best_path = Path(cfg.paths.best_params)
    tuned = read_json(best_path)["params"] if best_path.is_file() else {}
    hp = hyperparameters(cfg, tuned)
    module = build_module(cfg, hp, cfg.train.max_epochs)
    dm = DigitsDataModule(cfg.paths.processed_dir, batch_size=int(hp["batch_size"]), seed=cfg.seed)

    run_id = tracking.start_run(
        cfg.register_.experiment, "train", parent_run_id, tags={"dlops.stage": "train"}
    )
    try:
        _log_inputs(cfg, run_id)
        tracking.client().log_param(run_id, "batch_size", int(hp["batch_size"]))
        logger = MLFlowLogger(
            experiment_name=cfg.register_.experiment,
            run_id=run_id,
            tracking_uri=tracking.tracking_uri(),
        )
        with atomic_dir(cfg.paths.train_dir) as out:
            ckpt = ModelCheckpoint(
                dirpath=out, filename="best", monitor=VAL_LOSS, mode="min", save_top_k=1
            )
            stop = EarlyStopping(monitor=VAL_LOSS, mode="min", patience=cfg.train.patience)
            trainer = make_trainer(cfg, cfg.train.max_epochs, [ckpt, stop], logger=logger)
            trainer.fit(module, datamodule=dm)
            state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)
            net_state = {
                k.removeprefix("net."): v
                for k, v in state["state_dict"].items()
                if k.startswith("net.")
            }
            torch.save(net_state, out / MODEL_WEIGHTS)
            shutil.copy(Path(cfg.paths.processed_dir) / NORMALIZER, out / NORMALIZER)
            best_epoch = int(state["epoch"])
            module.net.load_state_dict(net_state)
            # re-score the best epoch without the logger, so the history keeps one point per epoch
            scorer = make_trainer(cfg, 1, [], enable_checkpointing=False)
            val = scorer.validate(module, datamodule=dm, verbose=False)[0]
            write_json(
                out / MODEL_SPEC,
                {
                    "arch": "cnn",
                    "spec": module.spec.to_dict(),
                    "hyperparameters": hp,
                    "mlflow_run_id": run_id,
                    "best_epoch": best_epoch,
                },
            )
        result = TrainResult(
            train_dir=Path(cfg.paths.train_dir),
            run_id=run_id,
            best_val_loss=float(val[VAL_LOSS]),
            best_val_acc=float(val[VAL_ACC]),
            epochs=int(trainer.current_epoch),
            best_epoch=best_epoch,
        )
        write_json(
            cfg.paths.train_metrics,
            {
                "best_val_loss": result.best_val_loss,
                "best_val_acc": result.best_val_acc,
                "epochs": result.epochs,
                "best_epoch": result.best_epoch,
            },
        )
        c = tracking.client()
        c.log_metric(run_id, "best/val_loss", result.best_val_loss)
        c.log_metric(run_id, "best/val_acc", result.best_val_acc)
        c.log_metric(run_id, "best/epoch", best_epoch)
    except BaseException:
        tracking.end_run(run_id, failed=True)
        raise
    tracking.end_run(run_id)
    return result


def main() -> None:
    """Entry point for `python -m tasks.train` (dvc.yaml)."""
    argparse.ArgumentParser(description=__doc__).parse_args()
    r = run(load_config())
    print(
        f"train: best val/acc {r.best_val_acc:.4f} val/loss {r.best_val_loss:.4f} at epoch "
        f"{r.best_epoch} of {r.epochs}; MLflow run {r.run_id}"
    )


if __name__ == "__main__":
    main()
