from pathlib import Path

import pytest

from tasks.config import ConfigError, load_config, write_overrides


def test_shipped_params_load():
    cfg = load_config(Path(__file__).parents[2] / "params.yaml")
    assert cfg.register_.model_name == "dlops-digits-cnn"
    assert cfg.tune.space["lr"].log is True
    assert len(cfg.params_hash()) == 64


def test_override_changes_value_and_hash(workspace):
    base = load_config("params.yaml")
    cfg = load_config("params.yaml", ["train.max_epochs=5", "tune.pruner=median"])
    assert cfg.train.max_epochs == 5 and cfg.tune.pruner == "median"
    assert cfg.params_hash() != base.params_hash()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_epoch=3", "params.yaml: train.max_epoch: unknown key"),
        ("trainx.lr=1", "unknown key 'trainx'"),
        (
            "train.scheduler=bogus",
            "train.scheduler: Input should be 'cosine', 'step', 'onecycle', 'plateau' or 'none'",
        ),
        ("promote.min_score=2", "promote.min_score: Input should be less than or equal to 1"),
        ("tune.space.depth={choices: [1, 2]}", "tune.space: unknown search dimension 'depth'"),
        ("preprocess.test_size=0.8", "val_size + test_size must leave at least 10%"),
        ("train.max_epochs", "expected section.key=value"),
    ],
)
def test_bad_values_name_the_key(workspace, override, message):
    with pytest.raises(ConfigError) as err:
        load_config("params.yaml", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


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
    write_overrides("params.yaml", ["train.max_epochs=4"])
    after = Path("params.yaml").read_text()
    assert "max_epochs: 4" in after
    assert "# early stopping on val/loss" in after
    assert load_config("params.yaml").train.max_epochs == 4
