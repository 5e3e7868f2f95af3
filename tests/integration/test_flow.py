"""The whole flow in a temporary git + DVC repository with a temporary SQLite MLflow store."""

import base64
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

import numpy as np
import pandas as pd
import pytest
import yaml

from flows.workspace import overrides_key
from tasks import tracking

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAME = "dlops-digits"
DVC = str(Path(sys.executable).parent / "dvc")


def _git_status(root: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "status", "--porcelain", *args], cwd=root, capture_output=True, text=True
    )
    return out.stdout.strip()


def tags_of(overrides: list[str]) -> list[str]:
    from tasks.config import canonical_overrides

    return canonical_overrides(overrides)


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
    return pd.read_json(io.StringIO(out.stdout.strip().splitlines()[-1]), dtype=False)


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
                return [str(p["prediction"]) for p in predictions]
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
    params_before = (root / "params.yaml").read_bytes()
    first = pipeline(overrides=tiny)
    assert set(_outcomes(first).values()) == {"ran"}
    # hermetic: the run had a workspace of its own; the checkout is exactly as committed
    ws = Path(first["workspace"])
    assert ws.parent == root / ".dlops/workspaces" and first["experiment"]
    assert (root / "params.yaml").read_bytes() == params_before
    assert _git_status(root) == "?? expectations/"  # the suite it inferred, to be reviewed
    assert first["new_suites"] == [str(root / "expectations/digits.json")]

    c = tracking.client()
    assert _versions() == [1]
    champion = c.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == "1"
    tags = champion.tags
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    assert tags["git.commit"] == head
    assert tags["git.dirty"] == "false"  # the overrides are the run's, recorded apart
    assert json.loads(tags["params.overrides"]) == sorted(tags_of(tiny))
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    processed_md5 = lock["stages"]["preprocess"]["outs"][0]["md5"]
    assert tags["dvc.preprocess.data/processed"] == processed_md5
    assert tags["validation.success"] == "true"
    assert tags["optuna.best_trial"] == "0" and tags["optuna.study"].startswith(NAME)
    assert len(tags["params.hash"]) == 64 and len(tags["augment.hash"]) == 64
    manifest = json.loads((ws / "data/raw/manifest.json").read_text())
    assert tags["data.source"] == "builtin:digits" and tags["data.sha256"] == manifest["sha256"]
    assert (tags["data.modality"], tags["data.task"]) == ("images", "classification")
    assert tags["prefect.flow_run_id"] == first["flow_run_id"]
    assert tags["promotion.decision"] == "promoted"

    # the training run holds per-epoch metrics, plots, validation report, params and dvc.lock
    train_run = c.get_run(champion.run_id)
    assert len(c.get_metric_history(train_run.info.run_id, "val/loss")) >= 1
    artifacts = {a.path for a in c.list_artifacts(train_run.info.run_id)}
    assert {"params.yaml", "dvc.lock", "plots", "validation"} <= artifacts

    # the champion serves raw images (base64 PNG text) in a fresh process
    files = sorted((ws / "data/raw/images").glob("*/*.png"))[::90][:20]
    labels = [f.parent.name for f in files]
    rows = pd.DataFrame({"image": [base64.b64encode(f.read_bytes()).decode() for f in files]})
    pred = _predict_in_fresh_process(root, rows)
    assert len(pred) == 20
    assert (pred["prediction"].astype(str).to_numpy() == np.array(labels)).mean() >= 0.5
    proba = pred[[f"proba_{k}" for k in range(10)]].to_numpy()
    assert abs(proba.sum(axis=1) - 1).max() < 1e-6
    # and as a REST service
    served = _serve_and_predict(root, rows.head(5))
    assert served == pred["prediction"].astype(str).head(5).tolist()

    # the same overrides again: the same workspace, nothing retrains, no new version, no alias
    # moves, dvc agrees
    second = pipeline(overrides=tiny)
    assert second["workspace"] == first["workspace"]
    outcomes = _outcomes(second)
    # ingest looks at the source on every run; the same content leaves data/raw as it was
    assert {outcomes[s] for s in ("validate", "preprocess", "tune", "train")} == {"skipped"}
    assert outcomes["evaluate"] == "skipped" and outcomes["register"] == "skipped"
    assert _versions() == [1]
    assert str(c.get_model_version_by_alias(NAME, "champion").version) == "1"
    status = subprocess.run([DVC, "status"], cwd=ws, capture_output=True, text=True)
    assert status.stdout.split() == ["ingest:", "always", "changed"], status.stdout
    # the run is a DVC experiment of the checkout, with its params and metrics
    shown = subprocess.run(
        [DVC, "exp", "show", "--json"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert first["experiment"] in shown and "accuracy" in shown

    # one training parameter changed: a workspace of its own; what tune and the stages before
    # it made comes from DVC's shared run cache, train and what follows re-run
    third = pipeline(overrides=[*tiny, "train.max_epochs=1"])
    outcomes = _outcomes(third)
    assert third["workspace"] != first["workspace"]
    assert outcomes["tune"] == "restored"
    assert outcomes["train"] == "ran" and outcomes["evaluate"] == "ran"

    # a worse challenger (a learning rate too small to learn) is not promoted
    champion_before = str(c.get_model_version_by_alias(NAME, "champion").version)
    worse = pipeline(
        overrides=[
            *tiny,
            "tune.space.train.lr={low: 0.000001, high: 0.000002, log: true}",
            "promote.threshold=null",
        ]
    )
    new = worse["model"]["version"]
    assert str(c.get_model_version_by_alias(NAME, "champion").version) == champion_before
    tags = c.get_model_version(NAME, new).tags
    assert tags["promotion.decision"] == "rejected"
    assert f"champion v{champion_before}" in tags["promotion.reason"]
    assert worse["promotion"]["promoted"] is False
    assert (root / "params.yaml").read_bytes() == params_before
    assert _git_status(root, "--untracked-files=no") == ""


def _table(
    path: Path, n: int = 240, seed: int = 0, rename: dict | None = None, no_label: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 90, n).astype(float),
            "income": rng.normal(50, 10, n).round(2),
            "city": rng.choice(["paris", "oslo", "rome"], n),
        }
    )
    frame["label"] = np.where(frame["income"] + (frame["city"] == "oslo") * 8 > 52, "yes", "no")
    frame.loc[::7, "age"] = np.nan
    frame.loc[3::11, "city"] = None
    frame.loc[frame.index[5 : 5 + no_label], "label"] = None  # rows without a target
    frame.rename(columns=rename or {}).to_csv(path, index=False)
    return path


