"""Shared fixtures: a temporary project (git + DVC + SQLite MLflow) and small configs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import configure_environment

REPO = Path(__file__).resolve().parents[1]
configure_environment()  # the CLI's local, telemetry-free defaults

# A tiny budget: one trial, one or two epochs; everything else as shipped.
TINY = [
    "tune.n_trials=1",
    "tune.max_epochs=1",
    "train.max_epochs=2",
    "train.patience=1",
    "promote.threshold=0.5",
]
PROJECT_FILES = ["params.yaml", "dvc.yaml", ".dvcignore", "tasks", "models", "flows"]


def _copy_project(dest: Path) -> None:
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary project folder as cwd, with its own SQLite MLflow store."""
    _copy_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DLOPS_HOME", str(tmp_path))
    return tmp_path


def git(*args: str, cwd: Path) -> str:
    """Run git quietly in `cwd`."""
    out = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout


@pytest.fixture
def dvc_project(workspace: Path) -> Path:
    """The temporary project as a git + DVC repository with one commit."""
    git("init", "-q", cwd=workspace)
    git("config", "user.email", "ci@dlops.invalid", cwd=workspace)
    git("config", "user.name", "dlops-ci", cwd=workspace)
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([str(dvc), "init", "-q"], cwd=workspace, check=True)
    subprocess.run([str(dvc), "config", "core.analytics", "false"], cwd=workspace, check=True)
    (workspace / ".gitignore").write_text(
        "/data/\n/reports/\nmlflow.db\nmlartifacts/\n__pycache__/\n/.dlops/\n"
    )
    git("add", "-A", cwd=workspace)
    git("commit", "-qm", "init", cwd=workspace)
    return workspace


@pytest.fixture
def tiny() -> list[str]:
    """Overrides for the tiny training budget."""
    return list(TINY)


@pytest.fixture
def tiny_cfg(workspace: Path):
    """Config of the temporary project with the tiny training budget."""
    from tasks.config import load_config

    return load_config(workspace / "params.yaml", TINY)
