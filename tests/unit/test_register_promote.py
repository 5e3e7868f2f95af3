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

from models.pyfunc import (
    IMAGE,
    PREDICTION,
    PREPROCESSOR,
    SPEC,
    WEIGHTS,
    DlopsModel,
    encode_png,
    to_model_input,
)
from tasks import promote, register, tracking
from tasks.config import Config, load_config

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
NAME = "tiny-digits"
PROBA = [f"proba_{k}" for k in range(10)]


def make_cfg(tmp_path: Path, *extra: str) -> Config:
    """The tiny model's folders, relative to tmp_path (the cwd under `sqlite_mlflow`)."""
    assert Path.cwd() == tmp_path
    return load_config(
        PARAMS,
        overrides=[
            "paths.train_dir=train",
            "paths.processed_dir=processed",
            f"register.model_name={NAME}",
            "register.experiment=unit",
            "promote.threshold=0.5",
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
    last_bias = [k for k in out if k.startswith("head.") and k.endswith(".bias")][-1]
    out[last_bias][0] += eps
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
from models.pyfunc import encode_png, to_model_input
x = np.load("{test_npz}")["x"][:7]
frame = model.predict(pd.DataFrame({{"image": [encode_png(img) for img in x]}}))
lists = model.predict(to_model_input("images", x))
array = model.unwrap_python_model().predict(None, x)
try:
    model.predict(pd.DataFrame({{"img": list(x)}}))
    missing_column_error = ""
except mlflow.exceptions.MlflowException as exc:
    missing_column_error = str(exc)[str(exc).rfind("Error: "):][:200]
print(json.dumps({{
    "seconds": seconds,
    "networks": models.networks.__file__,
    "frame": frame.to_dict(orient="list"),
    "frame_dtypes": {{c: str(t) for c, t in frame.dtypes.items()}},
    "lists": lists.to_dict(orient="list"),
    "array": array.to_dict(orient="list"),
    "missing_column_error": missing_column_error,
}}))
"""


@pytest.mark.slow
def test_champion_predicts_raw_images_in_a_fresh_process(tmp_path, tiny_model, sqlite_mlflow):
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
    assert list(frame.columns) == [PREDICTION, *PROBA]
    assert out["frame_dtypes"][PREDICTION] == "int64"
    assert all(out["frame_dtypes"][c] == "float64" for c in PROBA)
    np.testing.assert_allclose(frame[PROBA].sum(axis=1), 1.0, atol=1e-6)
    assert (frame[PREDICTION] == frame[PROBA].to_numpy().argmax(axis=1)).all()
    # PNG text, nested pixel lists and (through unwrap) a plain uint8 array: the same outputs.
    pd.testing.assert_frame_equal(pd.DataFrame(out["lists"]), frame)
    pd.testing.assert_frame_equal(pd.DataFrame(out["array"]), frame)
    # The same numbers as the network run directly on the preprocessed images.
    assert frame[PREDICTION].tolist() == direct_predictions(tiny_model, 7)
    # MLflow's wrapper enforces the signature's `image` column.
    assert out["missing_column_error"].startswith("Error: Model is missing inputs ['image']")


def direct_predictions(tiny_model, n: int) -> list[int]:
    """Predictions of the network run directly on the preprocessed first n test images."""
    from models.networks import load_network
    from models.preprocessing import load

    d = tiny_model.train_dir
    pre = load(d / "preprocessor.json")
    net = load_network(d / "model.json", d / "model.pt")
    with torch.inference_mode():
        logits = net(torch.from_numpy(pre.transform(tiny_model.x_test[:n])))
    return pre.target.decode(logits.argmax(1).numpy()).tolist()


def test_promotion_gate(tmp_path, tiny_model, sqlite_mlflow):
    cfg = make_cfg(tmp_path)
    client = tracking.client()

    v1 = register_weights(tiny_model, cfg)
    first = promote.run(cfg, NAME, v1.version)

    assert first.promoted and first.champion_version == "1"
    assert first.previous_champion is None and first.previous_score is None
    # the registered model's accuracy is the network's own on the test images, 0.93 here
    direct = np.array(direct_predictions(tiny_model, len(tiny_model.y_test)))
    assert first.new_score == pytest.approx(float(np.mean(direct == tiny_model.y_test)))
    assert first.new_score > 0.8
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
    worse = promote.run(make_cfg(tmp_path, "promote.threshold=0.0"), NAME, v2.version)

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
    assert promote.run(make_cfg(tmp_path, "promote.threshold=0.0"), NAME, "2") == worse
    assert promote.run(cfg, NAME, "1").promoted

    # Below the floor: rejected, and the reason names the floor.
    v3 = register_weights(tiny_model, cfg, nudged(tiny_model.state))
    low = promote.run(make_cfg(tmp_path, "promote.threshold=0.99"), NAME, v3.version)

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


def test_decide_lower_is_better():
    # rmse: the bound is a ceiling, lower is better, "no worse" is <=.
    assert promote.decide("rmse", 0.5, 0.4, None, None) == (
        False,
        "not promoted: rmse 0.5000 above the ceiling 0.4",
    )
    assert promote.decide("rmse", 0.4, 0.4, None, None) == (
        True,
        "promoted: rmse 0.4000 <= ceiling 0.4 and no champion yet",
    )
    assert promote.decide("rmse", 0.3, 0.4, "2", 0.3) == (
        True,
        "promoted: rmse 0.3000 <= ceiling 0.4 and <= champion v2 0.3000",
    )
    assert promote.decide("rmse", 0.31, 0.4, "2", 0.3) == (
        False,
        "not promoted: rmse 0.3100 > champion v2 0.3000",
    )
    assert promote.decide("mae", 9.0, None, "1", 10.0) == (
        True,
        "promoted: mae 9.0000 <= champion v1 10.0000",
    )
    assert promote.decide("rmse", 7.0, None, None, None) == (
        True,
        "promoted: rmse 7.0000 no champion yet",
    )


@pytest.fixture
def classifier(tiny_model) -> DlopsModel:
    """The pyfunc class loaded from the tiny model folder, as MLflow's loader would."""
    d = tiny_model.train_dir
    artifacts = {
        WEIGHTS: str(d / "model.pt"),
        SPEC: str(d / "model.json"),
        PREPROCESSOR: str(d / "preprocessor.json"),
    }
    model = DlopsModel()
    model.load_context(PythonModelContext(artifacts=artifacts, model_config={}))
    return model


def test_predict_accepts_png_text_bytes_and_pixel_lists(classifier, tiny_model):
    import base64

    x = tiny_model.x_test[:5]
    png_text = [encode_png(img) for img in x]
    # Extra columns are ignored.
    frame = pd.DataFrame({IMAGE: png_text, "label": tiny_model.y_test[:5]})

    out = classifier.predict(None, frame)

    assert list(out.columns) == [PREDICTION, *PROBA]
    assert out[PREDICTION].dtype == np.int64
    np.testing.assert_allclose(out[PROBA].sum(axis=1), 1.0, atol=1e-6)
    assert out[PREDICTION].tolist() == direct_predictions(tiny_model, 5)
    png_bytes = pd.DataFrame({IMAGE: [base64.b64decode(t) for t in png_text]})
    lists_8x8 = pd.DataFrame({IMAGE: [img[:, :, 0].tolist() for img in x]})
    pd.testing.assert_frame_equal(classifier.predict(None, png_bytes), out)
    pd.testing.assert_frame_equal(classifier.predict(None, lists_8x8), out)
    pd.testing.assert_frame_equal(classifier.predict(None, to_model_input("images", x)), out)
    pd.testing.assert_frame_equal(classifier.predict(None, x), out)


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        (["not an image"], r"^image 0: text that is not base64 of an encoded image$"),
        ([b"not a png"], r"^image 0: cannot decode image \("),
        ([{"a": 1}], r"^image 0: not an image \(expected bytes or a pixel array\)$"),
        ([[[float("nan")] * 8] * 8], r"^image 0: pixel array is empty or holds NaN"),
        ([np.zeros((8, 8, 2)).tolist()], r"^image 0: expected an \(H, W\) or \(H, W, 1\|3\|4\)"),
        ([np.zeros((8, 8)).tolist(), "x"], r"^image 1: text that is not base64"),
    ],
)
def test_predict_rejects_a_cell_that_is_not_an_image(classifier, cells, message):
    with pytest.raises(ValueError, match=message) as info:
        classifier.predict(None, pd.DataFrame({IMAGE: cells}))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            pd.DataFrame({"img": [np.zeros((8, 8)).tolist()]}),
            r"expected a DataFrame with a 'image' column; got columns \['img'\]",
        ),
        (pd.DataFrame({IMAGE: []}), "no rows to predict"),
    ],
)
def test_predict_rejects_bad_frames(classifier, bad, message):
    with pytest.raises(ValueError, match=message) as info:
        classifier.predict(None, bad)
    assert "\n" not in str(info.value)


