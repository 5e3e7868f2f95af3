"""tasks.register, tasks.promote and the raw-input pyfunc on a real SQLite MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModelContext

from models.pyfunc import NORMALIZER, SPEC, WEIGHTS, DigitsClassifier, pixel_columns
from tasks import promote, register, tracking
from tasks.config import Config, load_config

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
NAME = "tiny-digits"
PROBA = [f"proba_{k}" for k in range(10)]


def make_cfg(tmp_path: Path, *extra: str) -> Config:
    return load_config(
        PARAMS,
        overrides=[
            f"paths.train_dir={tmp_path / 'train'}",
            f"paths.processed_dir={tmp_path / 'processed'}",
            f"register.model_name={NAME}",
            "register.experiment=unit",
            "promote.min_score=0.5",
            *extra,
        ],
    )


def training_run() -> str:
    run_id = tracking.start_run("unit", "train", tags={"dlops.stage": "train"})
    tracking.end_run(run_id)
    return run_id


def register_weights(tiny_model, cfg: Config, state=None) -> register.RegisterResult:
    """A new training run for `state`, then register it (as the pipeline does after train)."""
    tiny_model.write_weights(state, run_id=training_run())
    return register.run(cfg, lineage={})


def zeroed(state: dict) -> dict:
    return {k: torch.zeros_like(v) for k, v in state.items()}


def nudged(state: dict, eps: float = 1e-7) -> dict:
    """Different bytes (a new hash), the same predictions."""
    out = {k: v.clone() for k, v in state.items()}
    out["head.5.bias"][0] += eps
    return out


def test_register_creates_version_then_is_idempotent(tmp_path, tiny_model, sqlite_mlflow):
    cfg = make_cfg(tmp_path)
    (tmp_path / "params.yaml").write_text(PARAMS.read_text())
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    run_id = training_run()
    parent = tracking.start_run("unit", "pipeline")
    weights = tiny_model.write_weights(run_id=run_id)
    lineage = {"git.commit": "0123abc", "git.dirty": "false", "data.raw.md5": "feed"}

    first = register.run(cfg, lineage, parent_run_id=parent)

    assert first == register.RegisterResult(NAME, "1", run_id, f"models:/{NAME}/1", True)
    client = tracking.client()
    mv = client.get_model_version(NAME, "1")
    assert mv.run_id == run_id
    assert mv.tags[register.SHA_TAG] == register.file_sha256(weights)
    assert {k: mv.tags[k] for k in lineage} == lineage
    assert mv.tags[register.PIPELINE_RUN_TAG] == parent
    train_run = client.get_run(run_id)
    assert train_run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run_id)} >= {"params.yaml", "dvc.lock"}
    assert client.get_run(parent).data.tags[register.REGISTERED_TAG] == f"{NAME}/1"

    again = register.run(cfg, {"git.commit": "other"})

    assert again == register.RegisterResult(NAME, "1", run_id, f"models:/{NAME}/1", False)
    assert [str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")] == ["1"]
    assert client.get_run(run_id).info.end_time == train_run.info.end_time


def test_register_rejects_missing_weights_and_unknown_run(tmp_path, tiny_model, sqlite_mlflow):
    cfg = make_cfg(tmp_path)
    tiny_model.write_weights(run_id="0" * 32)
    with pytest.raises(LookupError, match="training run 0+ .* is not in the tracking store"):
        register.run(cfg, {})
    (tiny_model.train_dir / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="no trained model; run tasks.train first"):
        register.run(cfg, {})


FRESH_PROCESS = """
import json, sys, time
# Prove the model's own code copy suffices: drop the editable install's finder for `models`.
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
import mlflow, numpy as np, pandas as pd, torch
torch.set_num_threads(1)
start = time.perf_counter()
model = mlflow.pyfunc.load_model("models:/{name}@champion")
seconds = time.perf_counter() - start
import models.networks
x = np.load("{test_npz}")["x"][:7]
frame = model.predict(pd.DataFrame(x, columns=[f"pixel_{{i}}" for i in range(64)]))
array = model.unwrap_python_model().predict(None, x)
try:
    model.predict(x)
    wrapped_array_error = ""
