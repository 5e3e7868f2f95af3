"""Optimizers and learning-rate schedules by name (the `train` section of params.yaml)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from models.metrics import VAL_LOSS

OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop")
SCHEDULERS = ("cosine", "step", "onecycle", "plateau", "none")


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """Adam/AdamW (decoupled decay for AdamW, L2 for the others), SGD or RMSprop."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (known: {', '.join(OPTIMIZERS)})")


def build_scheduler(
    opt: torch.optim.Optimizer,
    name: str,
    max_epochs: int,
    total_steps: int = 0,
    warmup_epochs: int = 0,
    step_size: int | None = None,
    gamma: float = 0.1,
) -> dict[str, Any] | None:
    """A Lightning `lr_scheduler` config, or None for a constant rate.

    `warmup_epochs` ramps the rate linearly from a tenth before cosine or step decay; one-cycle
    has its own warm-up and steps per batch; plateau lowers the rate when val/loss stalls.
    """
    if name == "none":
        return None
    if name == "onecycle":
        max_lr = [group["lr"] for group in opt.param_groups]
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total_steps)
        return {"scheduler": sched, "interval": "step"}
    if name == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=gamma, patience=2)
        return {"scheduler": sched, "interval": "epoch", "monitor": VAL_LOSS}
    decay_epochs = max(1, max_epochs - warmup_epochs)
    if name == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=decay_epochs)
    elif name == "step":
        size = step_size or max(1, decay_epochs // 3)
        main = torch.optim.lr_scheduler.StepLR(opt, step_size=size, gamma=gamma)
    else:
        raise ValueError(f"unknown scheduler {name!r} (known: {', '.join(SCHEDULERS)})")
    if warmup_epochs > 0:
        warm = torch.optim.lr_scheduler.LinearLR(
            opt, start_factor=0.1, end_factor=1.0, total_iters=warmup_epochs
        )
        main = torch.optim.lr_scheduler.SequentialLR(opt, [warm, main], milestones=[warmup_epochs])
    return {"scheduler": main, "interval": "epoch"}
