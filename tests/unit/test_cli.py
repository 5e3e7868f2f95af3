import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import find_project_root, main


def test_help_does_not_import_torch():
    code = "import sys, flows.cli; flows.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_repeated_overrides_are_validated_together_before_anything_runs(workspace, capsys):
    before = Path("params.yaml").read_text()
    with pytest.raises(SystemExit) as exc:
        # each alone is valid; together warm-up outlasts training
        main(["run", "-S", "train.warmup_epochs=5", "-S", "train.max_epochs=5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "dlops: params.yaml: train: warmup_epochs must be below max_epochs"
    assert Path("params.yaml").read_text() == before
    assert not Path("data").exists() and not Path("mlflow.db").exists()


def test_project_root_is_found_from_a_subfolder(workspace):
    sub = workspace / "tasks"
    assert find_project_root(sub) == workspace.resolve()


def test_outside_a_project_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dlops: no params.yaml and dvc.yaml in") and "\n" not in err


def test_bad_override_is_rejected_before_anything_runs(workspace, capsys):
    before = Path("params.yaml").read_text()
    with pytest.raises(SystemExit) as exc:
        main(["run", "-S", "train.max_epoch=3"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == "dlops: params.yaml: train.max_epoch: unknown key"
    assert Path("params.yaml").read_text() == before
    assert not Path("data").exists() and not Path("mlflow.db").exists()


def test_data_option_sets_an_absolute_source_and_infers_the_rest(workspace):
    from flows.cli.run import data_overrides

    assert data_overrides("pets") == [
        f"data.source={(workspace / 'pets').resolve()}",
        "data.modality=auto",
        "data.task=auto",
    ]
    assert data_overrides("s3://bucket/x.csv")[0] == "data.source=s3://bucket/x.csv"
    assert data_overrides(None) == []


def test_data_option_with_an_unknown_suffix_is_rejected_in_one_line(workspace, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--data", "table.xlsx"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "cannot infer the modality of" in err and "table.xlsx" in err and "\n" not in err


@pytest.mark.slow
def test_train_resume_with_nothing_to_resume_trains_from_scratch_then_skips(
    dvc_project, tiny, capsys
):
    from flows.dvc_record import reproduce
    from tasks import ingest, preprocess, tune, validate
    from tasks.config import write_overrides

    # the user's own params, with the stages up to tune recorded by DVC (as `dvc repro tune`)
    from tasks.validate import init_suite

    cfg = write_overrides("params.yaml", [*tiny, "data.dataset=wine"])
    reproduce(dvc_project, "ingest", lambda: ingest.run(cfg))
    init_suite(cfg)  # the suite step (the flow runs it before validate)
    for name, stage in (("validate", validate), ("preprocess", preprocess)):
        reproduce(dvc_project, name, lambda stage=stage: stage.run(cfg))
    reproduce(dvc_project, "tune", lambda: tune.run(cfg))
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"train: nothing to resume in {cfg.paths.checkpoint_dir}; starting from scratch" in out
    assert "train: best val/acc " in out and "at epoch " in out and "of 2; MLflow run " in out
    assert (dvc_project / cfg.paths.train_dir / "model.pt").is_file()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume"])
    assert exc.value.code == 0
    assert (
        capsys.readouterr()
        .out.strip()
        .endswith("train: skipped (nothing changed since the last training)")
    )
