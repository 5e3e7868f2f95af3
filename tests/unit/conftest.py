"""Unit fixtures: a tiny trained CNN folder (as tasks.train writes it), a SQLite MLflow store."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

N_TRAIN = 300
N_TEST = 120
CLASSES = list(range(10))  # integer labels: the pyfunc's `prediction` column is int64
# Digits-like images: (1, 8, 8), the cnn's default options, no dropout (a deterministic fit).
TINY_SPEC = {
    "arch": "cnn",
    "input_shape": [1, 8, 8],
    "n_outputs": len(CLASSES),
    "activation": "relu",
    "dropout": 0.0,
    "batch_norm": True,
    "init": "default",
    "options": {},
}


@dataclass
class TinyModel:
    """A trained-model folder and a processed folder, as train and preprocess leave them."""

    train_dir: Path
    processed_dir: Path
    state: dict[str, Any]  # the briefly trained state dict
    x_test: np.ndarray  # raw images (N, 8, 8, 1) uint8, pixel values 0..255
    y_test: np.ndarray  # class indices

    def write_weights(self, state: dict[str, Any] | None = None, run_id: str = "") -> Path:
        """Save a state dict (default: the trained one) as model.pt, the run id in model.json."""
        import torch

        torch.save(self.state if state is None else state, self.train_dir / "model.pt")
        meta = json.loads((self.train_dir / "model.json").read_text())
        meta["mlflow_run_id"] = run_id
        (self.train_dir / "model.json").write_text(json.dumps(meta, indent=2))
        return self.train_dir / "model.pt"


@pytest.fixture(scope="session")
def tiny_digits() -> dict[str, np.ndarray]:
    """A few hundred raw digit images (uint8 0..255, NHWC) for training, a disjoint test slice."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, :, :, None]
    y = bunch.target.astype(np.int64)
    return {
        "x_train": x[:N_TRAIN],
        "y_train": y[:N_TRAIN],
        "x_test": x[-N_TEST:],
        "y_test": y[-N_TEST:],
    }


@pytest.fixture(scope="session")
def tiny_cnn(tiny_digits: dict[str, np.ndarray]) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """(spec dict, fitted ImagePreprocessor, state dict) of a cnn trained 25 full-batch steps.

    Test accuracy is about 0.93: enough to clear a low floor and to beat zeroed weights.
    """
    import torch

    from models.networks import NetSpec, build_network
    from models.preprocessing import ImagePreprocessor, Target

    torch.set_num_threads(1)
    spec = NetSpec.from_dict(TINY_SPEC)
    target = Target("classification", classes=CLASSES)
    pre = ImagePreprocessor.fit(tiny_digits["x_train"], target, size=(8, 8), channels=1)
    assert pre.input_shape == spec.input_shape
    torch.manual_seed(0)
    net = build_network(spec)
    opt = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=0.01)
    x = torch.from_numpy(pre.transform(tiny_digits["x_train"]))
    y = torch.from_numpy(target.encode(tiny_digits["y_train"]))
    net.train()
    for _ in range(25):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    state = {k: v.detach().clone() for k, v in net.eval().state_dict().items()}
    return spec.to_dict(), pre, state


@pytest.fixture
def tiny_model(tmp_path: Path, tiny_digits: dict[str, np.ndarray], tiny_cnn: tuple) -> TinyModel:
    """tmp_path/train (model.pt, model.json, preprocessor.json) and tmp_path/processed."""
    from models.preprocessing import save

    spec, pre, state = tiny_cnn
    processed = tmp_path / "processed"
    train_dir = tmp_path / "train"
    processed.mkdir()
    train_dir.mkdir()
    np.savez(processed / "train.npz", x=tiny_digits["x_train"], y=tiny_digits["y_train"])
    np.savez(processed / "test.npz", x=tiny_digits["x_test"], y=tiny_digits["y_test"])
    split = {
        "modality": "images",
        "task": "classification",
        "counts": {"train": N_TRAIN, "test": N_TEST},
    }
    (processed / "split.json").write_text(json.dumps(split, indent=2))
    save(pre, processed / "preprocessor.json")
    save(pre, train_dir / "preprocessor.json")
    meta = {
        "arch": spec["arch"],
        "task": "classification",
        "modality": "images",
        "spec": spec,
        "hyperparameters": {"lr": 0.01},
        "mlflow_run_id": "",
        "best_epoch": 0,
    }
    (train_dir / "model.json").write_text(json.dumps(meta, indent=2))
    model = TinyModel(train_dir, processed, state, tiny_digits["x_test"], tiny_digits["y_test"])
    model.write_weights()
    return model


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite database (migrations cost ~4 s; copying it ~0)."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def sqlite_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _mlflow_template_db: Path
) -> Iterator[str]:
    """A fresh SQLite MLflow store in tmp_path (cwd, so artifacts go to tmp_path/mlartifacts)."""
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # mlflow.set_registry_uri() (called by tasks.tracking.client()) also exports
    # MLFLOW_REGISTRY_URI, which tracking.client() then prefers: left over from an earlier test,
    # it would point this test's registry at that test's store.
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    yield uri
    # Point MLflow's process-wide URIs away from tmp_path; monkeypatch then restores the env.
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
