"""Tiny registered models of each modality (trained a few full-batch steps), for serving tests.

Not a test module: imported by tests/*/test_serving*.py and benchmarks/serving.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SPECS = {
    "images": {"arch": "cnn", "options": {"blocks": 1, "channels": 8, "hidden": 16}},
    "tables": {"arch": "mlp", "options": {"layers": 1, "width": 16}},
    "sequences": {"arch": "cnn1d", "options": {"blocks": 1, "channels": 8, "hidden": 16}},
}


@dataclass
class TinyData:
    """Raw training inputs (as the pyfunc takes them) and labels; a raw test slice."""

    kind: str
    x_train: Any
    y_train: np.ndarray
    x_test: Any
    y_test: np.ndarray


def tiny_data(kind: str, seed: int = 0) -> TinyData:
    """Digits images (uint8 NHWC), a wine table with a categorical column, sine sequences."""
    rng = np.random.default_rng(seed)
    if kind == "images":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, :, :, None]
        y = bunch.target.astype(np.int64)
        return TinyData(kind, x[:300], y[:300], x[-60:], y[-60:])
    if kind == "tables":
        from sklearn.datasets import load_wine

        bunch = load_wine(as_frame=True)
        frame = bunch.data.iloc[:, :5].copy()
        frame.columns = [c.replace("/", "_") for c in frame.columns]
        frame["grade"] = np.where(frame.iloc[:, 0] > frame.iloc[:, 0].median(), "high", "low")
        y = np.array(["a", "b", "c"], dtype=object)[bunch.target.to_numpy()]
        order = rng.permutation(len(frame))
        frame, y = frame.iloc[order].reset_index(drop=True), y[order]
        return TinyData(kind, frame[:140], y[:140], frame[140:].reset_index(drop=True), y[140:])
    t = np.linspace(0, 1, 32)
    freq = rng.integers(0, 2, size=200)
    x = np.sin(2 * np.pi * (2 + 3 * freq)[:, None] * t) + 0.3 * rng.standard_normal((200, 32))
    y = freq.astype(np.int64)
    return TinyData(kind, x[:160], y[:160], x[160:], y[160:])


def write_train_dir(
    kind: str, folder: Path, steps: int = 25, seed: int = 0, spec: dict | None = None
) -> TinyData:
    """folder/model.pt, model.json, preprocessor.json as tasks.train writes them."""
    import torch

    from models.networks import NetSpec, build_network
    from models.preprocessing import (
        ImagePreprocessor,
        SequencePreprocessor,
        TablePreprocessor,
        Target,
        save,
    )

    data = tiny_data(kind)
    classes = sorted({v.item() if hasattr(v, "item") else v for v in data.y_train})
    target = Target("classification", classes=classes)
    if kind == "images":
        pre = ImagePreprocessor.fit(data.x_train, target, size=(8, 8), channels=1)
    elif kind == "tables":
        pre = TablePreprocessor.fit(data.x_train, target)
    else:
        pre = SequencePreprocessor.fit(data.x_train[:, :, None], target)
    spec = NetSpec.from_dict(
        {
            "dropout": 0.0,
            **(spec or SPECS[kind]),
            "input_shape": list(pre.input_shape),
            "n_outputs": len(classes),
        }
    )
    torch.manual_seed(seed)
    net = build_network(spec)
    opt = torch.optim.AdamW(net.parameters(), lr=0.01)
    x = torch.from_numpy(pre.transform(data.x_train))
    y = torch.from_numpy(target.encode(data.y_train))
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.eval().state_dict(), folder / "model.pt")
    save(pre, folder / "preprocessor.json")
    meta = {"arch": spec.arch, "task": "classification", "modality": kind, "spec": spec.to_dict()}
    (folder / "model.json").write_text(json.dumps(meta, indent=2))
    return data


def register(
    kind: str,
    name: str,
    tracking_uri: str,
    work: Path,
    alias: str | None = "champion",
    steps: int = 25,
    seed: int = 0,
    tags: dict[str, str] | None = None,
    spec: dict | None = None,
) -> tuple[str, TinyData]:
    """Train, log as the dlops pyfunc, register under `name` (alias set); (version, data)."""
    import mlflow
    from mlflow import MlflowClient

    from models.pyfunc import log_model

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    train_dir = work / f"train-{kind}-{seed}-{steps}"
    data = write_train_dir(kind, train_dir, steps=steps, seed=seed, spec=spec)
    exp = client.get_experiment_by_name("serving-tests")
    exp_id = (
        exp.experiment_id
        if exp
        else client.create_experiment(
            "serving-tests", artifact_location=(work / "mlartifacts").resolve().as_uri()
        )
    )
    run_id = client.create_run(exp_id, run_name=f"train-{kind}").info.run_id
    client.set_terminated(run_id)
    info, _ = log_model(train_dir, run_id)
    lineage = {"git.commit": "0123abc", **(tags or {})}
    mv = mlflow.register_model(info.model_uri, name, tags=lineage)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version), data


def model_input(kind: str, x: Any) -> pd.DataFrame:
    """Raw inputs as the pyfunc's input frame (images as base64 PNG, as clients send them)."""
    from models.pyfunc import IMAGE, encode_png, to_model_input

    if kind == "images":
        return pd.DataFrame({IMAGE: [encode_png(img) for img in x]})
    return to_model_input(kind, x)


REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`dlops serve` in its own process group on 127.0.0.1; `stop()` ends the whole group."""

    def __init__(self, name: str, tracking_uri: str, log: Path, *args: str) -> None:
        import os
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_REGISTRY_URI"}
        env.update(MLFLOW_TRACKING_URI=tracking_uri, PYTHONPATH=str(REPO))
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--model", name]
            + ["--port", str(self.port), *args],
            cwd=REPO,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers share the group: stop() reaches them all
        )

    def wait(self, path: str = "/health", timeout: float = 120, status: int = 200) -> Any:
        """Poll `path` until it answers `status`; the last response."""
        import time

        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                r = requests.get(self.url + path, timeout=5)
                if r.status_code == status:
                    return r
            except requests.ConnectionError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{path} never answered {status}: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM to the group (a graceful LitServe shutdown), SIGKILL what is left."""
        import os
        import signal
        import subprocess

        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


def drift_tables(workspace: Path, name: str, uri: str) -> tuple[TinyData, list[str]]:
    """A registered tables model, its training split (train.parquet) and two new-row files:
    same.csv (its test rows) and shifted.csv (every numeric column x3 + 10); the numeric names."""
    _, data = register("tables", name, uri, workspace)
    data.x_train.to_parquet(workspace / "train.parquet")
    data.x_test.to_csv(workspace / "same.csv", index=False)
    shifted = data.x_test.copy()
    numeric = [c for c in shifted.columns if c != "grade"]
    shifted[numeric] = shifted[numeric] * 3 + 10
    shifted.to_csv(workspace / "shifted.csv", index=False)
    return data, numeric
