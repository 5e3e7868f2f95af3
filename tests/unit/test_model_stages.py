import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.inference import Predictor
from models.preprocessing import load_split
from tasks import evaluate, ingest, preprocess, tracking, train, tune
from tasks.config import load_config


def prepare(workspace: Path, *overrides: str):
    from tests.conftest import TINY

    cfg = load_config(workspace / "params.yaml", [*TINY, *overrides])
    ingest.run(cfg)
    preprocess.run(cfg)
    return cfg


@pytest.fixture
def processed(workspace):
    return prepare(workspace)


def _runs(experiment: str):
    c = tracking.client()
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id])


def test_tune_writes_best_params_and_nests_trials(processed):
    cfg = processed
    parent = tracking.start_run(cfg.register_.experiment, "pipeline")
    r = tune.run(cfg, parent_run_id=parent)
    best = json.loads(Path(cfg.paths.best_params).read_text())
    assert best["params"] == r.best_params
    # model.cnn.channels is drawn: the digits use the CNN
    assert set(best["params"]) == set(cfg.tune.space)
    assert best["n_trials"] == 1 and best["study"] == r.study_name
    lo, hi = cfg.tune.space["train.lr"].low, cfg.tune.space["train.lr"].high
    assert lo <= best["params"]["train.lr"] <= hi
    runs = {run.info.run_name: run for run in _runs(cfg.register_.experiment)}
    assert runs["tune"].data.tags["mlflow.parentRunId"] == parent
    trial = runs["trial-0"]
    assert trial.data.tags["mlflow.parentRunId"] == parent
    assert trial.data.tags["optuna.state"] == "COMPLETE"
    assert "val/loss" in trial.data.metrics and "val/acc" in trial.data.metrics
    assert runs["tune"].data.tags["optuna.study"] == r.study_name


def test_conditional_space_over_architectures(workspace):
    space = (
        "tune.space={model.arch: {choices: [cnn1d, rnn]}, model.rnn.cell: {choices: [gru, lstm]},"
        " model.rnn.hidden: {choices: [8, 16]}, model.cnn1d.channels: {choices: [4, 8]},"
        " model.activation: {choices: [relu, gelu, tanh]},"
        " train.optimizer: {choices: [adamw, sgd]}}"
    )
    cfg = prepare(
        workspace, "data.dataset=waveforms", "tune.n_trials=6", "tune.pruner=none", space
    )
    r = tune.run(cfg)
    trials = [t for t in _runs(cfg.register_.experiment) if t.info.run_name.startswith("trial-")]
    assert len(trials) == 6
    archs = set()
    for t in trials:
        p = t.data.params
        archs.add(p["arch"])
        # conditional: an RNN's options only in RNN trials, the 1D CNN's only in theirs
        assert ("model.rnn.cell" in p) == ("model.rnn.hidden" in p) == (p["arch"] == "rnn")
        assert ("model.cnn1d.channels" in p) == (p["arch"] == "cnn1d")
    assert archs == {"cnn1d", "rnn"}
    # the best values apply to the config as they are
    tuned = train.tuned_config(cfg)
    assert tuned.arch == r.best_params["model.arch"]


def test_tune_without_a_pipeline_nests_trials_under_its_own_run(processed):
    r = tune.run(processed)
    runs = {run.info.run_name: run for run in _runs(processed.register_.experiment)}
    assert runs["trial-0"].data.tags["mlflow.parentRunId"] == r.run_id == runs["tune"].info.run_id


def test_train_then_evaluate(processed):
    cfg = processed
    r = train.run(cfg)
    out = Path(cfg.paths.train_dir)
    assert {p.name for p in out.iterdir()} >= {
        "model.pt",
        "model.json",
        "preprocessor.json",
        "best.ckpt",
        "last.ckpt",
    }
    spec = json.loads((out / "model.json").read_text())
    assert spec["mlflow_run_id"] == r.run_id and spec["arch"] == "cnn"
    # the state dict loads with weights_only=True into the network the spec describes
    predictor = Predictor.from_dir(out)
    assert isinstance(predictor.net, torch.nn.Module)
    history = tracking.client().get_metric_history(r.run_id, "val/loss")
    assert len(history) == r.epochs == 2
    for key in ("train/loss", "train/acc", "val/acc"):
        assert len(tracking.client().get_metric_history(r.run_id, key)) == 2, key
    run = tracking.client().get_run(r.run_id)
    assert run.info.status == "FINISHED"
    assert not Path(cfg.paths.checkpoint_dir).exists()  # train_dir holds the checkpoints now

    ev = evaluate.run(cfg)
    metrics = json.loads(Path(cfg.paths.metrics).read_text())
    x, y = load_split(cfg.paths.processed_dir, "test")
    proba = predictor.outputs(x)
    assert metrics["accuracy"] == pytest.approx(float((proba.argmax(1) == y).mean()))
    assert metrics["n_test"] == len(y)
    assert 0.5 < metrics["accuracy"] <= 1.0  # two epochs already learn the digits
    names = {p.name for p in ev.plots}
    assert names == {
        "confusion.csv",
        "roc.csv",
        "pr.csv",
        "confusion_matrix.png",
        "roc.png",
        "pr.png",
    }
    for p in ev.plots:
        assert p.stat().st_size > 0
    logged = tracking.client().get_run(r.run_id).data.metrics
    assert logged["test/accuracy"] == pytest.approx(metrics["accuracy"])
    names = {a.path for a in tracking.client().list_artifacts(r.run_id, "plots")}
    assert "plots/confusion_matrix.png" in names and "plots/pr.png" in names