except mlflow.exceptions.MlflowException as exc:
    wrapped_array_error = str(exc)[str(exc).rfind("Error: "):][:200]
print(json.dumps({{
    "seconds": seconds,
    "networks": models.networks.__file__,
    "frame": frame.to_dict(orient="list"),
    "frame_dtypes": {{c: str(t) for c, t in frame.dtypes.items()}},
    "array": array.to_dict(orient="list"),
    "wrapped_array_error": wrapped_array_error,
}}))
"""


@pytest.mark.slow
def test_champion_predicts_raw_rows_in_a_fresh_process(tmp_path, tiny_model, sqlite_mlflow):
    cfg = make_cfg(tmp_path)
    reg = register_weights(tiny_model, cfg)
    assert promote.run(cfg, NAME, reg.version).promoted
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_REGISTRY_URI")}
    env["MLFLOW_TRACKING_URI"] = sqlite_mlflow
    script = FRESH_PROCESS.format(name=NAME, test_npz=tiny_model.processed_dir / "test.npz")

    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"fresh-process load_model: {out['seconds']:.2f} s")
    assert Path(out["networks"]).is_relative_to(tmp_path / "mlartifacts")
    assert "/code/models/" in out["networks"]
    frame = pd.DataFrame(out["frame"])
    assert list(frame.columns) == ["prediction", *PROBA]
    assert out["frame_dtypes"]["prediction"] == "int64"
    assert all(out["frame_dtypes"][c] == "float64" for c in PROBA)
    np.testing.assert_allclose(frame[PROBA].sum(axis=1), 1.0, atol=1e-6)
    assert (frame["prediction"] == frame[PROBA].to_numpy().argmax(axis=1)).all()
    pd.testing.assert_frame_equal(pd.DataFrame(out["array"]), frame)
    # The same numbers as the network run directly on normalized rows.
    assert frame["prediction"].tolist() == direct_predictions(tiny_model, 7)
    # MLflow's wrapper enforces the named-column signature: plain arrays go through unwrap.
    assert out["wrapped_array_error"].startswith("Error: Model is missing inputs ['pixel_0',")


def direct_predictions(tiny_model, n: int) -> list[int]:
    """Predictions of the network run directly on the normalized first n test rows."""
    from models.networks import CNNSpec, build_network
    from models.preprocessing import Normalizer

    meta = json.loads((tiny_model.train_dir / "model.json").read_text())
    norm = Normalizer.load(tiny_model.train_dir / "normalizer.json")
    net = build_network(CNNSpec(**meta["spec"]))
    net.load_state_dict(tiny_model.state)
    with torch.inference_mode():
        logits = net.eval()(torch.from_numpy(norm.transform(tiny_model.x_test[:n])))
    return logits.argmax(1).tolist()


def test_promotion_gate(tmp_path, tiny_model, sqlite_mlflow):
    cfg = make_cfg(tmp_path)
    client = tracking.client()

    v1 = register_weights(tiny_model, cfg)
    first = promote.run(cfg, NAME, v1.version)

    assert first.promoted and first.champion_version == "1"
    assert first.previous_champion is None and first.previous_score is None
    assert 0.5 <= first.new_score <= 1
    assert (
        first.reason
        == f"promoted: accuracy {first.new_score:.4f} >= floor 0.5 and no champion yet"
    )
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    tags = client.get_model_version(NAME, "1").tags
    assert tags[promote.TAG_DECISION] == "promoted"
    assert tags[promote.TAG_CHAMPION_SCORE] == "none"
    assert tags[promote.TAG_CHAMPION_VERSION] == "none"

    # A worse challenger (zeroed weights predict class 0 everywhere) above a zero floor.
    v2 = register_weights(tiny_model, make_cfg(tmp_path), zeroed(tiny_model.state))
    worse = promote.run(make_cfg(tmp_path, "promote.min_score=0.0"), NAME, v2.version)

    zero_acc = float(np.mean(tiny_model.y_test == 0))
    assert not worse.promoted
    assert worse.new_score == pytest.approx(zero_acc)
    assert worse.champion_version == "1" and worse.previous_champion == "1"
    assert worse.previous_score == pytest.approx(first.new_score)
    expected = f"not promoted: accuracy {zero_acc:.4f} < champion v1 {first.new_score:.4f}"
    assert worse.reason == expected
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "2"
    tags = client.get_model_version(NAME, "2").tags
    assert tags[promote.TAG_DECISION] == "rejected"
    assert tags[promote.TAG_REASON] == expected
    assert tags[promote.TAG_METRIC] == "accuracy"
    assert float(tags[promote.TAG_NEW_SCORE]) == pytest.approx(zero_acc)
    assert float(tags[promote.TAG_CHAMPION_SCORE]) == pytest.approx(first.new_score)
    assert tags[promote.TAG_CHAMPION_VERSION] == "1"

    # Judged once: a re-run (even with a gate that would now pass it) returns the record.
    assert promote.run(make_cfg(tmp_path, "promote.min_score=0.0"), NAME, "2") == worse
    assert promote.run(cfg, NAME, "1").promoted

    # Below the floor: rejected, and the reason names the floor.
    v3 = register_weights(tiny_model, cfg, nudged(tiny_model.state))
    low = promote.run(make_cfg(tmp_path, "promote.min_score=0.99"), NAME, v3.version)

    assert not low.promoted and low.champion_version == "1"
    assert low.reason == f"not promoted: accuracy {low.new_score:.4f} below the floor 0.99"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "3"

    # Equal to the champion and above the floor: promoted; the champion alias moves.
    v4 = register_weights(tiny_model, cfg, nudged(tiny_model.state, 2e-7))
    equal = promote.run(cfg, NAME, v4.version)

    assert equal.promoted and equal.champion_version == "4" and equal.previous_champion == "1"
    assert equal.new_score == pytest.approx(first.new_score)
    assert equal.reason == (
        f"promoted: accuracy {equal.new_score:.4f} >= floor 0.5 and >= champion v1 "
        f"{first.new_score:.4f}"
    )
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "4"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "3"


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("accuracy", 4 / 6),
        ("recall_macro", (1 + 1 / 2 + 1 / 2) / 3),
        ("precision_macro", (2 / 3 + 1 / 2 + 1) / 3),
        ("f1_macro", (0.8 + 0.5 + 2 / 3) / 3),
        ("roc_auc_ovr", (0.875 + 0.625 + 0.75) / 3),  # ties count a half
    ],
)
def test_score_metrics(metric, expected):
    y = np.array([0, 0, 1, 1, 2, 2])
    predicted = [0, 0, 1, 0, 2, 1]
    proba = np.full((6, 3), 0.2) + 0.4 * np.eye(3)[predicted]
    preds = pd.DataFrame(proba, columns=["proba_0", "proba_1", "proba_2"])
    preds.insert(0, "prediction", predicted)
    assert promote.score(metric, y, preds) == pytest.approx(expected)


def test_score_rejects_unknown_metric():
    preds = pd.DataFrame({"prediction": [0], "proba_0": [1.0]})
    with pytest.raises(ValueError, match="unknown promotion metric 'mse'"):
        promote.score("mse", np.array([0]), preds)


@pytest.fixture
def classifier(tiny_model) -> DigitsClassifier:
    """The pyfunc class loaded from the tiny model folder, as MLflow's loader would."""
    d = tiny_model.train_dir
    artifacts = {
        WEIGHTS: str(d / "model.pt"),
        SPEC: str(d / "model.json"),
        NORMALIZER: str(d / "normalizer.json"),
    }
    model = DigitsClassifier()
    model.load_context(PythonModelContext(artifacts=artifacts, model_config={}))
    return model


