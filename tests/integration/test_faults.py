"""Faults: `dlops run` killed with SIGKILL in each stage, two runs at once, restored stages.

Every run is a real `dlops run` process in a temporary git + DVC project (a SQLite MLflow store,
the session's Prefect server). The test hook of tasks/testhook.py pauses a run at a named point;
the test then kills the run's whole process group (or lets it go on).

The baseline (once per module): the wine built-in, one trial, two epochs, version 1 @champion.
Each test copies it and commits another seed, so every stage from preprocess on has new work.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dvc.repo  # noqa: F401  (DVC binds its log handlers to the streams of its first import)
import pytest
import yaml

from tasks import tracking
from tasks.config import write_overrides
from tests.conftest import TINY, _copy_project, git

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
NAME = "dlops-wine"
EXPERIMENT = "dlops"
SMALL = [*TINY, "promote.threshold=null", "data.dataset=wine", "validate.min_rows=20"]
# where each test-hook point pauses (tasks/testhook.py), one test per stage
POINTS = ["ingest", "validate", "preprocess", "tune", "train", "evaluate", "register", "promote"]
RUN_TIMEOUT = 240


def _env(root: Path, **extra: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DLOPS_", "PYTEST_"))}
    env.update(
        PYTHONPATH=str(root),
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        PREFECT_API_URL=str(PREFECT_API_URL.value()),  # the session's server: none started
        PATH=f"{BIN}:{env.get('PATH', '')}",
    )
    env.update(extra)
    return env


def _start(root: Path, log: Path, *argv: str, **extra: str) -> subprocess.Popen:
    """`dlops run` in its own process group (so that a kill reaches all of it)."""
    with log.open("w") as out:
        return subprocess.Popen(
            [str(BIN / "dlops"), "run", *argv],
            cwd=root,
            env=_env(root, **extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _finish(proc: subprocess.Popen, log: Path) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"dlops run took over {RUN_TIMEOUT} s:\n{log.read_text()[-3000:]}")
    return code, log.read_text()


def _run(root: Path, log: Path, *argv: str) -> tuple[int, str]:
    return _finish(_start(root, log, *argv), log)


def _pause(root: Path, point: str, log: Path) -> tuple[subprocess.Popen, Path]:
    """Start a run and wait until it holds at `point`."""
    hold = root.parent / f"paused-{point}.json"
    proc = _start(root, log, DLOPS_TEST_PAUSE_AT=point, DLOPS_TEST_PAUSE_FILE=str(hold))
    deadline = time.monotonic() + RUN_TIMEOUT
    while not hold.is_file():
        if proc.poll() is not None:
            pytest.fail(f"run ended before {point} (rc {proc.returncode}):\n{log.read_text()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"run never reached {point}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    assert json.loads(hold.read_text())["point"] == point
    return proc, hold


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _new_project(dest: Path) -> Path:
    dest.mkdir(parents=True)
    _copy_project(dest)
    git("init", "-q", cwd=dest)
    git("config", "user.email", "ci@dlops.invalid", cwd=dest)
    git("config", "user.name", "dlops-ci", cwd=dest)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=dest, check=True)
    subprocess.run([str(BIN / "dvc"), "config", "core.analytics", "false"], cwd=dest, check=True)
    (dest / ".gitignore").write_text(
        "/data/\n/reports/\nmlflow.db\nmlartifacts/\n__pycache__/\n/.dlops/\n"
    )
    write_overrides(dest / "params.yaml", SMALL)
    git("add", "-A", cwd=dest)
    git("commit", "-qm", "init", cwd=dest)
    return dest


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, prefect_server: None) -> Path:
    """A project whose first run finished: version 1 of dlops-wine holds @champion."""
    root = _new_project(tmp_path_factory.mktemp("faults") / "baseline")
    code, out = _run(root, root.parent / "baseline.log")
    assert code == 0, out[-3000:]
    git("add", "-A", cwd=root)  # the suite and dvc.lock, as a user would commit them
    git("commit", "-qm", "baseline", cwd=root)
    return root


@pytest.fixture
def project(baseline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the baseline with another seed committed; this test's MLflow store."""
    root = tmp_path / "project"
    shutil.copytree(baseline, root, symlinks=True)
    shutil.rmtree(root / ".dvc" / "tmp", ignore_errors=True)  # DVC's state: paths of the original
    write_overrides(root / "params.yaml", ["seed=7"])
    git("commit", "-qam", "another seed", cwd=root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    return root


def _champion() -> str | None:
    aliases = tracking.client().get_registered_model(NAME).aliases
    return None if aliases.get("champion") is None else str(aliases["champion"])


def _versions() -> list:
    return tracking.client().search_model_versions(f"name = '{NAME}'")


def _runs(filter_string: str = "") -> list:
    c = tracking.client()
    exp = c.get_experiment_by_name(EXPERIMENT)
    return c.search_runs([exp.experiment_id], filter_string=filter_string, max_results=5000)


def _running() -> list:
    return _runs("attributes.status = 'RUNNING'")


def _dvc_status(root: Path) -> dict:
    out = subprocess.run(
        [str(BIN / "dvc"), "status", "--json"], cwd=root, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _files_parse(root: Path) -> dict:
    params = yaml.safe_load((root / "params.yaml").read_text())
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert params["seed"] == 7 and params["data"]["dataset"] == "wine"
    return lock["stages"]


def _flow_run_state(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state.type.value


@pytest.mark.parametrize("point", POINTS)
def test_kill_9_in_a_stage_then_the_rerun_completes(project: Path, point: str) -> None:
    root = project
    committed = (root / "params.yaml").read_bytes()
    assert _champion() == "1" and len(_versions()) == 1

    proc, _ = _pause(root, point, root.parent / "killed.log")
    open_before_kill = {r.info.run_id: r for r in _running()}
    _kill(proc)
    killed = [r for r in open_before_kill.values() if r.data.tags.get("dlops.stage") == "pipeline"]
    assert len(killed) == 1, open_before_kill  # the killed run's parent is left RUNNING...
    killed_parent = killed[0]
    if point in ("tune", "train"):  # ...and so are the runs of the stage it was killed in
        stages = {r.data.tags.get("dlops.stage") for r in open_before_kill.values()}
        assert point in stages, stages
    # the registry: the champion unchanged, v2 registered only once register had completed
    assert _champion() == "1"
    assert len(_versions()) == (2 if point == "promote" else 1)
    assert (root / "params.yaml").read_bytes() == committed
    _files_parse(root)  # dvc.lock is whole whatever stage was cut short
    decided = tracking.client().get_model_version(NAME, "2").tags if point == "promote" else None

    code, out = _run(root, root.parent / "rerun.log")
    assert code == 0, out[-4000:]
    assert "dlops run finished" in out

    # no run is left RUNNING: the killed run's are FAILED, tagged with why
    assert _running() == []
    c = tracking.client()
    for run_id in open_before_kill:
        run = c.get_run(run_id)
        assert run.info.status == "FAILED", run_id
        assert "ended without closing this run: killed" in run.data.tags[tracking.ORPHAN_TAG]
    rerun = [r for r in _runs("tags.`dlops.stage` = 'pipeline'") if r.info.status == "FINISHED"]
    newest = max(rerun, key=lambda r: r.info.start_time)
    assert set(newest.data.tags["dlops.closed_orphans"].split(",")) == set(open_before_kill)
    # the killed run's Prefect flow run is Crashed, not Running forever
    assert _flow_run_state(killed_parent.data.tags["prefect.flow_run_id"]) == "CRASHED"

    # one version per weights: v1 (baseline) and v2 (this seed), never a duplicate
    versions = _versions()
    shas = [v.tags["dlops.model_sha256"] for v in versions]
    assert len(versions) == 2 and len(set(shas)) == 2
    v2 = next(v for v in versions if str(v.version) == "2")
    decision = v2.tags["promotion.decision"]  # the promotion completed, and is recorded
    assert _champion() == ("2" if decision == "promoted" else "1")
    if decided is not None:  # killed after the decision, before the alias: judged once
        assert v2.tags == decided

    # DVC: every stage recorded, nothing out of date; params.yaml as committed
    assert set(_files_parse(root)) == {
        "ingest",
        "validate",
        "preprocess",
        "tune",
        "train",
        "evaluate",
    }
    assert _dvc_status(root) == {"ingest": ["always changed"]}
    assert (root / "params.yaml").read_bytes() == committed
    assert not list((root / tracking.MARKER_DIR).glob("*.json"))  # the run left no marker


def test_two_runs_at_once_in_one_checkout_the_second_refuses_in_one_line(project: Path) -> None:
    root = project
    first, hold = _pause(root, "train", root.parent / "first.log")
    lock_before = (root / "dvc.lock").read_bytes()
    params_before = (root / "params.yaml").read_bytes()
    open_before = {r.info.run_id for r in _running()}
    runs_before = len(_runs())

    code, out = _run(root, root.parent / "second.log")
    assert code == 1
    last = out.strip().splitlines()[-1]
    assert last.startswith("dlops: another dlops run or dvc command holds the DVC lock of ")
    assert "Traceback" not in out
    # the second run wrote nothing: no file, no MLflow run, no version; the first one's runs
    # are still open (not taken for orphans)
    assert (root / "dvc.lock").read_bytes() == lock_before
    assert (root / "params.yaml").read_bytes() == params_before
    assert len(_runs()) == runs_before and {r.info.run_id for r in _running()} == open_before
    assert len(_versions()) == 1 and _champion() == "1"
    # `dvc repro` is refused too while the run holds the lock
    repro = subprocess.run(
        [str(BIN / "dvc"), "repro"], cwd=root, capture_output=True, text=True, env=_env(root)
    )
    assert repro.returncode != 0 and "lock" in (repro.stdout + repro.stderr).lower()

    hold.unlink()  # the first run goes on, and completes
    code, out = _finish(first, root.parent / "first.log")
    assert code == 0, out[-3000:]
    assert _running() == [] and len(_versions()) == 2
    assert _dvc_status(root) == {"ingest": ["always changed"]}
    assert set(_files_parse(root)) >= {"train", "evaluate"}


def _snapshot(run_id: str) -> dict:
    """What a run holds: status, end time, metrics, params, tags and every artifact path."""
    c = tracking.client()
    run = c.get_run(run_id)

    def walk(path: str | None = None) -> list[str]:
        found = []
        for f in c.list_artifacts(run_id, path):
            found += walk(f.path) if f.is_dir else [f.path]
        return found

    return {
        "status": run.info.status,
        "end_time": run.info.end_time,
        "metrics": run.data.metrics,
        "params": run.data.params,
        "tags": run.data.tags,
        "artifacts": sorted(walk()),
        "models": len(
            c.search_logged_models([run.info.experiment_id], f"source_run_id = '{run_id}'")
        ),
    }


def test_a_restored_stage_never_writes_into_the_run_that_produced_it(
    baseline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "project"
    shutil.copytree(baseline, root, symlinks=True)
    shutil.rmtree(root / ".dvc" / "tmp", ignore_errors=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    trained_in = json.loads((root / "data/train/model.json").read_text())["mlflow_run_id"]
    before = _snapshot(trained_in)
    assert any(k.startswith("test/") for k in before["metrics"])  # evaluated by the baseline

    # the evaluation code changed, and dvc.lock is gone (a clone sharing the DVC cache): the
    # stages up to train are restored from DVC's run cache, evaluate runs
    with (root / "tasks/evaluate.py").open("a") as fh:
        fh.write("\n# the evaluation changed\n")
    (root / "dvc.lock").unlink()
    git("commit", "-qam", "evaluation changed", cwd=root)
    code, out = _run(root, root.parent / "restored.log", "--json")
    assert code == 0, out[-3000:]
    result = json.loads(out[out.index("{") :])
    outcomes = {s["name"]: s["outcome"] for s in result["stages"]}
    assert outcomes["train"] == "restored" and outcomes["tune"] == "restored"
    assert outcomes["evaluate"] == "ran"
    assert _snapshot(trained_in) == before  # the producing run is left as it was

    # this run links the model's training run and holds the new evaluation in a run of its own
    c = tracking.client()
    parent = c.get_run(result["parent_run_id"])
    assert parent.data.tags[tracking.MODEL_RUN_TAG] == trained_in
    assert parent.data.tags["stage.train"] == "restored"
    (evaluation,) = _runs(f"tags.`{tracking.PARENT_TAG}` = '{parent.info.run_id}'")
    assert evaluation.info.run_name == "evaluate" and evaluation.info.status == "FINISHED"
    assert evaluation.data.tags[tracking.MODEL_RUN_TAG] == trained_in
    assert evaluation.data.metrics["test/accuracy"] == pytest.approx(result["metrics"]["accuracy"])
    assert result["model"] == {"name": NAME, "version": "1"}  # the same weights: no new version

    # the version is deleted from the registry: the restored model is registered again, from a
    # `register` run of the new pipeline run, not from the run that trained it
    c.delete_model_version(NAME, "1")
    code, out = _run(root, root.parent / "reregistered.log", "--json")
    assert code == 0, out[-3000:]
    result = json.loads(out[out.index("{") :])
    assert {s["name"]: s["outcome"] for s in result["stages"]}["train"] == "skipped"
    assert _snapshot(trained_in) == before
    (v2,) = _versions()
    registering = c.get_run(v2.run_id)
    assert registering.info.run_name == "register" and registering.info.status == "FINISHED"
    assert registering.data.tags[tracking.PARENT_TAG] == result["parent_run_id"]
    assert v2.tags[tracking.MODEL_RUN_TAG] == trained_in
    assert _champion() == str(v2.version) and _running() == []