BYO = ["promote.threshold=null", "validate.min_rows=20"]


def test_bring_your_own_csv_infers_then_enforces_its_suite(dvc_project, tiny):
    from flows.cli.run import _summary
    from flows.pipeline import pipeline
    from tasks.validate import DataValidationError

    root = dvc_project
    src = _table(root / "people.csv", no_label=2)
    first = pipeline(overrides=[*tiny, *BYO, f"data.source={src}", "data.target=label"])
    assert first["stages"][0]["detail"]["modality"] == "tables"
    # 2 of 240 rows without a target: dropped and counted, not a validation failure
    stages = {s["name"]: s for s in first["stages"]}
    assert stages["suite"]["outcome"] == "ran" and stages["suite"]["detail"]["created"]
    assert stages["preprocess"]["detail"]["dropped_missing_target"] == 2
    assert (
        json.loads((Path(first["workspace"]) / "data/processed/split.json").read_text())[
            "dropped_missing_target"
        ]
        == 2
    )
    parent = tracking.client().get_run(first["parent_run_id"])
    assert parent.data.metrics["data/dropped_missing_target"] == 2
    summary = _summary(first)
    assert "(tables, classification, 240 rows; 2 without a target dropped)" in summary
    assert "suite: inferred expectations/people.json: review it and commit it" in summary
    suite = json.loads((root / "expectations/people.json").read_text())
    assert suite["name"] and len(suite["expectations"]) > 5
    name = first["model"]["name"]
    assert name == "dlops-people"
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    raw = pd.read_csv(src).drop(columns="label").head(6)  # strings and missing values as they are
    out = model.predict(raw)
    assert set(out["prediction"]) <= {"yes", "no"}
    assert list(out.columns) == ["prediction", "proba_no", "proba_yes"]

    # a refreshed source whose schema changed fails loudly against the saved suite
    _table(src, seed=1, rename={"income": "salary"})
    with pytest.raises(DataValidationError) as err:
        pipeline(overrides=[*tiny, *BYO, f"data.source={src}", "data.target=label"])
    assert "salary" in str(err.value) and "\n" not in str(err.value)
    versions = tracking.client().search_model_versions(f"name='{name}'")
    assert [str(v.version) for v in versions] == ["1"]


