"""The served model: `models:/<name>@<alias>` loaded as its pyfunc, and the batched hot path.

The pyfunc's own Predictor (fitted preprocessing + network) does the work, so served, batch and
offline predictions are the same numbers: `prepare` is the pyfunc's input handling and
preprocessing, `forward` one pass of the network over the rows of many requests at once.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

# The project's models package first: a registered model's code copy (prepended to sys.path by
# MLflow) must not shadow modules imported later.
import models.inference  # noqa: F401
import models.networks  # noqa: F401
from models.preprocessing import InputError, one_line
from models.pyfunc import from_model_input, input_columns, output_frame


class NoModelError(LookupError):
    """The alias points nowhere (yet), or what it points to is not a dlops model."""


@dataclass(frozen=True)
class ServedModel:
    """One loaded registered version and what /metadata tells about it."""

    name: str
    alias: str
    version: str
    run_id: str
    predictor: Any
    tags: dict[str, str] = field(default_factory=dict)
    signature: dict[str, Any] = field(default_factory=dict)
    loaded_at: float = 0.0

    @property
    def kind(self) -> str:
        """The modality: tables, images or sequences."""
        return self.predictor.preprocessor.kind

    @property
    def columns(self) -> list[str]:
        """The raw input columns a request must give."""
        return input_columns(self.predictor.preprocessor)

    def metadata(self) -> dict[str, Any]:
        """JSON-safe description: name, version, alias, lineage tags, input schema."""
        pre = self.predictor.preprocessor
        schema: dict[str, Any] = {"modality": pre.kind, "columns": self.columns}
        schema["shape"] = list(pre.input_shape)
        if pre.kind == "tables":
            schema["numeric"] = list(pre.numeric)
            schema["categorical"] = list(pre.categorical)
        return {
            "name": self.name,
            "alias": self.alias,
            "version": self.version,
            "run_id": self.run_id,
            "task": self.predictor.task,
            "classes": list(pre.target.classes) if self.predictor.task == "classification" else [],
            "tags": dict(self.tags),
            "input_schema": schema,
            "signature": self.signature,
            "loaded_at": self.loaded_at,
        }


def client(tracking_uri: str) -> Any:
    """An MlflowClient on that store (registry on the same store unless MLFLOW_REGISTRY_URI)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def alias_version(tracking_uri: str, name: str, alias: str) -> str | None:
    """The version `alias` points to, None if it (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        version = client(tracking_uri).get_registered_model(name).aliases.get(alias)
    except MlflowException:
        return None
    return None if version is None else str(version)


def load(tracking_uri: str, name: str, alias: str, version: str | None = None) -> ServedModel:
    """Load the version `alias` points to (or `version`) as its pyfunc; NoModelError if none."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # not on stderr
    version = version or alias_version(tracking_uri, name, alias)
    if version is None:
        raise NoModelError(f"no models:/{name}@{alias} in the registry yet")
    c = client(tracking_uri)
    mv = c.get_model_version(name, version)
    mlflow.set_tracking_uri(tracking_uri)  # models:/ URIs resolve through the fluent store
    with tempfile.TemporaryDirectory(prefix="dlops-serve-") as tmp:
        # suppress_warnings skips MLflow's scan of installed packages (seconds, only warns)
        pyfunc = mlflow.pyfunc.load_model(
            f"models:/{name}/{version}", suppress_warnings=True, dst_path=tmp
        )
    predictor = getattr(pyfunc.unwrap_python_model(), "predictor", None)
    if predictor is None:
        raise NoModelError(f"models:/{name}/{version} is not a dlops model (no predictor)")
    sig = pyfunc.metadata.signature
    return ServedModel(
        name=name,
        alias=alias,
        version=str(version),
        run_id=mv.run_id or "",
        predictor=predictor,
        tags=dict(mv.tags),
        signature=sig.to_dict() if sig is not None else {},
        loaded_at=time.time(),
    )


def prepare(model: ServedModel, frame: pd.DataFrame) -> np.ndarray:
    """One request's raw rows -> the network's input (the pyfunc's preprocessing).

    Raises InputError naming the row (and column) at fault.
    """
    pre = model.predictor.preprocessor
    try:
        return _transform(pre, frame)
    except InputError as exc:
        if pre.kind == "images" or len(frame) < 2:
            raise  # image errors name their index already
        for i in range(len(frame)):
            try:
                _transform(pre, frame.iloc[[i]])
            except InputError as row_exc:
                raise InputError(f"row {i}: {row_exc}") from None
        raise exc from None


def prepare_many(model: ServedModel, frames: list[pd.DataFrame]) -> list[np.ndarray | InputError]:
    """Several requests' rows -> each one's network input, or the error that request gets.

    One preprocessing call for all of them when their columns agree and every row is good (the
    hot path); request by request otherwise, so that a bad request fails alone.
    """
    if len(frames) > 1 and len({tuple(f.columns) for f in frames}) == 1:
        try:
            x = _transform(model.predictor.preprocessor, pd.concat(frames, ignore_index=True))
        except InputError:
            pass
        else:
            bounds = np.cumsum([len(f) for f in frames])[:-1]
            return list(np.split(x, bounds))
    out: list[np.ndarray | InputError] = []
    for frame in frames:
        try:
            out.append(prepare(model, frame))
        except InputError as exc:
            out.append(exc)
    return out


def _transform(pre: Any, frame: pd.DataFrame) -> np.ndarray:
    try:
        return pre.transform(from_model_input(pre, frame))
    except InputError:
        raise
    except (ValueError, TypeError) as exc:
        raise InputError(one_line(exc)) from None


def forward(model: ServedModel, x: np.ndarray) -> np.ndarray:
    """One forward pass over prepared rows: probabilities (N, K) or values (N,)."""
    return model.predictor.scores(x, batch_size=max(len(x), 1))


def outputs_frame(model: ServedModel, out: np.ndarray) -> pd.DataFrame:
    """Outputs as the pyfunc's output frame: `prediction` (+ `proba_<label>` per class)."""
    return output_frame(model.predictor, out)
