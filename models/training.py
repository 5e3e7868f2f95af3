"""Training machinery shared by tuning, training and cross-validation: the step budget.

The budget is counted in optimizer steps, because on a small data set an epoch is one batch:
`max_epochs` epochs of one batch each is a few dozen updates. `budget` derives how many times an
epoch repeats the training examples so that `max_epochs` epochs hold at least `min_steps`
steps; `max_steps` caps the total. Early stopping (patience), checkpoints, per-epoch LR
schedules and Optuna's pruner all count these derived epochs, so they stay in one unit: one
validation per derived epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """Epochs, passes over the training examples per epoch, and the steps they make."""

    epochs: int
    repeats: int  # passes over the training split in one (derived) epoch
    steps_per_epoch: int
    max_steps: int  # the hard cap handed to Lightning (-1: none)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole budget."""
        total = self.epochs * self.steps_per_epoch
        return total if self.max_steps < 0 else min(total, self.max_steps)


def _repeats(n: int, batch: int, steps_per_epoch: int) -> int:
    """The fewest passes per epoch whose batches make at least `steps_per_epoch` steps.

    The passes are shuffled one after another into one stream of indices, cut into batches.
    """
    return max(1, math.ceil(((steps_per_epoch - 1) * batch + 1) / n))


def budget(
    n_train: int,
    batch_size: int,
    max_epochs: int,
    min_steps: int = 0,
    max_steps: int | None = None,
    world_size: int = 1,
) -> Budget:
    """The derived budget for `n_train` examples in batches of `batch_size` (per process).

    An epoch of r passes makes ceil(r * n / (batch * world)) steps; r is the fewest passes that
    give `max_epochs` epochs at least `min_steps` steps (1 on large data). With `max_steps` the
    epochs shrink to what fits, and Lightning stops at `max_steps` exactly.
    """
    if n_train < 1:
        raise ValueError("budget: the training split is empty")
    batch = batch_size * world_size
    per_pass = math.ceil(n_train / batch)
    epochs = max_epochs
    if max_steps is not None:
        epochs = max(1, min(epochs, max_steps // per_pass))
    repeats = _repeats(n_train, batch, math.ceil(min_steps / epochs)) if min_steps else 1
    steps = math.ceil(repeats * n_train / batch)
    return Budget(epochs, repeats, steps, -1 if max_steps is None else max_steps)


def fixed_budget(n_train: int, batch_size: int, steps: int, max_epochs: int) -> Budget:
    """A budget of exactly `steps` steps (the final fit after cross-validation)."""
    per_pass = math.ceil(n_train / batch_size)
    epochs = max(1, min(max_epochs, math.ceil(steps / per_pass)))
    repeats = _repeats(n_train, batch_size, math.ceil(steps / epochs))
    per_epoch = math.ceil(repeats * n_train / batch_size)
    return Budget(epochs, repeats, per_epoch, steps)