@pytest.mark.parametrize(
    ("overrides", "arch"),
    [
        (["data.dataset=wine"], "mlp"),
        (["data.dataset=waveforms", "model.arch=rnn", "model.rnn.cell=lstm"], "rnn"),
        (["data.dataset=waveforms"], "fcn"),
        (
            ["data.dataset=waveforms", "model.arch=resnet1d", "model.resnet1d.channels=8"],
            "resnet1d",
        ),
        (["model.arch=resnet", "model.resnet.channels=8"], "resnet"),
    ],
)
def test_each_modality_trains_and_evaluates(workspace, overrides, arch):
    cfg = prepare(workspace, *overrides)
    r = train.run(cfg)
    assert json.loads((Path(cfg.paths.train_dir) / "model.json").read_text())["arch"] == arch
    assert np.isfinite(r.best_val_loss)
    m = evaluate.run(cfg).metrics
    assert_metrics_are_the_models(cfg, m)


def assert_metrics_are_the_models(cfg, m: dict) -> None:
    """evaluate's accuracy is the saved model's own on the test split (not just in [0, 1])."""
    x, y = load_split(cfg.paths.processed_dir, "test")
    proba = Predictor.from_dir(cfg.paths.train_dir).outputs(x)
    assert m["n_test"] == len(y) > 0
    assert m["accuracy"] == pytest.approx(float((proba.argmax(1) == y).mean()))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_regression_trains_with_each_loss_and_plots_residuals(workspace):
    cfg = prepare(workspace, "data.dataset=diabetes", "train.max_epochs=3", "train.loss=huber")
    r = train.run(cfg)
    assert r.metric_name == "val/rmse" and r.best_val_metric > 0
    history = tracking.client().get_metric_history(r.run_id, "val/rmse")
    assert len(history) == r.epochs
    ev = evaluate.run(cfg)
    assert set(ev.metrics) == {"rmse", "mae", "r2", "n_test"}
    _, y = load_split(cfg.paths.processed_dir, "test")
    pred = Predictor.from_dir(cfg.paths.train_dir).outputs(
        load_split(cfg.paths.processed_dir, "test")[0]
    )
    assert ev.metrics["rmse"] == pytest.approx(float(np.sqrt(np.mean((pred - y) ** 2))))
    assert pred.mean() > 50  # back in target units (the diabetes target is ~25..346)
    assert {p.name for p in ev.plots} == {
        "pred_vs_true.csv",
        "residuals.csv",
        "pred_vs_true.png",
        "residuals.png",
    }


def test_classification_metrics_values():
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.9 + 0.1 / 3
    m = evaluate.classification_metrics(y, proba)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["recall_macro"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    # one-vs-rest AUC per class, ties counting a half: class 0 5/8, class 1 7/8, class 2 6/8
    assert m["roc_auc_ovr"] == pytest.approx((5 / 8 + 7 / 8 + 6 / 8) / 3)


def test_regression_metrics_values():
    m = evaluate.regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert m["rmse"] == pytest.approx(np.sqrt(4 / 3))
    assert m["mae"] == pytest.approx(2 / 3)
    assert m["r2"] == pytest.approx(1 - 4 / 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mixed_precision_on_gpu(workspace):
    cfg = prepare(
        workspace,
        "data.dataset=wine",
        "train.accelerator=gpu",
        "train.precision=16-mixed",
    )
    r = train.run(cfg)
    assert np.isfinite(r.best_val_loss)
    assert_metrics_are_the_models(cfg, evaluate.run(cfg).metrics)
