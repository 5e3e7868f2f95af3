"""Per-epoch progress on the logger "dlops" (shown in the Prefect UI's run logs and the console).

`PREFECT_LOGGING_EXTRA_LOGGERS=dlops` (tasks/runtime.py) routes it to Prefect; under `dvc repro`
it goes to stderr like any log record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from lightning.pytorch.callbacks import Callback

from models.metrics import VAL_LOSS


class Progress(Callback):
    """Log one line per epoch: `<label> epoch i/n: val/loss ..., <headline> ...`.

    `after_first_epoch`: called once, after the first epoch (the test hook that pauses a run
    there to kill it; a picklable callable, for DDP spawn).
    """

    def __init__(
        self,
        label: str,
        stage: str = "train",
        after_first_epoch: Callable[[], Any] | None = None,
    ) -> None:
        self.label = label
        self.stage = stage
        self.after_first_epoch = after_first_epoch

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """One line of the epoch's validation metrics, from rank zero."""
        if trainer.is_global_zero:
            metrics = {
                k: float(v)
                for k, v in sorted(trainer.callback_metrics.items())
                if k.startswith("val/") and getattr(v, "numel", lambda: 1)() == 1
            }
            order = sorted(metrics, key=lambda k: k != VAL_LOSS)  # val/loss first
            shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in order)
            logging.getLogger(f"dlops.{self.stage}").info(
                "%s epoch %d/%d: %s",
                self.label,
                trainer.current_epoch + 1,
                trainer.max_epochs,
                shown or "no validation metrics yet",
            )
            if self.after_first_epoch is not None and trainer.current_epoch == 0:
                self.after_first_epoch()
