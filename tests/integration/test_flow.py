"""The whole flow in a temporary git + DVC repository with a temporary SQLite MLflow store."""

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tasks import tracking

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAME = "dlops-digits-cnn"
DVC = str(Path(sys.executable).parent / "dvc")


def _outcomes(result):
    return {s["name"]: s["outcome"] for s in result["stages"]}


def _versions():
    return sorted(
        int(v.version) for v in tracking.client().search_model_versions(f"name='{NAME}'")
    )


def _predict_in_fresh_process(root: Path, rows: pd.DataFrame) -> pd.DataFrame:
    code = (
        "import sys, mlflow, pandas as pd\n"
        f"m = mlflow.pyfunc.load_model('models:/{NAME}@champion')\n"
        "print(m.predict(pd.read_json(sys.stdin)).to_json())\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=rows.to_json(),
        capture_output=True,
        text=True,
        cwd=root.parent,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return pd.read_json(io.StringIO(out.stdout.strip().splitlines()[-1]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_and_predict(root: Path, rows: pd.DataFrame) -> list[int]:
    """`mlflow models serve` the champion on loopback and POST raw rows to /invocations."""
    port = _free_port()
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    cmd = [mlflow_bin, "models", "serve", "-m", f"models:/{NAME}@champion"]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    # the server runs `uvicorn` from PATH: the venv must be on it, as with an activated venv
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    server = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    body = json.dumps(
        {"dataframe_split": {"columns": list(rows.columns), "data": rows.values.tolist()}}
    ).encode()
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations",
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    predictions = json.loads(response.read())["predictions"]
                return [int(p["prediction"]) for p in predictions]
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "model server did not answer in 90 s"
                time.sleep(1)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_flow_registers_promotes_and_reruns_nothing(dvc_project, tiny):
    from flows.pipeline import pipeline

    root = dvc_project
    first = pipeline(overrides=tiny)
    assert set(_outcomes(first).values()) == {"ran"}

    c = tracking.client()
    assert _versions() == [1]
    champion = c.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == "1"
    tags = champion.tags
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    assert tags["git.commit"] == head
    assert tags["git.dirty"] == "true"  # params.yaml was changed by the overrides
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    processed_md5 = lock["stages"]["preprocess"]["outs"][0]["md5"]
    assert tags["dvc.preprocess.data/processed"] == processed_md5
    assert tags["validation.success"] == "true"
    assert tags["optuna.best_trial"] == "0" and tags["optuna.study"].startswith(NAME)
    assert len(tags["params.hash"]) == 64
    assert tags["prefect.flow_run_id"] == first["flow_run_id"]
    assert tags["promotion.decision"] == "promoted"

    # the training run holds per-epoch metrics, plots, validation report, params and dvc.lock
    train_run = c.get_run(champion.run_id)
    assert len(c.get_metric_history(train_run.info.run_id, "val/loss")) >= 1
    artifacts = {a.path for a in c.list_artifacts(train_run.info.run_id)}
    assert {"params.yaml", "dvc.lock", "plots", "validation"} <= artifacts

    # the champion serves raw rows in a fresh process
    raw = pd.read_csv(root / "data/raw/digits.csv").head(20)
    pred = _predict_in_fresh_process(root, raw.drop(columns="label"))
    assert len(pred) == 20
    assert (pred["prediction"].to_numpy() == raw["label"].to_numpy()).mean() >= 0.5
    proba = pred[[f"proba_{k}" for k in range(10)]].to_numpy()
    assert abs(proba.sum(axis=1) - 1).max() < 1e-6
    as_float = _predict_in_fresh_process(root, raw.drop(columns="label").astype(float))
    assert (as_float["prediction"] == pred["prediction"]).all()
    # and as a REST service
    served = _serve_and_predict(root, raw.drop(columns="label").head(5))
    assert served == pred["prediction"].head(5).tolist()

    # nothing changed: nothing retrains, no new version, no alias moves, dvc agrees
    second = pipeline(overrides=[])
    outcomes = _outcomes(second)
    assert {outcomes[s] for s in ("ingest", "validate", "preprocess", "tune", "train")} == {
        "skipped"
    }
    assert outcomes["evaluate"] == "skipped" and outcomes["register"] == "skipped"
    assert _versions() == [1]
    assert str(c.get_model_version_by_alias(NAME, "champion").version) == "1"
    status = subprocess.run([DVC, "status"], cwd=root, capture_output=True, text=True)
    assert "up to date" in status.stdout

    # one training parameter changed: train and what follows re-run, tune does not
    third = pipeline(overrides=["train.max_epochs=1"])
    outcomes = _outcomes(third)
    assert outcomes["tune"] == "skipped" and outcomes["preprocess"] == "skipped"
    assert outcomes["train"] == "ran" and outcomes["evaluate"] == "ran"

    # a worse challenger (a learning rate too small to learn) is not promoted
    champion_before = str(c.get_model_version_by_alias(NAME, "champion").version)
    worse = pipeline(
        overrides=[
            "tune.space.lr={low: 0.000001, high: 0.000002, log: true}",
            "promote.min_score=0.0",
        ]
    )
    new = worse["model"]["version"]
    assert str(c.get_model_version_by_alias(NAME, "champion").version) == champion_before
    tags = c.get_model_version(NAME, new).tags
    assert tags["promotion.decision"] == "rejected"
    assert f"champion v{champion_before}" in tags["promotion.reason"]
    assert worse["promotion"]["promoted"] is False


def _corrupt(frame: pd.DataFrame) -> pd.DataFrame:
    bad = frame.copy()
    bad["pixel_3"] = bad["pixel_3"].astype(float)
    bad.loc[5, "pixel_3"] = 40  # out of range
    bad.loc[6, "pixel_10"] = None  # a null
    bad.loc[7, "label"] = 11  # unknown label
    return bad


def test_corrupted_raw_data_stops_at_validation(dvc_project, tiny):
    from flows.pipeline import pipeline
    from tasks.ingest import load_digits_frame
    from tasks.validate import DataValidationError

    root = dvc_project
    source = root / "incoming.csv"
    _corrupt(load_digits_frame()).to_csv(source, index=False)
    with pytest.raises(DataValidationError) as err:
        pipeline(overrides=[*tiny, f"data.source={source}"])
    message = str(err.value)
    assert "\n" not in message
    assert "pixel_3" in message and "pixel_10" in message and "label" in message
    assert "expect_column_values_to_be_between" in message
    assert "expect_column_values_to_not_be_null" in message
    assert "expect_column_values_to_be_in_set" in message
    assert tracking.client().search_registered_models() == []
    assert not (root / "data/processed").exists()
    report = json.loads((root / "reports/validation/result.json").read_text())
    assert report["success"] is False
