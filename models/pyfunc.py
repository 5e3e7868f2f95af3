"""The registered model: an MLflow pyfunc that takes RAW pixel rows and applies the normalizer.

Logged with MLflow's models-from-code: MLflow runs this file to get the model object (see
`set_model` at the bottom), while the weights (a state dict), the spec (model.json) and the
normalizer travel as artifacts and the `models` package source as code, so nothing is pickled.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from mlflow.models import ModelSignature
    from mlflow.models.model import ModelInfo

WEIGHTS = "weights"
SPEC = "spec"
NORMALIZER = "normalizer"
MODEL_NAME = "model"  # the logged model's name inside the training run
N_PIXELS = 64
N_CLASSES = 10
PREDICTION = "prediction"


def pixel_columns(n: int = N_PIXELS) -> list[str]:
    """The raw input columns: pixel_0 .. pixel_{n-1}."""
    return [f"pixel_{i}" for i in range(n)]


def proba_columns(n: int = N_CLASSES) -> list[str]:
    """The class-probability output columns: proba_0 .. proba_{n-1}."""
    return [f"proba_{k}" for k in range(n)]


def _expected(n: int) -> str:
    return f"expected the {n} pixel columns pixel_0..pixel_{n - 1}"


def to_raw_rows(model_input: Any, n_pixels: int = N_PIXELS) -> np.ndarray:
    """Validate raw input (DataFrame with the pixel columns, array or list of rows) -> (N, n)."""
    if isinstance(model_input, pd.DataFrame):
        columns = pixel_columns(n_pixels)
        missing = [c for c in columns if c not in model_input.columns]
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise ValueError(
                f"{_expected(n_pixels)}; the DataFrame lacks {len(missing)} of them ({shown})"
            )
        model_input = model_input[columns]
    try:
        x = np.asarray(model_input, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{_expected(n_pixels)} holding numbers: {exc}") from None
    if x.ndim != 2 or x.shape[1] != n_pixels:
        raise ValueError(f"{_expected(n_pixels)} (rows of {n_pixels} values), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{_expected(n_pixels)}; the input holds NaN or infinite values")
    return x


class DigitsClassifier(mlflow.pyfunc.PythonModel):
    """Raw 8x8 digit rows in, predicted class and class probabilities out."""

    def load_context(self, context: Any) -> None:
        """Build the network from its spec, load the weights and the fitted normalizer."""
        from models.networks import load_network
        from models.preprocessing import Normalizer

        self.normalizer = Normalizer.load(context.artifacts[NORMALIZER])
        self.net = load_network(context.artifacts[SPEC], context.artifacts[WEIGHTS])

    # The hint is pd.DataFrame because MLflow reads predict's hints: a union makes it warn.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Predict from raw rows: a DataFrame with pixel_0..pixel_63, or an (N, 64) array/list.

        Returns:
            A DataFrame with `prediction` (int64) and `proba_0`..`proba_9` (float64).
        """
        import torch

        x = to_raw_rows(model_input, self.normalizer.height * self.normalizer.width)
        images = torch.from_numpy(self.normalizer.transform(x))
        with torch.inference_mode():
            proba = torch.softmax(self.net(images).double(), dim=1).numpy()
        out = pd.DataFrame(proba, columns=proba_columns(proba.shape[1]))
        out.insert(0, PREDICTION, proba.argmax(axis=1).astype(np.int64))
        return out


def signature(n_pixels: int = N_PIXELS, n_classes: int = N_CLASSES) -> ModelSignature:
    """Input: the raw pixel columns by name; output: prediction (long) and proba_k (double).

    The pixel columns are typed `any`: MLflow refuses int64 for a double column ("can not safely
    convert") and float64 for a long one, while raw rows come as either; `predict` itself rejects
    anything non-numeric or non-finite with a one-line message.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    inputs = Schema([ColSpec(AnyType(), c) for c in pixel_columns(n_pixels)])
    outputs = Schema(
        [ColSpec("long", PREDICTION)] + [ColSpec("double", c) for c in proba_columns(n_classes)]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc (explicit: inferring them costs seconds)."""
    from importlib.metadata import version

    torch_version = version("torch").split("+")[0]
    return [
        f"torch=={torch_version}",
        f"mlflow=={version('mlflow')}",
        f"numpy=={version('numpy')}",
        f"pandas=={version('pandas')}",
    ]


def _copy_package_source(dest: Path) -> Path:
    """Copy the `models` package's .py files (no caches) to dest/models; return that folder."""
    src = Path(__file__).resolve().parent
    pkg = dest / src.name
    pkg.mkdir(parents=True)
    for file in src.glob("*.py"):
        shutil.copy2(file, pkg / file.name)
    return pkg


def log_model(
    train_dir: str | Path, run_id: str, input_example: pd.DataFrame
) -> tuple[ModelInfo, float]:
    """Log the pyfunc of a trained model folder into an existing run, restoring its status.

    Returns:
        The logged model's info and the seconds `mlflow.pyfunc.log_model` took.
    """
    from mlflow import MlflowClient

    train_dir = Path(train_dir)
    meta = json.loads((train_dir / "model.json").read_text())
    spec = meta["spec"]
    n_pixels = int(spec.get("height", 8)) * int(spec.get("width", 8))
    client = MlflowClient()
    before = client.get_run(run_id).info
    # MLflow 3's log_model only links to the fluent active run; it is thread-local, so resuming
    # the run by id here is safe under concurrent Prefect tasks.
    nested = mlflow.active_run() is not None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            code = _copy_package_source(Path(tmp))
            with mlflow.start_run(run_id=run_id, nested=nested):
                start = time.perf_counter()
                info = mlflow.pyfunc.log_model(
                    name=MODEL_NAME,
                    python_model=str(Path(__file__).resolve()),
                    artifacts={
                        WEIGHTS: str(train_dir / "model.pt"),
                        SPEC: str(train_dir / "model.json"),
                        NORMALIZER: str(train_dir / "normalizer.json"),
                    },
                    code_paths=[str(code)],
                    pip_requirements=pip_requirements(),
                    signature=signature(n_pixels, int(spec.get("n_classes", N_CLASSES))),
                    input_example=input_example,
                )
                seconds = time.perf_counter() - start
    finally:
        # Resuming set the run RUNNING and leaving it stamped FINISHED (or FAILED) with a new
        # end time: put back what the run was, whatever happened.
        if before.status == "RUNNING":
            client.update_run(run_id, status="RUNNING")
        else:
            client.set_terminated(run_id, status=before.status, end_time=before.end_time)
    return info, seconds


# MLflow executes this file under a generated module name to get the model (models-from-code);
# importing it as `models.pyfunc` must leave MLflow's global state alone.
if __name__ != "models.pyfunc":
    mlflow.models.set_model(DigitsClassifier())
