"""The Lightning machinery of tuning, training and scoring: module and trainer factories, DDP.

`build_module` makes the task's LightningModule from a config and the processed data's facts;
`make_trainer` the one quiet, deterministic Trainer definition; `strategy`, `launched_rank` and
`single_process` the DDP plumbing (spawned CPU processes, torchrun, SLURM). `tasks/` only
orchestrates: editing this file re-runs the stages that train (dvc.yaml deps), nothing else.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.config import Config


def build_module(cfg: Config, info: dict[str, Any], max_epochs: int) -> Any:
    """The task's LightningModule for a config (tuned values applied) and the processed data."""
    import numpy as np

    from models.module import module_class
    from models.networks import NetSpec

    m, t, task = cfg.model, cfg.train, info["task"]
    spec = NetSpec(
        arch=cfg.arch,
        input_shape=tuple(info["input_shape"]),
        n_outputs=int(info["n_outputs"]),
        activation=m.activation,
        dropout=m.dropout,
        batch_norm=m.batch_norm,
        init=m.init,
        options=getattr(m, cfg.arch).model_dump(),
    )
    weights = None
    if task == "classification" and t.class_weights == "balanced":
        counts = np.maximum(np.asarray(info["class_counts"]["train"], dtype=np.float64), 1)
        weights = (counts.sum() / (len(counts) * counts)).tolist()
    return module_class(task)(
        spec=spec.to_dict(),
        modality=info["modality"],
        lr=t.lr,
        weight_decay=t.weight_decay,
        optimizer=t.optimizer,
        momentum=t.momentum,
        nesterov=t.nesterov,
        scheduler=t.scheduler,
        max_epochs=max_epochs,
        warmup_epochs=min(t.warmup_epochs, max_epochs - 1),
        step_size=t.step_size,
        gamma=t.gamma,
        augment=cfg.preprocess.augment.model_dump(),
        loss=cfg.loss(task),
        label_smoothing=t.label_smoothing,
        class_weights=weights,
        huber_delta=t.huber_delta,
        target_std=float(info.get("target_std", 1.0)),
    )


def strategy(cfg: Config) -> str:
    """Lightning's strategy: several CPU processes spawn (in-process flow), torchrun uses ddp."""
    t = cfg.train
    if t.strategy != "auto" or t.devices == 1:
        return t.strategy
    launched = "LOCAL_RANK" in os.environ or "SLURM_NTASKS" in os.environ
    return "ddp" if launched or t.accelerator == "gpu" else "ddp_spawn"


LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "TORCHELASTIC_RUN_ID",
    "SLURM_NTASKS",
    "SLURM_JOB_NAME",
    "SLURM_PROCID",
    "SLURM_LOCALID",
)


def launched_rank() -> int | None:
    """This process's rank when a launcher (torchrun, SLURM) started several; else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return None


@contextlib.contextmanager
def single_process() -> Iterator[None]:
    """Leave the launcher's process group and hide its variables, for a one-device trainer.

    Rank zero re-scores the best epoch alone after a torchrun/SLURM fit.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    saved = {k: os.environ.pop(k) for k in LAUNCHER_VARS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def make_trainer(
    cfg: Config, max_epochs: int, callbacks: list, logger: Any = False, **kwargs: Any
) -> Any:
    """A quiet, deterministic trainer (one definition for tuning, training and scoring)."""
    import lightning as L
    import torch

    # Small convolutions are too small to split across threads; a second thread only contends.
    torch.set_num_threads(cfg.train.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*is an invalid version and will not be supported.*")
    warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
    options: dict[str, Any] = {
        "accelerator": cfg.train.accelerator,
        "devices": cfg.train.devices,
        "strategy": strategy(cfg),
        "precision": cfg.train.precision,
        "deterministic": cfg.train.deterministic,
        "gradient_clip_val": cfg.train.grad_clip,
    }
    options.update(kwargs)
    return L.Trainer(
        max_epochs=max_epochs,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        **options,
    )
