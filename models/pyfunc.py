"""The registered model: an MLflow pyfunc that takes RAW inputs and applies the preprocessing.

Logged with MLflow's models-from-code: MLflow runs this file to get the model object (see
`set_model` at the bottom), while the weights (a state dict), the spec (model.json) and the
preprocessor travel as artifacts and the `models` package source as code, so nothing is pickled.
"""

from __future__ import annotations

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
PREPROCESSOR = "preprocessor"
MODEL_NAME = "model"  # the logged model's name inside the training run
PREDICTION = "prediction"
IMAGE = "image"  # images: one column of PNG/JPEG bytes, base64 text or pixel arrays
SEQUENCE = "sequence"  # sequences: one column of (T,) or (T, C) arrays or nested lists


def proba_column(label: Any) -> str:
    """The probability column of a class."""
    return f"proba_{label}"


def input_columns(pre: Any) -> list[str]:
    """The raw input columns of a preprocessor's modality."""
    if pre.kind == "tables":
        return list(pre.columns)
    return [IMAGE if pre.kind == "images" else SEQUENCE]


def to_model_input(kind: str, x: Any) -> pd.DataFrame:
    """Raw inputs as the pyfunc's input frame (tables as they are; one column otherwise)."""
    if kind == "tables":
        return x.reset_index(drop=True)
    column = IMAGE if kind == "images" else SEQUENCE
    return pd.DataFrame({column: [np.asarray(v).tolist() for v in x]})


def encode_png(image: Any) -> str:
    """An (H, W) or (H, W, C) uint8 array as base64 PNG text (the JSON-friendly image input)."""
    import base64
    import io

    from PIL import Image

    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def from_model_input(pre: Any, model_input: Any) -> Any:
    """The pyfunc's input frame -> what the preprocessor takes; one-line error otherwise."""
    if pre.kind == "tables":
        if not isinstance(model_input, pd.DataFrame):
            raise ValueError(f"expected a DataFrame with the columns {pre.columns}")
        return model_input
    column = input_columns(pre)[0]
    if isinstance(model_input, pd.DataFrame):
        if column not in model_input.columns:
            raise ValueError(
                f"expected a DataFrame with a {column!r} column; got columns "
                f"{list(model_input.columns)[:5]}"
            )
        values = list(model_input[column])
    else:
        values = list(model_input)
    if not values:
        raise ValueError("no rows to predict")
    if pre.kind == "images":
        return values
    return [np.asarray(v, dtype=np.float64) for v in values]


class DlopsModel(mlflow.pyfunc.PythonModel):
    """Raw inputs of the model's modality in; predicted labels (and probabilities) or values out.

    - tables: a DataFrame of raw rows (categoricals as strings, missing values allowed);
    - images: a DataFrame with an `image` column (PNG/JPEG bytes, their base64 text, or pixel
      arrays of any size);
    - sequences: a DataFrame with a `sequence` column of (T,) or (T, C) arrays or lists.
    """

    def load_context(self, context: Any) -> None:
        """Build the network from its spec, load the weights and the fitted preprocessor."""
        from models.inference import Predictor

        a = context.artifacts
        self.predictor = Predictor.from_files(a[SPEC], a[WEIGHTS], a[PREPROCESSOR])

    # The hint is pd.DataFrame because MLflow reads predict's hints: a union makes it warn.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Predict from raw inputs.

        Returns:
            Classification: `prediction` (the class label) and `proba_<label>` per class.
            Regression: `prediction` in target units.
        """
        from models.preprocessing import InputError

        p = self.predictor
        try:
            out = p.outputs(from_model_input(p.preprocessor, model_input))
        except InputError as exc:
            raise ValueError(str(exc)) from None
        return output_frame(p, out)


def output_frame(p: Any, out: np.ndarray) -> pd.DataFrame:
    """A Predictor's outputs as the pyfunc's output frame (shared with the server)."""
    if p.task != "classification":
        return pd.DataFrame({PREDICTION: np.asarray(out, dtype=np.float64)})
    frame = pd.DataFrame(out, columns=[proba_column(c) for c in p.classes])
    labels = p.preprocessor.target.decode(out.argmax(axis=1))
    frame.insert(0, PREDICTION, pd.Series(list(labels), dtype=_label_dtype(p.classes)))
    return frame


def _label_dtype(classes: list[Any]) -> str:
    if all(isinstance(c, int) for c in classes):
        return "int64"
    if all(isinstance(c, int | float) for c in classes):
        return "float64"
    return "object"


def signature(pre: Any) -> ModelSignature:
    """Inputs: the modality's raw columns, typed `any` (predict checks them); outputs by task.

    Raw columns are `any`: MLflow refuses int64 for a double column and float64 for a long one,
    while raw rows come as either, and image/sequence cells are bytes, text or nested lists.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    inputs = Schema([ColSpec(AnyType(), c) for c in input_columns(pre)])
    t = pre.target
    if t.task != "classification":
        outputs = Schema([ColSpec("double", PREDICTION)])
    else:
        label_type = {"int64": "long", "float64": "double"}.get(_label_dtype(t.classes), "string")
        outputs = Schema(
            [ColSpec(label_type, PREDICTION)]
            + [ColSpec("double", proba_column(c)) for c in t.classes]
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
        f"pillow=={version('pillow')}",
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
    train_dir: str | Path, run_id: str, input_example: pd.DataFrame | None = None
) -> tuple[ModelInfo, float]:
    """Log the pyfunc of a trained model folder into an existing run, restoring its status.

    Returns:
        The logged model's info and the seconds `mlflow.pyfunc.log_model` took.
    """
    from mlflow import MlflowClient

    from models.preprocessing import load

    train_dir = Path(train_dir)
    pre = load(train_dir / "preprocessor.json")
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
                        PREPROCESSOR: str(train_dir / "preprocessor.json"),
                    },
                    code_paths=[str(code)],
                    pip_requirements=pip_requirements(),
                    signature=signature(pre),
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
    mlflow.models.set_model(DlopsModel())
