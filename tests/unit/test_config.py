from pathlib import Path

import pytest

from tasks.config import ConfigError, load_config, write_overrides

PARAMS = Path(__file__).parents[2] / "params.yaml"


def test_shipped_params_load():
    cfg = load_config(PARAMS)
    assert cfg.model_name == "dlops-digits"
    assert cfg.modality == "images" and cfg.arch == "cnn"
    assert cfg.tune.space["train.lr"].log is True
    assert len(cfg.params_hash()) == 64


@pytest.mark.parametrize(
    ("overrides", "modality", "arch", "task"),
    [
        (["data.dataset=breast_cancer"], "tables", "mlp", "classification"),
        (["data.dataset=diabetes"], "tables", "mlp", "regression"),
        (["data.dataset=waveforms"], "sequences", "fcn", "classification"),
        (["data.dataset=waveforms", "model.arch=rnn"], "sequences", "rnn", "classification"),
        (["data.source=/x/houses.parquet"], "tables", "mlp", None),
        (["data.source=s3://bucket/pets/"], "images", "cnn", "classification"),
        (["data.source=https://host/ecg.npz"], "sequences", "fcn", None),
    ],
)
def test_modality_arch_and_task_resolved_without_reading_data(overrides, modality, arch, task):
    cfg = load_config(PARAMS, overrides)
    assert (cfg.modality, cfg.arch, cfg.data.known_task) == (modality, arch, task)


def test_model_name_follows_the_source():
    assert load_config(PARAMS, ["data.source=/d/My Houses.v2.csv"]).model_name == "dlops-My-Houses"


def test_override_changes_value_and_hash(workspace):
    base = load_config("params.yaml")
    cfg = load_config("params.yaml", ["train.max_epochs=5", "tune.pruner=median"])
    assert cfg.train.max_epochs == 5 and cfg.tune.pruner == "median"
    assert cfg.params_hash() != base.params_hash()


def test_with_values_applies_dotted_paths_and_validates():
    cfg = load_config(PARAMS, ["data.dataset=waveforms"])
    tuned = cfg.with_values({"model.arch": "rnn", "model.rnn.cell": "lstm", "train.lr": 0.01})
    assert (tuned.arch, tuned.model.rnn.cell, tuned.train.lr) == ("rnn", "lstm", 0.01)
    with pytest.raises(ConfigError, match="model.rnn.cell"):
        cfg.with_values({"model.rnn.cell": "transformer"})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_epoch=3", "params.yaml: train.max_epoch: unknown key"),
        ("trainx.lr=1", "unknown key 'trainx'"),
        (
            "train.scheduler=bogus",
            "train.scheduler: Input should be 'cosine', 'step', 'onecycle', 'plateau' or 'none'",
        ),
        ("model.activation=swish", "model.activation: Input should be 'relu', 'leaky_relu'"),
        ("model.arch=rnn", "model.arch: rnn does not apply to images (use cnn, resnet or mlp)"),
        ("train.loss=mse", "train.loss: mse is a regression loss, the task is classification"),
        ("promote.metric=rmse", "promote.metric: rmse is a regression metric"),
        ("train.precision=16-mixed", "precision 16-mixed needs a GPU"),
        ("data.modality=tables", "data.modality tables does not match the built-in digits"),
        ("data.source=/data/file.xlsx", "cannot infer the modality of '/data/file.xlsx'"),
        ("data.group=patient", "data.group applies to tables only"),
        ("tune.space.depth={choices: [1, 2]}", "must be a params.yaml path under model, train"),
        (
            "tune.space.model.arch={choices: [cnn, rnn]}",
            "tune.space.model.arch: 'rnn': model.arch: rnn does not apply to images",
        ),
        ("tune.space.model.rnn.hidden={choices: [0]}", "tune.space.model.rnn.hidden: 0"),
        ("preprocess.test_size=0.8", "val_size + test_size must leave at least 10%"),
        ("train.max_epochs", "expected section.key=value"),
    ],
)
def test_bad_values_name_the_key(workspace, override, message):
    with pytest.raises(ConfigError) as err:
        load_config("params.yaml", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_regression_rejects_classification_settings():
    with pytest.raises(ConfigError, match="train.loss: cross_entropy is a classification loss"):
        load_config(PARAMS, ["data.dataset=diabetes", "train.loss=cross_entropy"])
    with pytest.raises(ConfigError, match="label_smoothing applies to classification only"):
        load_config(PARAMS, ["data.dataset=diabetes", "train.label_smoothing=0.1"])
    assert load_config(PARAMS, ["data.dataset=diabetes", "train.loss=huber"]).loss("x") == "huber"


def test_unknown_key_in_file_is_named(workspace):
    text = Path("params.yaml").read_text().replace("  patience:", "  patiense:")
    Path("params.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"train\.patiense: unknown key"):
        load_config("params.yaml")


def test_write_overrides_keeps_comments_and_is_all_or_nothing(workspace):
    before = Path("params.yaml").read_text()
    with pytest.raises(ConfigError):
        write_overrides("params.yaml", ["train.max_epochs=4", "train.bogus=1"])
    assert Path("params.yaml").read_text() == before
    write_overrides(
        "params.yaml", ["train.max_epochs=4", "tune.space.model.arch={choices: [cnn]}"]
    )
    after = Path("params.yaml").read_text()
    assert "max_epochs: 4" in after
    assert "# early stopping on val/loss" in after
    cfg = load_config("params.yaml")
    assert cfg.train.max_epochs == 4 and cfg.tune.space["model.arch"].choices == ["cnn"]
