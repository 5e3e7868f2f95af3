"""Evaluate: test-split metrics and plots by task (DVC metrics/plots + MLflow).

Classification: accuracy, macro precision/recall/F1, one-vs-rest ROC AUC; confusion matrix, ROC
and precision-recall curves. Regression: RMSE, MAE, R²; predicted-vs-true and residuals.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks import tracking
from tasks.config import Config
from tasks.utils import atomic_dir, read_json, write_json

CLASSIFICATION = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc_ovr")
REGRESSION = ("rmse", "mae", "r2")


@dataclass(frozen=True)
class EvaluateResult:
    """Test metrics and the files that show them."""

    metrics: dict[str, float]
    metrics_path: Path
    plots: list[Path]
    run_id: str | None


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, macro precision/recall/F1 and one-vs-rest ROC AUC from class probabilities."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    labels = np.arange(proba.shape[1])
    pred = proba.argmax(axis=1)
    p, r, f, _ = precision_recall_fscore_support(
        y_true, pred, labels=labels, average="macro", zero_division=0
    )
    present = np.unique(y_true)
    if len(present) == len(labels) == 2:  # binary: the positive class's score
        auc = roc_auc_score(y_true, proba[:, 1])
    elif len(present) == len(labels):
        auc = roc_auc_score(y_true, proba, multi_class="ovr", labels=labels)
    else:  # AUC of the classes that occur (tiny test sets)
        auc = float(
            np.mean([roc_auc_score(y_true == k, proba[:, k]) for k in present])
            if len(present) > 1
            else float("nan")
        )
    return {
        "accuracy": float(accuracy_score(y_true, pred)),
        "precision_macro": float(p),
        "recall_macro": float(r),
        "f1_macro": float(f),
        "roc_auc_ovr": float(auc),
    }


def regression_metrics(y_true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² in target units."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y_true = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    return {
        "rmse": float(np.sqrt(mean_squared_error(y_true, pred))),
        "mae": float(mean_absolute_error(y_true, pred)),
        "r2": float(r2_score(y_true, pred)) if len(y_true) > 1 else float("nan"),
    }


def task_metrics(task: str, y_true: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """The task's metrics from model outputs (probabilities, or predictions)."""
    if task == "classification":
        return classification_metrics(y_true, outputs)
    return regression_metrics(y_true, outputs)


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 5))


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def classification_plots(
    y: np.ndarray, proba: np.ndarray, classes: list[Any], out: Path
) -> list[Path]:
    """Confusion matrix, ROC and precision-recall curves (one-vs-rest), as CSV and PNG."""
    import pandas as pd
    from sklearn.metrics import ConfusionMatrixDisplay, precision_recall_curve, roc_curve

    names = [str(c) for c in classes]
    pred = proba.argmax(axis=1)
    n = proba.shape[1]
    paths = []
    pd.DataFrame({"actual": [names[i] for i in y], "predicted": [names[i] for i in pred]}).to_csv(
        out / "confusion.csv", index=False
    )
    onehot = np.eye(n)[y]
    fpr, tpr, _ = roc_curve(onehot.ravel(), proba.ravel())
    pd.DataFrame({"fpr": fpr, "tpr": tpr}).to_csv(out / "roc.csv", index=False)
    prec, rec, _ = precision_recall_curve(onehot.ravel(), proba.ravel())
    pd.DataFrame({"recall": rec, "precision": prec}).to_csv(out / "pr.csv", index=False)
    paths += [out / "confusion.csv", out / "roc.csv", out / "pr.csv"]

    fig, ax = _figure()
    ConfusionMatrixDisplay.from_predictions(
        y, pred, labels=list(range(n)), display_labels=names, ax=ax, colorbar=False
    )
    ax.set_title("Confusion matrix (test split)")
    paths.append(_save(fig, out / "confusion_matrix.png"))
    for kind in ("roc", "pr"):
        fig, ax = _figure()
        for k in range(n):
            if (y == k).any() and not (y == k).all():
                if kind == "roc":
                    a, b, _ = roc_curve(y == k, proba[:, k])
                else:
                    b, a, _ = precision_recall_curve(y == k, proba[:, k])
                ax.plot(a, b, lw=1, alpha=0.7, label=f"class {names[k]}")
        if kind == "roc":
            ax.plot(fpr, tpr, "k--", lw=2, label="micro-average")
            ax.set(xlabel="false positive rate", ylabel="true positive rate")
            ax.set_title("ROC (one-vs-rest)")
        else:
            ax.plot(rec, prec, "k--", lw=2, label="micro-average")
            ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (one-vs-rest)")
        ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
        paths.append(_save(fig, out / f"{kind}.png"))
    return paths


