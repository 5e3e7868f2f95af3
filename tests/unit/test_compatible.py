"""promote.check_compatible on a real SQLite registry.

A champion of another task, class set or input is refused before anything is registered.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks import promote, register, tracking
from tests.unit.test_register_promote import NAME, make_cfg, training_run


def _champion(tiny_model, cfg) -> None:
    tiny_model.write_weights(run_id=training_run())
    version = register.run(cfg, lineage={}).version
    tracking.client().set_registered_model_alias(NAME, promote.CHAMPION, version)


def _edit_preprocessor(train_dir: Path, **target: object) -> None:
    path = train_dir / "preprocessor.json"
    pre = json.loads(path.read_text())
    pre["target"].update(target)
    path.write_text(json.dumps(pre))


def _versions() -> list[str]:
    return [str(v.version) for v in tracking.client().search_model_versions(f"name='{NAME}'")]


def test_no_registered_model_or_no_champion_is_compatible(tmp_path, tiny_model, sqlite_mlflow):
    cfg = make_cfg(tmp_path)
    promote.check_compatible(cfg, NAME)  # nothing registered: nothing to compare
    tracking.client().create_registered_model(NAME)
    promote.check_compatible(cfg, NAME)  # a model without @champion
    assert _versions() == []


def test_same_task_classes_and_inputs_pass_and_others_are_refused(
    tmp_path, tiny_model, sqlite_mlflow
):
    cfg = make_cfg(tmp_path)
    _champion(tiny_model, cfg)
    promote.check_compatible(cfg, NAME)  # the same model: comparable
    # the champion's fitted preprocessing is read back from its artifacts (sequence shapes)
    assert promote._champion_preprocessor(f"models:/{NAME}/1").kind == "images"

    _edit_preprocessor(tiny_model.train_dir, classes=[0, 1, 2, 3, 4])
    with pytest.raises(promote.IncompatibleChampionError) as err:
        promote.check_compatible(cfg, NAME)
    assert str(err.value) == (
        f"promote: @champion {NAME} v1 is not comparable with this model (classes "
        "[0, 1, 2, 3, 4, 5, 6, 7, ... (10)] vs [0, 1, 2, 3, 4]); set data.name (or "
        "register.model_name) to register this model under its own name"
    )

    _edit_preprocessor(tiny_model.train_dir, task="regression", classes=[], mean=0.0, std=1.0)
    with pytest.raises(promote.IncompatibleChampionError, match=r"\(task classification vs "):
        promote.check_compatible(cfg, NAME)
    assert _versions() == ["1"]  # nothing registered by the check


def test_other_inputs_are_refused(tmp_path, tiny_model, sqlite_mlflow):
    from models.preprocessing import SequencePreprocessor, Target, save

    cfg = make_cfg(tmp_path)
    _champion(tiny_model, cfg)
    target = Target("classification", classes=list(range(10)))
    sequences = SequencePreprocessor(target, 16, 2, [0.0, 0.0], [1.0, 1.0])
    save(sequences, tiny_model.train_dir / "preprocessor.json")

    with pytest.raises(promote.IncompatibleChampionError) as err:
        promote.check_compatible(cfg, NAME)
    assert "(inputs [image] vs [sequence])" in str(err.value) and "\n" not in str(err.value)