def test_registered_model_rejects_missing_columns(tmp_path, tiny_model, sqlite_mlflow):
    import mlflow

    cfg = make_cfg(tmp_path)
    reg = register_weights(tiny_model, cfg)
    model = mlflow.pyfunc.load_model(reg.model_uri)
    frame = pd.DataFrame({"img": [encode_png(img) for img in tiny_model.x_test[:2]]})

    with pytest.raises(MlflowException, match=r"Model is missing inputs \['image'\]"):
        model.predict(frame)
    # The logged input example: two test images as base64 PNG text.
    example = model.input_example
    assert list(example.columns) == [IMAGE] and len(example) == 2
    pd.testing.assert_frame_equal(
        model.predict(example), model.predict(frame.rename(columns={"img": IMAGE}))
    )


def test_cli_entry_points_and_champion_shortcut(
    tmp_path, tiny_model, sqlite_mlflow, monkeypatch, capsys
):
    from tasks.config import write_overrides

    params = tmp_path / "params.yaml"
    params.write_text(PARAMS.read_text())
    write_overrides(
        params,
        [
            f"paths.train_dir={tiny_model.train_dir.relative_to(tmp_path)}",
            f"paths.processed_dir={tiny_model.processed_dir.relative_to(tmp_path)}",
            f"register.model_name={NAME}",
            "register.experiment=unit",
            "promote.threshold=0.5",
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


def _decided(client, version: str, decision: str, against: str) -> None:
    """The tags a promotion writes before it moves the alias (a run killed right there)."""
    tags = {
        promote.TAG_REASON: f"{decision} (test)",
        promote.TAG_METRIC: "accuracy",
        promote.TAG_NEW_SCORE: "0.9",
        promote.TAG_CHAMPION_SCORE: "0.9",
        promote.TAG_CHAMPION_VERSION: against,
        promote.TAG_DECISION: decision,
    }
    for key, value in tags.items():
        client.set_model_version_tag(NAME, version, key, value)


def test_a_decision_whose_alias_move_was_cut_short_is_finished_once(
    tmp_path, tiny_model, sqlite_mlflow
):
    cfg = make_cfg(tmp_path)
    client = tracking.client()
    v1 = register_weights(tiny_model, cfg)
    assert promote.run(cfg, NAME, v1.version).promoted
    state = torch.load(tiny_model.train_dir / "model.pt", weights_only=True)
    v2 = register_weights(tiny_model, cfg, nudged(state, 1e-7)).version
    v3 = register_weights(tiny_model, cfg, nudged(state, 2e-7)).version
    v4 = register_weights(tiny_model, cfg, nudged(state, 3e-7)).version

    # v2 promoted against v1, killed before the alias moved: the rerun moves @champion
    _decided(client, v2, promote.PROMOTED, "1")
    assert promote._alias_version(client, NAME, "champion") == "1"
    again = promote.run(cfg, NAME, v2)
    assert again.promoted and again.champion_version == v2
    assert promote._alias_version(client, NAME, "champion") == v2

    # v4 rejected and holding @challenger; v3's rejection (against v2) was cut short: the rerun
    # does not move @challenger back to the older v3
    _decided(client, v4, promote.REJECTED, v2)
    client.set_registered_model_alias(NAME, "challenger", v4)
    _decided(client, v3, promote.REJECTED, v2)
    assert not promote.run(cfg, NAME, v3).promoted
    assert promote._alias_version(client, NAME, "challenger") == v4
    # a decision made against a champion that has been replaced since is left as it was
    client.delete_registered_model_alias(NAME, "challenger")
    _decided(client, v3, promote.PROMOTED, "1")
    promote.run(cfg, NAME, v3)
    assert promote._alias_version(client, NAME, "champion") == v2