def test_bring_your_own_sequences_and_regression(dvc_project, tiny):
    from flows.pipeline import pipeline

    root = dvc_project
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 16)).astype(np.float32)
    y = (x[:, :8].sum(axis=1) * 3 + 10).astype(np.float64)  # a regression target
    np.savez(root / "signal.npz", x=x, y=y)
    r = pipeline(overrides=[*tiny, *BYO, f"data.source={root / 'signal.npz'}"])
    assert r["stages"][0]["detail"]["task"] == "regression"
    assert set(r["metrics"]) == {"rmse", "mae", "r2", "n_test"}
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{r['model']['name']}/1")
    out = model.predict(pd.DataFrame({"sequence": [s.tolist() for s in x[:4]]}))
    assert out["prediction"].dtype == np.float64 and len(out) == 4


def _images_with(root: Path, bad: str) -> Path:
    from PIL import Image

    base = root / "imgs"
    for k in ("a", "b"):
        (base / k).mkdir(parents=True)
        for i in range(30):
            Image.fromarray(np.full((8, 8), 40 * i % 255, np.uint8)).save(base / k / f"{i}.png")
    if bad == "corrupt":
        (base / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    else:
        (base / "c").mkdir()
    return base


def _single_class(root: Path) -> Path:
    path = _table(root / "one.csv")
    frame = pd.read_csv(path)
    frame["label"] = "yes"
    frame.to_csv(path, index=False)
    return path


BAD_INPUTS = {
    "missing file": (lambda r: r / "missing.csv", [], "missing.csv: file not found"),
    "empty file": (
        lambda r: (r / "empty.csv").write_text("") or r / "empty.csv",
        [],
        "empty.csv: file is empty",
    ),
    "missing target": (
        lambda r: _table(r / "t.csv"),
        ["data.target=price"],
        "no target column 'price'",
    ),
    "single class": (_single_class, ["data.target=label"], "1 class"),
    "unreadable image": (lambda r: _images_with(r, "corrupt"), [], "broken.png"),
    "empty class folder": (
        lambda r: _images_with(r, "empty"),
        [],
        "class folder 'c' holds no PNG or JPEG image",
    ),
    "mismatched x/y": (
        lambda r: np.savez(r / "m.npz", x=np.zeros((9, 4)), y=np.zeros(8)) or r / "m.npz",
        [],
        "x has 9 sequences but y has 8 labels",
    ),
    "too many NaN labels": (
        lambda r: (
            np.savez(
                r / "n.npz", x=np.arange(96.0).reshape(24, 4), y=np.r_[[0, 1] * 10, [np.nan] * 4]
            )
            or r / "n.npz"
        ),
        [],
        "4 of 24 rows have no target (16.7%), at most 5.0% allowed",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_stops_before_training_with_one_line(dvc_project, tiny, case):
    from flows.pipeline import pipeline
    from tasks.sources import DataError
    from tasks.validate import DataValidationError

    make, extra, message = BAD_INPUTS[case]
    src = make(dvc_project)
    overrides = [*tiny, *BYO, f"data.source={src}", *extra]
    params_before = (dvc_project / "params.yaml").read_bytes()
    with pytest.raises((DataError, DataValidationError)) as err:
        pipeline(overrides=overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert tracking.client().search_registered_models() == []
    ws = dvc_project / ".dlops/workspaces" / overrides_key(overrides)
    assert not (ws / "data/train").exists() and not (dvc_project / "data/train").exists()
    # a failed run leaves the checkout as it was
    assert (dvc_project / "params.yaml").read_bytes() == params_before
    assert _git_status(dvc_project, "--untracked-files=no") == ""