def regression_plots(y: np.ndarray, pred: np.ndarray, out: Path) -> list[Path]:
    """Predicted against true values, and residuals against predictions, as CSV and PNG."""
    import pandas as pd

    y = np.asarray(y, dtype=np.float64)
    residual = y - pred
    pd.DataFrame({"actual": y, "predicted": pred}).to_csv(out / "pred_vs_true.csv", index=False)
    pd.DataFrame({"predicted": pred, "residual": residual}).to_csv(
        out / "residuals.csv", index=False
    )
    fig, ax = _figure()
    ax.scatter(y, pred, s=10, alpha=0.6)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlabel="true", ylabel="predicted", title="Predicted vs true (test split)")
    a = _save(fig, out / "pred_vs_true.png")
    fig, ax = _figure()
    ax.scatter(pred, residual, s=10, alpha=0.6)
    ax.axhline(0, color="k", ls="--", lw=1)
    ax.set(xlabel="predicted", ylabel="true - predicted", title="Residuals (test split)")
    b = _save(fig, out / "residuals.png")
    return [out / "pred_vs_true.csv", out / "residuals.csv", a, b]


def run(cfg: Config, log_run_id: str | None = None) -> EvaluateResult:
    """Score the trained model on the test split; log metrics and plots to MLflow.

    `log_run_id`: the run to log to (the flow decides); None: the training run of model.json,
    or a run of its own when that one was evaluated before (see `_standalone_run`).
    """
    from models.inference import Predictor
    from models.preprocessing import load_split

    x, y = load_split(cfg.paths.processed_dir, "test")
    predictor = Predictor.from_dir(cfg.paths.train_dir)
    outputs = predictor.outputs(x)
    metrics: dict[str, Any] = task_metrics(predictor.task, y, outputs)
    names = list(metrics)
    metrics["n_test"] = len(y)
    out = Path(cfg.paths.plots_dir)
    with atomic_dir(out) as tmp:
        if predictor.task == "classification":
            plots = classification_plots(y, outputs, predictor.classes, tmp)
        else:
            plots = regression_plots(y, outputs, tmp)
    plots = [out / p.name for p in plots]
    path = write_json(cfg.paths.metrics, metrics)
    model_run = read_json(Path(cfg.paths.train_dir) / "model.json").get("mlflow_run_id")
    run_id, own = (log_run_id, False) if log_run_id else _standalone_run(cfg, model_run)
    if run_id:
        c = tracking.client()
        with tracking.ending(run_id, own):
            for name in names:
                c.log_metric(run_id, f"test/{name}", metrics[name])
            c.log_artifact(run_id, str(path))
            c.log_artifacts(run_id, str(out), "plots")
    return EvaluateResult(metrics=metrics, metrics_path=path, plots=plots, run_id=run_id)


def _standalone_run(cfg: Config, model_run: str | None) -> tuple[str | None, bool]:
    """Where `python -m tasks.evaluate` logs: the training run, unless it was evaluated before.

    A training run that already holds test metrics is an earlier run's (train restored from
    DVC's run cache): it is not written to; a run of its own, tagged with it, gets the metrics.
    Returns the run id and whether this stage opened it.
    """
    if not model_run:
        return None, False
    logged = tracking.client().get_run(model_run).data.metrics
    if not any(k.startswith("test/") for k in logged):
        return model_run, False
    tags = {"dlops.stage": "evaluate", tracking.MODEL_RUN_TAG: model_run}
    return tracking.start_run(cfg.register_.experiment, "evaluate", tags=tags), True


def main() -> None:
    """Entry point for `python -m tasks.evaluate` (dvc.yaml)."""
    from tasks.entry import run_stage

    argparse.ArgumentParser(description=__doc__).parse_args()

    def body(cfg: Config) -> str:
        r = run(cfg)
        shown = [k for k in r.metrics if k != "n_test"]
        return "evaluate: " + ", ".join(f"{k} {r.metrics[k]:.4f}" for k in shown)

    run_stage("evaluate", body)


if __name__ == "__main__":
    main()
