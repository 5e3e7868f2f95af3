"""Batch inference and drift as Prefect flows: the same serving/ code as the CLI, states that
a deployment can act on (drift ends the run Failed)."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.serving_models import drift_tables

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_predict_and_drift_flows(workspace):
    import mlflow

    from flows.batch import DriftDetected, drift_flow, predict_flow

    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    data, _ = drift_tables(workspace, "flow-wine", uri)

    out = workspace / "out" / "pred.parquet"
    result = predict_flow(str(workspace / "same.csv"), str(out), model="flow-wine")
    assert result["rows"] == len(data.x_test) and result["version"] == "1"
    got = pd.read_parquet(out)
    want = mlflow.pyfunc.load_model("models:/flow-wine@champion").predict(data.x_test)
    assert got["prediction"].tolist() == want["prediction"].tolist()

    ok = drift_flow(
        str(workspace / "same.csv"), model="flow-wine", reference=str(workspace / "train.parquet")
    )
    assert ok["drifted"] is False
    state = drift_flow(
        str(workspace / "shifted.csv"),
        model="flow-wine",
        reference=str(workspace / "train.parquet"),
        out_dir="reports/shifted",
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(DriftDetected, match=r"^drift: \d+% of the input columns drifted"):
        state.result()
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name("dlops-drift")
    runs = MlflowClient(tracking_uri=uri).search_runs([exp.experiment_id])
    assert sorted(r.data.tags["dlops.drifted"] for r in runs) == ["False", "True"]
