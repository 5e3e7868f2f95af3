"""The DVC internals flows/dvc_record.py and tasks/upstream.py call, and what they must do.

`Recorder` does in-process what `dvc repro` does after a stage's command, through DVC's own
(non-public) calls. pyproject pins DVC's major version; these tests fail loudly, naming the call,
when a DVC release changes one of them.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import tomllib
from pathlib import Path

import dvc
import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).parent / "dvc")
PIPELINE = {
    "stages": {
        "make": {
            "cmd": "python make.py",
            "deps": ["make.py", "input.txt"],
            "params": ["factor"],
            "outs": ["out"],
        }
    }
}


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A DVC repository (no git) with one stage: input.txt and `factor` -> out/result.txt."""
    from dvc.repo import Repo

    monkeypatch.chdir(tmp_path)
    subprocess.run([DVC, "init", "-q", "--no-scm"], check=True)
    (tmp_path / "make.py").write_text("# the stage's code\n")
    (tmp_path / "input.txt").write_text("data\n")
    (tmp_path / "params.yaml").write_text("factor: 1\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE))
    with Repo(str(tmp_path)) as r:
        yield r


def _produce(root: Path, text: str) -> None:
    (root / "out").mkdir(exist_ok=True)
    (root / "out" / "result.txt").write_text(text)


def _stage(repo):
    repo._reset()  # Recorder.stage: dvc.lock may have changed since the last stage
    (stage,) = repo.stage.collect("make")
    return stage


def _record(stage) -> None:
    """What Recorder.reproduce does after running a stage's body."""
    stage.save(run_cache=True)
    stage.commit()
    stage.dump(update_pipeline=False)


def test_dvc_is_pinned_to_the_major_version_these_calls_were_written_for() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (spec,) = [Requirement(d) for d in pyproject["project"]["dependencies"] if d.startswith("dvc")]
    assert spec.specifier.contains("3.99") and not spec.specifier.contains("4.0")
    assert dvc.__version__.split(".")[0] == "3"


def test_the_signatures_used_exist(repo) -> None:
    from dvc.lock import LockError  # noqa: F401  (Recorder turns it into RunLockedError)
    from dvc.repo import lock_repo  # noqa: F401
    from dvc.stage.cache import RunCacheNotFoundError  # noqa: F401

    stage = _stage(repo)
    assert "run_cache" in inspect.signature(stage.save).parameters
    # Stage.dump(**kwargs) forwards `update_pipeline` to the dvc.yaml writer: checked by
    # behaviour (dvc.yaml untouched) in test_record_skip_and_restore_behave_like_dvc_repro
    for name in ("changed", "save_deps", "commit", "changed_stage", "changed_outs", "status"):
        assert callable(getattr(stage, name)), f"Stage.{name} is gone"
    assert callable(stage._changed_deps), "Stage._changed_deps is gone (tasks/upstream.py)"
    assert callable(repo.stage_cache.restore)


def test_record_skip_and_restore_behave_like_dvc_repro(repo) -> None:
    from dvc.repo import lock_repo
    from dvc.stage.cache import RunCacheNotFoundError

    root = Path(repo.root_dir)
    with lock_repo(repo):  # as the Recorder holds it (the stage calls assert it is held)
        stage = _stage(repo)
        assert stage.changed()  # never run: out of date
        with pytest.raises(RunCacheNotFoundError):
            repo.stage_cache.restore(stage)
        stage.save_deps()
        _produce(root, "one")
        _record(stage)

    # dvc.lock holds the stage as `dvc repro` writes it, and DVC itself agrees it is up to date
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["make"]
    assert lock["params"]["params.yaml"] == {"factor": 1}
    assert {d["path"] for d in lock["deps"]} == {"make.py", "input.txt"}
    assert lock["outs"][0]["path"] == "out" and lock["outs"][0]["md5"].endswith(".dir")
    status = subprocess.run([DVC, "status"], capture_output=True, text=True, check=True)
    assert "up to date" in status.stdout
    assert (root / "dvc.yaml").read_text() == yaml.safe_dump(PIPELINE)  # dvc.yaml untouched

    (root / "params.yaml").write_text("factor: 2\n")
    with lock_repo(repo):
        stage = _stage(repo)
        # a changed param: changed, through its deps (what tasks/upstream.py reports)
        assert stage.changed() and stage._changed_deps() and not stage.changed_stage()
        entries = stage.status()["make"]
        assert {"changed deps": {"params.yaml": {"factor": "modified"}}} in entries
        with pytest.raises(RunCacheNotFoundError):
            repo.stage_cache.restore(stage)
        stage.save_deps()
        _produce(root, "two")
        _record(stage)

    # the first params again: restored from the run cache, outputs and dvc.lock as they were
    (root / "params.yaml").write_text("factor: 1\n")
    with lock_repo(repo):
        stage = _stage(repo)
        assert stage.changed()
        repo.stage_cache.restore(stage)
        assert (root / "out" / "result.txt").read_text() == "one"
        _record(stage)
        assert not _stage(repo).changed()  # recorded: skipped next time
        assert yaml.safe_load((root / "dvc.lock").read_text())["stages"]["make"] == lock
        _produce(root, "edited")  # a changed output is a changed stage
        assert _stage(repo).changed_outs()


def test_the_repository_lock_refuses_a_second_holder(repo) -> None:
    from dvc.lock import LockError
    from dvc.repo import Repo, lock_repo

    with lock_repo(repo), Repo(repo.root_dir) as other:
        with pytest.raises(LockError):
            with lock_repo(other):
                pass
    with Repo(repo.root_dir) as other, lock_repo(other):  # released: the next one gets it
        pass
