import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import build_parser, find_project_root, main


def test_help_does_not_import_torch():
    code = "import sys, flows.cli; flows.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_run_parses_repeated_overrides():
    args = build_parser().parse_args(["run", "-S", "train.max_epochs=5", "-S", "seed=1"])
    assert args.set == ["train.max_epochs=5", "seed=1"]


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


def test_train_parses_resume():
    args = build_parser().parse_args(["train", "--resume", "-S", "train.lr=0.01"])
    assert args.resume is True and args.set == ["train.lr=0.01"]
