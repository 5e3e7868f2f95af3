"""Evaluate: test-split metrics, a confusion matrix and ROC curves (DVC metrics/plots + MLflow)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks import tracking
from tasks.config import Config, load_config
from tasks.utils import read_json, write_json

METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc_ovr")


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
    if len(present) == len(labels):
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


def predict_proba(train_dir: str | Path, x_raw: np.ndarray) -> np.ndarray:
    """Class probabilities of the trained model in `train_dir` for raw pixel rows."""
    import torch

    from models.networks import load_trained

    net, normalizer = load_trained(train_dir)
    with torch.inference_mode():
        logits = net(torch.from_numpy(normalizer.transform(x_raw)))
        return torch.softmax(logits, dim=1).numpy()


def _plots(y: np.ndarray, proba: np.ndarray, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from sklearn.metrics import ConfusionMatrixDisplay, roc_curve

    out.mkdir(parents=True, exist_ok=True)
    pred = proba.argmax(axis=1)
    n = proba.shape[1]
    pd.DataFrame({"actual": y, "predicted": pred}).to_csv(out / "confusion.csv", index=False)
    onehot = np.eye(n)[y]
    fpr, tpr, _ = roc_curve(onehot.ravel(), proba.ravel())
    pd.DataFrame({"fpr": fpr, "tpr": tpr}).to_csv(out / "roc.csv", index=False)

    fig, ax = plt.subplots(figsize=(6, 5))
    ConfusionMatrixDisplay.from_predictions(y, pred, labels=list(range(n)), ax=ax, colorbar=False)
    ax.set_title("Confusion matrix (test split)")
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 5))
    for k in range(n):
        if (y == k).any():
            f, t, _ = roc_curve(y == k, proba[:, k])
            ax.plot(f, t, lw=1, alpha=0.7, label=f"class {k}")
    ax.plot(fpr, tpr, "k--", lw=2, label="micro-average")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one-vs-rest)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=100)
    plt.close(fig)
    return [out / p for p in ("confusion.csv", "roc.csv", "confusion_matrix.png", "roc.png")]


def run(cfg: Config) -> EvaluateResult:
    """Score the trained model on the test split; log metrics and plots to its training run."""
    from models.preprocessing import load_split

    x, y = load_split(cfg.paths.processed_dir, "test")
    proba = predict_proba(cfg.paths.train_dir, x)
    metrics = classification_metrics(y, proba)
    metrics["n_test"] = len(y)
    plots = _plots(y, proba, Path(cfg.paths.plots_dir))
    path = write_json(cfg.paths.metrics, metrics)
    run_id = read_json(Path(cfg.paths.train_dir) / "model.json").get("mlflow_run_id")
    if run_id:
        c = tracking.client()
        for name in METRICS:
            c.log_metric(run_id, f"test/{name}", metrics[name])
        c.log_artifact(run_id, str(path))
        for p in plots:
            c.log_artifact(run_id, str(p), "plots")
    return EvaluateResult(metrics=metrics, metrics_path=path, plots=plots, run_id=run_id)


def main() -> None:
    """Entry point for `python -m tasks.evaluate` (dvc.yaml)."""
    argparse.ArgumentParser(description=__doc__).parse_args()
    r = run(load_config())
    print("evaluate: " + ", ".join(f"{k} {r.metrics[k]:.4f}" for k in METRICS))


if __name__ == "__main__":
    main()
