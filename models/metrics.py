"""Metric names: one constant each, shared by logging, checkpointing, pruning and promotion."""

TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"
TRAIN_RMSE = "train/rmse"
VAL_LOSS = "val/loss"
VAL_ACC = "val/acc"
VAL_RMSE = "val/rmse"
TEST_LOSS = "test/loss"
TEST_ACC = "test/acc"
TEST_RMSE = "test/rmse"

LOSS = {"train": TRAIN_LOSS, "val": VAL_LOSS, "test": TEST_LOSS}
# The task's headline metric per split: accuracy for classification, RMSE (target units) for
# regression.
HEADLINE = {
    "classification": {"train": TRAIN_ACC, "val": VAL_ACC, "test": TEST_ACC},
    "regression": {"train": TRAIN_RMSE, "val": VAL_RMSE, "test": TEST_RMSE},
}
