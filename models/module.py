"""The LightningModule for classification: wraps any network, one metric object per split."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from models.augment import RandomAffine
from models.metrics import TEST_ACC, TEST_LOSS, TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from models.networks import CNNSpec, build_network
from models.optim import build_optimizer, build_scheduler


class ClassifierModule(L.LightningModule):
    """Cross-entropy classifier; optimizer and LR schedule by name (models.optim)."""

    def __init__(
        self,
        spec: dict[str, Any],
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        scheduler: str = "cosine",
        max_epochs: int = 30,
        label_smoothing: float = 0.0,
        augment: dict[str, float] | None = None,
        optimizer: str = "adamw",
        momentum: float = 0.9,
        nesterov: bool = False,
        warmup_epochs: int = 0,
        step_size: int | None = None,
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = CNNSpec(**spec)
        self.net = build_network(self.spec)
        self.augment = RandomAffine(**(augment or {"p": 0.0}))
        n = self.spec.n_classes
        self.train_acc = MulticlassAccuracy(num_classes=n, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes=n, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes=n, average="micro", validate_args=False)
        # Sum of loss * rows and rows seen, per split; logged once per epoch (see _log_epoch).
        self._loss_sums: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of normalized images."""
        return self.net(x)

    def _metric(self, split: str) -> MulticlassAccuracy:
        return {"train": self.train_acc, "val": self.val_acc, "test": self.test_acc}[split]

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, y = batch
        if split == "train":
            x = self.augment(x)
        logits = self(x)
        smoothing = self.hparams.label_smoothing if split == "train" else 0.0
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        # Accumulate only: a `self.log` per step costs more than the step itself on 8x8 images.
        self._metric(split).update(logits.detach(), y)
        self._loss_sums[split].append(
            torch.stack([loss.detach() * len(y), loss.new_tensor(len(y))])
        )
        return loss

    def _log_epoch(self, split: str) -> None:
        sums = self._loss_sums[split]
        if not sums:
            return
        total = torch.stack(sums).sum(dim=0)
        names = {
            "train": (TRAIN_LOSS, TRAIN_ACC),
            "val": (VAL_LOSS, VAL_ACC),
            "test": (TEST_LOSS, TEST_ACC),
        }[split]
        metric = self._metric(split)
        values = {names[0]: total[0] / total[1], names[1]: metric.compute()}
        self.log_dict(values, prog_bar=split == "val", sync_dist=True)
        metric.reset()
        sums.clear()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """One optimization step."""
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Validation loss and accuracy."""
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Test loss and accuracy."""
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        """Log the epoch's training loss and accuracy."""
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        """Log the epoch's validation loss and accuracy (read by early stopping and pruning)."""
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        """Log the test loss and accuracy."""
        self._log_epoch("test")

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
