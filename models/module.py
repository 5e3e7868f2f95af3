"""LightningModules: one per task type, each wrapping any network of models.networks.

Both share `TaskModule`: hyperparameters saved, the network built from its spec, augmentation
on training batches, one shared step, one torchmetrics object per split and metric (loss and
headline) updated per step and logged once per epoch (torchmetrics reduces them across DDP
processes), and the optimizer and LR schedule by name (models.optim). The RNG states travel in
checkpoints, so a resumed training continues the uninterrupted one exactly, and so do the
epoch's training metrics, which reach the logger only after the checkpoint is written.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MeanSquaredError, Metric
from torchmetrics.classification import MulticlassAccuracy

from models.augment import build_augment
from models.metrics import HEADLINE, LOSS
from models.networks import NetSpec, build_network
from models.optim import build_optimizer, build_scheduler

RNG_KEY = "dlops_rng"
EPOCH_METRICS_KEY = "dlops_train_metrics"


class TaskModule(L.LightningModule):
    """What classification and regression share."""

    task = ""

    def __init__(
        self,
        spec: dict[str, Any],
        modality: str = "images",
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        optimizer: str = "adamw",
        momentum: float = 0.9,
        nesterov: bool = False,
        scheduler: str = "cosine",
        max_epochs: int = 30,
        warmup_epochs: int = 0,
        step_size: int | None = None,
        gamma: float = 0.1,
        augment: dict[str, Any] | None = None,
        loss: str = "cross_entropy",
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        huber_delta: float = 1.0,
        target_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = NetSpec.from_dict(spec)
        self.net = build_network(self.spec)
        self.augment = build_augment(modality, augment or {"p": 0.0})
        # One torchmetrics object per split and metric: updated per step, computed (and reduced
        # across DDP processes) once per epoch; a `self.log` per step costs more than the step
        # itself on small models.
        self.metrics = nn.ModuleDict(
            {
                f"{split}_metrics": nn.ModuleDict(
                    {"loss": MeanMetric(), "headline": self.headline_metric()}
                )
                for split in ("train", "val", "test")  # ("train" would shadow Module.train)
            }
        )
        self._train_logged_epoch = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's raw outputs for a batch of preprocessed inputs."""
        return self.net(x)

    def loss_fn(self, out: torch.Tensor, y: torch.Tensor, split: str) -> torch.Tensor:
        """The task's loss."""
        raise NotImplementedError

    def headline_metric(self) -> Metric:
        """A fresh torchmetrics object of the task's headline metric."""
        raise NotImplementedError

    def update_headline(self, metric: Metric, out: torch.Tensor, y: torch.Tensor) -> None:
        """Feed one batch to the headline metric."""
        metric.update(out, y)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, y = batch
        if split == "train":
            x = self.augment(x)
        out = self(x)
        loss = self.loss_fn(out, y, split)
        with torch.no_grad():
            m = self.metrics[f"{split}_metrics"]
            m["loss"].update(loss.detach().float(), weight=len(y))
            self.update_headline(m["headline"], out.detach().float(), y)
        return loss

    def _log_epoch(self, split: str) -> None:
        m = self.metrics[f"{split}_metrics"]
        if not m["loss"].update_called:
            return
        values = {
            LOSS[split]: m["loss"].compute(),
            HEADLINE[self.task][split]: m["headline"].compute(),
        }
        self.log_dict(values, prog_bar=split == "val")
        m["loss"].reset()
        m["headline"].reset()
        if split == "train":
            self._train_logged_epoch = self.current_epoch

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """One optimization step."""
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Validation loss and metric."""
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Test loss and metric."""
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        """Log the epoch's training loss and metric."""
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        """Log the epoch's validation loss and metric (read by early stopping and pruning)."""
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        """Log the test loss and metric."""
        self._log_epoch("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the RNG states, so that a resumed run draws what the uninterrupted one would."""
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # tensors and plain values only, so that the checkpoint loads with weights_only=True
        checkpoint[RNG_KEY] = {
            "torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "python": random.getstate(),
        }
        # Lightning writes the checkpoint at the end of a training epoch, before it hands that
        # epoch's training metrics to the logger: a run killed in between logs them on resume.
        if self._train_logged_epoch == checkpoint["epoch"]:
            logged = self.trainer.callback_metrics  # reduced across processes under DDP
            names = (LOSS["train"], HEADLINE[self.task]["train"])
            checkpoint[EPOCH_METRICS_KEY] = {k: float(logged[k]) for k in names if k in logged}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the RNG states saved with the checkpoint."""
        state = checkpoint.get(RNG_KEY)
        if state:
            torch.set_rng_state(state["torch"])
            kind, keys, pos, has_gauss, gauss = state["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            random.setstate(state["python"])

    def configure_optimizers(self) -> Any:
        """The optimizer and LR schedule named in the hyperparameters."""
        hp = self.hparams
        opt = build_optimizer(
            self.parameters(), hp.optimizer, hp.lr, hp.weight_decay, hp.momentum, hp.nesterov
        )
        total = int(self.trainer.estimated_stepping_batches) if hp.scheduler == "onecycle" else 0
        sched = build_scheduler(
            opt, hp.scheduler, hp.max_epochs, total, hp.warmup_epochs, hp.step_size, hp.gamma
        )
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}


class ClassifierModule(TaskModule):
    """Cross-entropy (label smoothing, class weights); accuracy."""

    task = "classification"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        weights = self.hparams.class_weights
        self.register_buffer(
            "class_weights", torch.tensor(weights, dtype=torch.float32) if weights else None
        )

    def loss_fn(self, out: torch.Tensor, y: torch.Tensor, split: str) -> torch.Tensor:
        """Cross-entropy; smoothing and class weights on training batches only."""
        train = split == "train"
        return F.cross_entropy(
            out,
            y,
            weight=self.class_weights if train else None,
            label_smoothing=self.hparams.label_smoothing if train else 0.0,
        )

    def headline_metric(self) -> Metric:
        """Accuracy (micro: correct predictions over rows)."""
        return MulticlassAccuracy(num_classes=self.spec.n_outputs, average="micro")


class RegressorModule(TaskModule):
    """MSE, MAE or Huber on the standardized target; RMSE in target units."""

    task = "regression"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One standardized prediction per row, shape (N,)."""
        return self.net(x).squeeze(-1)

    def loss_fn(self, out: torch.Tensor, y: torch.Tensor, split: str) -> torch.Tensor:
        """The configured regression loss."""
        name = self.hparams.loss
        if name == "mae":
            return F.l1_loss(out, y)
        if name == "huber":
            return F.huber_loss(out, y, delta=self.hparams.huber_delta)
        return F.mse_loss(out, y)

    def headline_metric(self) -> Metric:
        """RMSE."""
        return MeanSquaredError(squared=False)

    def update_headline(self, metric: Metric, out: torch.Tensor, y: torch.Tensor) -> None:
        """Errors in target units."""
        std = self.hparams.target_std
        metric.update(out * std, y.float() * std)


def module_class(task: str) -> type[TaskModule]:
    """The LightningModule for a task."""
    return ClassifierModule if task == "classification" else RegressorModule