def test_predict_accepts_frame_array_and_list(classifier, tiny_model):
    x = tiny_model.x_test[:5]
    frame = pd.DataFrame(x, columns=pixel_columns())
    # Column order does not matter and extra columns are ignored.
    shuffled = frame[pixel_columns()[::-1]].assign(label=tiny_model.y_test[:5])

    out = classifier.predict(None, frame)

    assert list(out.columns) == ["prediction", *PROBA]
    assert out["prediction"].dtype == np.int64
    np.testing.assert_allclose(out[PROBA].sum(axis=1), 1.0, atol=1e-6)
    pd.testing.assert_frame_equal(classifier.predict(None, x), out)
    pd.testing.assert_frame_equal(classifier.predict(None, x.tolist()), out)
    pd.testing.assert_frame_equal(classifier.predict(None, shuffled), out)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            np.zeros((2, 63)),
            r"expected the 64 pixel columns pixel_0\.\.pixel_63 .*shape \(2, 63\)",
        ),
        (np.zeros(64), r"expected the 64 pixel columns pixel_0\.\.pixel_63 .*shape \(64,\)"),
        (
            pd.DataFrame(np.zeros((2, 63)), columns=[f"pixel_{i}" for i in range(63)]),
            r"pixel_0\.\.pixel_63; the DataFrame lacks 1 of them \(pixel_63\)",
        ),
        (
            pd.DataFrame(np.zeros((2, 64))),
            r"lacks 64 of them \(pixel_0, pixel_1, pixel_2, \.\.\.\)",
        ),
        (np.full((1, 64), np.nan), "pixel_0..pixel_63; the input holds NaN or infinite values"),
        ([["a"] * 64], "pixel_0..pixel_63 holding numbers"),
    ],
)
def test_predict_rejects_bad_input(classifier, bad, message):
    with pytest.raises(ValueError, match=message) as info:
        classifier.predict(None, bad)
    assert "\n" not in str(info.value)


