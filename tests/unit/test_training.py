"""The step budget, the auto arch rule, k-fold tuning on small data, sequence augmentation.

Real torch, Lightning, Optuna and MLflow on a generated sequence set of a few dozen examples.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.augment import SequenceAugment
from models.training import budget, fixed_budget
from tasks import ingest, preprocess, tracking, train, tune
from tasks.config import ConfigError, auto_arch, load_config


def small_sequences(path: Path, n_per_class: int = 20, length: int = 40) -> Path:
    """3 classes of noisy sines (frequency by class), a fixed test split of 10 per class."""
    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(3), n)
        t = np.linspace(0, 1, length)[None, :]
        phase = rng.uniform(0, 2 * np.pi, (len(y), 1))
        x = np.sin(2 * np.pi * (1 + 2 * y[:, None]) * t + phase)
        return (x + 0.3 * rng.normal(size=x.shape)).astype(np.float32), y

    x, y = make(n_per_class)
    x_test, y_test = make(10)
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


def prepare(workspace: Path, *overrides: str):
    src = small_sequences(workspace / "waves.npz")
    cfg = load_config(
        workspace / "params.yaml",
        [
            f"data.source={src}",
            "validate.min_rows=20",
            "tune.n_trials=1",
            "tune.storage=memory",
            "model.fcn.channels=8",
            "model.resnet1d.channels=8",
            "model.cnn1d.channels=8",
            *overrides,
        ],
    )
    ingest.run(cfg)
    preprocess.run(cfg)
    return cfg


def test_budget_repeats_small_data_and_caps_at_max_steps():
    # 36 examples, one batch each pass: 30 epochs of 17 passes (10 full batches) make 300 steps
    b = budget(36, 64, max_epochs=30, min_steps=300)
    assert (b.epochs, b.repeats, b.steps_per_epoch, b.total_steps) == (30, 17, 10, 300)
    # large data: one pass per epoch, min_steps already met (digits: 19 batches, 570 steps)
    b = budget(1200, 64, max_epochs=30, min_steps=300)
    assert (b.epochs, b.repeats, b.total_steps) == (30, 1, 570)
    # max_steps cuts the epochs of a large set and caps Lightning
    b = budget(6400, 64, max_epochs=30, min_steps=0, max_steps=500)
    assert (b.epochs, b.repeats, b.max_steps, b.total_steps) == (5, 1, 500, 500)
    # two processes halve a pass
    assert budget(128, 32, 2, 0, None, world_size=2).steps_per_epoch == 2
    f = fixed_budget(40, 64, steps=123, max_epochs=30)
    assert f.max_steps == 123 and f.epochs * f.steps_per_epoch >= 123
    with pytest.raises(ValueError, match="empty"):
        budget(0, 64, 30)


def test_auto_arch_rule_and_the_sequence_search(workspace):
    assert auto_arch("tables") == "mlp"
    assert auto_arch("images", (8, 8)) == "cnn" and auto_arch("images", (32, 32)) == "cnn"
    assert auto_arch("images", (64, 48)) == "resnet"
    assert auto_arch("sequences") == "fcn"
    cfg = load_config(workspace / "params.yaml", ["data.dataset=waveforms"])
    assert cfg.arch == "fcn"
    assert cfg.search_space()["model.arch"].choices == ["fcn", "resnet1d", "cnn1d"]
    assert "model.arch" not in load_config(workspace / "params.yaml").search_space()
    big = load_config(workspace / "params.yaml", ["preprocess.image_size=[64, 64]"])
    assert big.arch == "resnet"
    # an explicit arch is not searched over
    fixed = load_config(workspace / "params.yaml", ["data.dataset=waveforms", "model.arch=rnn"])
    assert "model.arch" not in fixed.search_space()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tune.archs={images: [fcn]}", "tune: archs.images: fcn does not apply to images"),
        ("train.min_steps=50", None),
        ("train.max_steps=10", "train: min_steps must not exceed max_steps"),
        ("tune.cv_folds=1", "tune.cv_folds: Input should be greater than or equal to 2"),
        ("model.arch=fcn", "model.arch: fcn does not apply to images"),
        ("preprocess.augment.window=1.5", "preprocess.augment.window: Input should be less"),
    ],
)
def test_budget_and_arch_keys_are_validated(workspace, override, message):
    if message is None:
        assert load_config(workspace / "params.yaml", [override]).train.min_steps == 50
        return
    with pytest.raises(ConfigError) as err:
        load_config(workspace / "params.yaml", [override])
    assert message in str(err.value)


def test_min_steps_gives_small_data_hundreds_of_updates(workspace):
    cfg = prepare(workspace, "train.max_epochs=4", "train.min_steps=40", "train.patience=50")
    n_train = json.loads((Path(cfg.paths.processed_dir) / "split.json").read_text())["counts"]
    assert n_train["train"] <= 64  # one batch per pass: four epochs would be four steps
    r = train.run(cfg)
    assert r.epochs == 4 and r.steps >= 40
    state = torch.load(Path(cfg.paths.train_dir) / "last.ckpt", weights_only=True)
    assert state["global_step"] == r.steps == 40
    run = tracking.client().get_run(r.run_id)
    assert run.data.params["budget.repeats"] == "12"  # 51 examples: 12 passes, 10 batches


@pytest.mark.parametrize("arch", ["fcn", "resnet1d"])
def test_kfold_tuning_below_the_threshold_then_fit_on_train_and_val(workspace, arch):
    cfg = prepare(
        workspace,
        f"model.arch={arch}",
        "tune.max_epochs=2",
        "tune.min_steps=4",
        "tune.cv_folds=3",
        "train.max_epochs=3",
        "train.min_steps=0",
    )
    counts = json.loads((Path(cfg.paths.processed_dir) / "split.json").read_text())["counts"]
    assert counts["val"] < cfg.tune.min_val_examples
    r = tune.run(cfg)
    best = json.loads(Path(cfg.paths.best_params).read_text())
    record = best["cv"]
    assert record["folds"] == 3 and len(record["fold_losses"]) == 3
    assert best["value"] == pytest.approx(np.mean(record["fold_losses"]))
    assert r.best_value == pytest.approx(record["value"])
    trials = [
        run
        for run in tracking.client().search_runs(
            [tracking.client().get_experiment_by_name(cfg.register_.experiment).experiment_id]
        )
        if run.info.run_name == "trial-0"
    ]
    history = tracking.client().get_metric_history(trials[0].info.run_id, "cv/fold_val_loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == record["fold_losses"]
    # the final fit: train + validation, exactly the tuned steps, no early stopping
    t = train.run(cfg)
    assert t.steps == record["steps"]
    params = tracking.client().get_run(t.run_id).data.params
    assert params["budget.train_on"] == "train+val"
    run = tracking.client().get_run(t.run_id)
    assert run.data.metrics["cv/val_loss"] == pytest.approx(record["value"])
    assert run.data.tags["dlops.val_in_training"] == "true"


def test_no_kfold_above_the_threshold(workspace):
    cfg = prepare(
        workspace,
        "tune.min_val_examples=0",
        "tune.max_epochs=1",
        "tune.min_steps=0",
        "train.max_epochs=2",
        "train.min_steps=0",
    )
    tune.run(cfg)
    assert json.loads(Path(cfg.paths.best_params).read_text())["cv"] is None
    r = train.run(cfg)
    assert tracking.client().get_run(r.run_id).data.params["budget.train_on"] == "train"


def test_kfold_prunes_per_fold_at_comparable_steps(workspace):
    import optuna

    from tasks import cv
    from tasks.train import data_info

    cfg = prepare(workspace, "tune.max_epochs=2", "tune.min_steps=0", "tune.cv_folds=2")
    from models.datamodule import DataModule

    dm = DataModule(cfg.paths.processed_dir, seed=cfg.seed)
    dm.setup()
    info = data_info(cfg.paths.processed_dir)
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    scored = cv.score(cfg, info, dm, trial)
    # fold i's epoch e at step i * epochs + e
    assert sorted(study.trials[0].intermediate_values) == [0, 1, 2, 3]
    assert scored.record == trial.user_attrs["cv"]
    # a pruner that always prunes stops the first fold
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=-1.0))
    with pytest.raises(optuna.TrialPruned, match="fold 0"):
        cv.score(cfg, info, dm, study.ask())


def test_folds_are_stratified_seeded_and_shrink_to_the_smallest_class():
    from tasks.cv import folds

    y = np.repeat([0, 1, 2], [10, 10, 3])
    a, b = folds(y, 5, seed=1, classification=True), folds(y, 5, seed=1, classification=True)
    assert len(a) == 3  # the smallest class has 3 members
    for (tr1, ho1), (tr2, ho2) in zip(a, b, strict=True):
        assert np.array_equal(ho1, ho2) and np.array_equal(tr1, tr2)
        assert set(y[ho1]) == {0, 1, 2}


def test_sequence_augment_window_and_warp_keep_length_and_endpoints_order():
    x = torch.arange(40, dtype=torch.float32).reshape(1, 40, 1).repeat(8, 1, 1)
    torch.manual_seed(3)
    for kw in ({"window": 0.3}, {"warp": 0.3}, {"window": 0.2, "warp": 0.2}):
        out = SequenceAugment(p=1.0, **kw)(x)
        assert out.shape == x.shape
        assert not torch.equal(out, x)
        assert (out.diff(dim=1) >= -1e-5).all()  # time maps are monotone: a ramp stays one
        assert out.min() >= 0 and out.max() <= 39
    # window slicing keeps (1 - window) of the span, stretched over the whole length
    out = SequenceAugment(p=1.0, window=0.25)(x)
    span = out[:, -1, 0] - out[:, 0, 0]
    assert torch.allclose(span, torch.full_like(span, 39 * 0.75), atol=1e-4)


def test_augmentation_changes_training_batches_only_and_is_seeded():
    from models.module import ClassifierModule

    spec = {"arch": "fcn", "input_shape": [40, 1], "n_outputs": 3, "options": {"channels": 4}}
    module = ClassifierModule(
        spec=spec,
        modality="sequences",
        augment={"p": 1.0, "jitter": 0.1, "scale": 0.1, "window": 0.1, "warp": 0.1},
    )
    seen = []
    module.forward = lambda x: (seen.append(x.clone()), torch.zeros(len(x), 3))[1]  # type: ignore
    x, y = torch.randn(4, 40, 1), torch.zeros(4, dtype=torch.long)
    for split in ("val", "test"):
        module._step((x, y), split)
    assert all(torch.equal(s, x) for s in seen)
    outs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        module._step((x, y), "train")
        outs.append(seen[-1])
    assert not torch.equal(outs[0], x)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_ensemble_outputs_the_mean_of_its_members_and_round_trips_through_mlflow(workspace):
    import mlflow

    from models.inference import Predictor
    from models.networks import NetSpec, build_network
    from models.preprocessing import load, load_split
    from models.pyfunc import log_model, proba_column, to_model_input

    cfg = prepare(
        workspace, "model.arch=fcn", "train.ensemble=2", "train.max_epochs=2", "train.min_steps=0"
    )
    r = train.run(cfg)
    folder = Path(cfg.paths.train_dir)
    meta = json.loads((folder / "model.json").read_text())
    assert meta["ensemble"] == 2
    state = torch.load(folder / "model.pt", weights_only=True)
    pre = load(folder / "preprocessor.json")
    x_raw, _ = load_split(cfg.paths.processed_dir, "test")
    x = torch.from_numpy(pre.transform(x_raw))
    probs = []
    for i in range(2):
        net = build_network(NetSpec.from_dict(meta["spec"]))
        prefix = f"members.{i}."
        net.load_state_dict(
            {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        )
        with torch.no_grad():
            probs.append(torch.softmax(net.eval()(x).double(), dim=1).numpy())
    assert not np.allclose(probs[0], probs[1])  # two seeds, two members
    mean = (probs[0] + probs[1]) / 2
    np.testing.assert_allclose(
        Predictor.from_dir(folder).outputs(x_raw), mean, rtol=1e-5, atol=1e-6
    )
    info, _ = log_model(folder, r.run_id)
    out = mlflow.pyfunc.load_model(info.model_uri).predict(to_model_input("sequences", x_raw))
    got = out[[proba_column(c) for c in pre.target.classes]].to_numpy()
    np.testing.assert_allclose(got, mean, rtol=1e-5, atol=1e-6)


def test_the_first_trial_of_an_arch_search_is_the_auto_arch(workspace):
    cfg = prepare(workspace, "tune.max_epochs=1", "tune.min_steps=0", "tune.cv_folds=2")
    assert cfg.search_space()["model.arch"].choices == ["fcn", "resnet1d", "cnn1d"]
    r = tune.run(cfg)
    assert r.best_params["model.arch"] == "fcn"  # one trial: the enqueued one
