import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.networks import load_trained
from models.preprocessing import load_split
from tasks import evaluate, ingest, preprocess, tracking, train, tune


@pytest.fixture
def processed(tiny_cfg):
    ingest.run(tiny_cfg)
    preprocess.run(tiny_cfg)
    return tiny_cfg


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
    assert set(best["params"]) == set(cfg.tune.space)
    assert best["n_trials"] == 1 and best["study"] == r.study_name
    lo, hi = cfg.tune.space["lr"].low, cfg.tune.space["lr"].high
    assert lo <= best["params"]["lr"] <= hi
    runs = {run.info.run_name: run for run in _runs(cfg.register_.experiment)}
    assert runs["tune"].data.tags["mlflow.parentRunId"] == parent
    trial = runs["trial-0"]
    assert trial.data.tags["mlflow.parentRunId"] == parent
    assert trial.data.tags["optuna.state"] == "COMPLETE"
    assert "val/loss" in trial.data.metrics
    assert runs["tune"].data.tags["optuna.study"] == r.study_name


def test_tune_without_a_pipeline_nests_trials_under_its_own_run(processed):
    r = tune.run(processed)
    runs = {run.info.run_name: run for run in _runs(processed.register_.experiment)}
    assert runs["trial-0"].data.tags["mlflow.parentRunId"] == r.run_id == runs["tune"].info.run_id


def test_train_then_evaluate(processed):
    cfg = processed
    r = train.run(cfg)
    out = Path(cfg.paths.train_dir)
    assert {p.name for p in out.iterdir()} >= {"model.pt", "model.json", "normalizer.json"}
    spec = json.loads((out / "model.json").read_text())
    assert spec["mlflow_run_id"] == r.run_id
    # the state dict loads with weights_only=True into the network the spec describes
    net, _ = load_trained(out)
    assert isinstance(net, torch.nn.Module)
    history = tracking.client().get_metric_history(r.run_id, "val/loss")
    assert len(history) == r.epochs == 2
    for key in ("train/loss", "train/acc", "val/acc"):
        assert len(tracking.client().get_metric_history(r.run_id, key)) == 2, key
    run = tracking.client().get_run(r.run_id)
    assert run.info.status == "FINISHED"

    ev = evaluate.run(cfg)
    metrics = json.loads(Path(cfg.paths.metrics).read_text())
    x, y = load_split(cfg.paths.processed_dir, "test")
    proba = evaluate.predict_proba(out, x)
    assert metrics["accuracy"] == pytest.approx(float((proba.argmax(1) == y).mean()))
    assert metrics["n_test"] == len(y)
    assert 0.5 < metrics["accuracy"] <= 1.0  # two epochs already learn the digits
    for p in ev.plots:
        assert p.stat().st_size > 0
    logged = tracking.client().get_run(r.run_id).data.metrics
    assert logged["test/accuracy"] == pytest.approx(metrics["accuracy"])
    names = {a.path for a in tracking.client().list_artifacts(r.run_id, "plots")}
    assert "plots/confusion_matrix.png" in names and "plots/roc.png" in names


def test_classification_metrics_values():
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.9 + 0.1 / 3
    m = evaluate.classification_metrics(y, proba)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["recall_macro"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert 0 <= m["roc_auc_ovr"] <= 1


def test_training_is_deterministic(processed):
    cfg = processed
    first = train.run(cfg)
    second = train.run(cfg)
    assert first.best_val_loss == pytest.approx(second.best_val_loss, abs=1e-7)