def test_registered_model_rejects_missing_columns(tmp_path, tiny_model, sqlite_mlflow):
    import mlflow

    cfg = make_cfg(tmp_path)
    reg = register_weights(tiny_model, cfg)
    model = mlflow.pyfunc.load_model(reg.model_uri)
    frame = pd.DataFrame(tiny_model.x_test[:2], columns=pixel_columns()).drop(columns="pixel_63")

    with pytest.raises(MlflowException, match=r"Model is missing inputs \['pixel_63'\]"):
        model.predict(frame)


def test_cli_entry_points_and_champion_shortcut(
    tmp_path, tiny_model, sqlite_mlflow, monkeypatch, capsys
):
    from tasks.config import write_overrides

    params = tmp_path / "params.yaml"
    params.write_text(PARAMS.read_text())
    write_overrides(
        params,
        [
            f"paths.train_dir={tiny_model.train_dir}",
            f"paths.processed_dir={tiny_model.processed_dir}",
            f"register.model_name={NAME}",
            "register.experiment=unit",
            "promote.min_score=0.5",
        ],
    )
    tiny_model.write_weights(run_id=training_run())

    monkeypatch.setattr(sys, "argv", ["register"])
    register.main()
    monkeypatch.setattr(sys, "argv", ["promote", "--version", "1"])
    promote.main()
    promote.main()

    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"register: {NAME} version 1 (registered); models:/{NAME}/1"
    assert lines[1].startswith("promote: promoted: accuracy ")
    assert lines[1].endswith("no champion yet; @champion is v1")
    assert lines[2] == lines[1]  # the recorded decision, not a second judgement

    # A version that holds @champion without a recorded decision is left alone.
    client = tracking.client()
    for key in client.get_model_version(NAME, "1").tags:
        if key.startswith("promotion."):
            client.delete_model_version_tag(NAME, "1", key)
    same = promote.run(make_cfg(tmp_path), NAME, "1")
    assert same.promoted and same.champion_version == "1"
    assert same.reason == "v1 already holds @champion: nothing to do"
    assert not any(k.startswith("promotion.") for k in client.get_model_version(NAME, "1").tags)
