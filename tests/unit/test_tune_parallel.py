"""tune past one process: study names, exact budgets across workers, resume, warm start."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dvc.repo  # noqa: F401  (the CLI-in-process convention)
import pytest

from tasks import ingest, optuna_storage, preprocess, tracking, tune, tune_study
from tasks.config import load_config
from tests.conftest import REPO, TINY

PASSWORD = "s3cret-tune-pw-93af"


def prepare(workspace: Path, *overrides: str):
    cfg = load_config(workspace / "params.yaml", [*TINY, "tune.timeout_s=null", *overrides])
    ingest.run(cfg)
    preprocess.run(cfg)
    return cfg


@pytest.fixture
def processed(workspace):
    return prepare(workspace)


def _runs(cfg):
    c = tracking.client()
    exp = c.get_experiment_by_name(cfg.register_.experiment)
    return [] if exp is None else c.search_runs([exp.experiment_id])


def _study(cfg, name: str | None = None):
    import optuna

    storage = optuna_storage.resolve(cfg).open()
    return optuna.load_study(study_name=name or tune_study.study_name(cfg), storage=storage)


def test_the_study_name_is_its_definition_not_the_clock(processed, workspace):
    cfg = processed
    name = tune_study.study_name(cfg)
    assert name.startswith("dlops-digits-") and len(name) == len("dlops-digits-") + 12
    again = load_config(workspace / "params.yaml", [*TINY, "tune.timeout_s=null"])
    assert tune_study.study_name(again) == name
    # the budget, the workers and where the study lives do not define it
    for same in ("tune.n_trials=5", "tune.workers=2", "tune.timeout_s=5", "tune.storage=memory"):
        assert tune_study.study_name(cfg.with_values(_kv(same))) == name, same
    # the seed, the space, the fixed parameters and the data do
    for other in ("seed=7", "tune.max_epochs=3", "model.dropout=0.3", "train.optimizer=sgd"):
        assert tune_study.study_name(cfg.with_values(_kv(other))) != name, other
    wider = cfg.with_values({"tune.space": {"train.lr": {"low": 0.001, "high": 0.1, "log": True}}})
    assert tune_study.study_name(wider) != name
    split = Path(cfg.paths.processed_dir) / "split.json"
    split.write_text(split.read_text() + " ")
    assert tune_study.study_name(cfg) != name


def _kv(text: str) -> dict:
    key, value = text.split("=", 1)
    import yaml

    return {key: yaml.safe_load(value)}


@pytest.mark.slow
def test_a_rerun_continues_the_study_up_to_n_trials(processed):
    first = tune.run(processed)
    assert first.n_complete + first.n_pruned == 1
    more = processed.with_values({"tune.n_trials": 3})
    second = tune.run(more)
    assert second.study_name == first.study_name
    trials = _study(more).trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state.is_finished() for t in trials)
    # a third run with the budget used runs no trial and reports the same study
    third = tune.run(more)
    assert len(_study(more).trials) == 3 and third.best_trial == second.best_trial
    names = sorted(r.info.run_name for r in _runs(more) if r.info.run_name.startswith("trial-"))
    assert names == ["trial-0", "trial-1", "trial-2"]


# Two processes asking trials of one study at once, each as fast as it can: the lock is all
# that keeps the total exact.
ASKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import optuna
    from tasks import tune_study
    from tasks.optuna_storage import StudyStorage
    kind, where, name, n, start = sys.argv[1:6]
    s = StudyStorage(kind, url=where) if kind == "rdb" else StudyStorage(kind, path=Path(where))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=s.open())
    while time.time() < float(start):
        time.sleep(0.01)
    mine = 0
    while (trial := tune_study.ask_within_budget(study, int(n), s.lock(name))) is not None:
        study.tell(trial, trial.suggest_float("x", 0, 1))
        mine += 1
    print(mine)
    """
)


def _race(storage: optuna_storage.StudyStorage, n_trials: int) -> tuple[list, list[int]]:
    import optuna

    name = "race"
    optuna.create_study(study_name=name, storage=storage.open())
    where = str(storage.url if storage.kind == "rdb" else storage.path)
    start = str(time.time() + 4)  # both import first, then start together
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ASKER, storage.kind, where, name, str(n_trials), start],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    mine = [int(p.communicate(timeout=120)[0].strip()) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    return optuna.load_study(study_name=name, storage=storage.open()).trials, mine


# Read-modify-write of a counter file under the storage's lock, with a pause inside: without
# mutual exclusion the two processes would lose updates.
LOCKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tasks.optuna_storage import StudyStorage
    kind, where, counter, start = sys.argv[1:5]
    s = StudyStorage(kind, url=where) if kind == "rdb" else StudyStorage(kind, path=Path(where))
    while time.time() < float(start):
        time.sleep(0.01)
    for _ in range(15):
        with s.lock("study"):
            n = int(Path(counter).read_text())
            time.sleep(0.02)
            Path(counter).write_text(str(n + 1))
    """
)


def _locked_counter(storage: optuna_storage.StudyStorage, tmp_path: Path) -> int:
    counter = tmp_path / "counter"
    counter.write_text("0")
    where = str(storage.url if storage.kind == "rdb" else storage.path)
    start = str(time.time() + 3)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LOCKER, storage.kind, where, str(counter), start], env=env
        )
        for _ in range(2)
    ]
    assert [p.wait(120) for p in procs] == [0, 0]
    return int(counter.read_text())


def test_the_journal_lock_excludes_other_processes(tmp_path):
    s = optuna_storage.StudyStorage("journal", path=tmp_path / "journal.log")
    assert _locked_counter(s, tmp_path) == 30


def test_the_postgresql_advisory_lock_excludes_other_processes(tmp_path, postgres_db):
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{postgres_db}"
    assert _locked_counter(optuna_storage.StudyStorage("rdb", url=url), tmp_path) == 30


def test_two_workers_on_the_journal_file_take_exactly_n_trials(tmp_path):
    s = optuna_storage.StudyStorage("journal", path=tmp_path / "journal.log")
    trials, mine = _race(s, 40)
    assert len(trials) == 40 and sum(mine) == 40
    assert sorted(t.number for t in trials) == list(range(40))
    assert all(m > 0 for m in mine), mine  # both took part
    assert len({t.user_attrs[tune_study.WORKER_ATTR] for t in trials}) == 2


def test_two_workers_on_postgresql_take_exactly_n_trials(postgres_db):
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{postgres_db}"
    trials, mine = _race(optuna_storage.StudyStorage("rdb", url=url), 30)
    assert len(trials) == 30 and sum(mine) == 30
    assert sorted(t.number for t in trials) == list(range(30))
    assert all(m > 0 for m in mine), mine


def _check_two_worker_stage(cfg, n: int) -> None:
    r = tune.run(cfg)
    assert r.workers == 2
    trials = _study(cfg).trials
    assert sorted(t.number for t in trials) == list(range(n))
    assert all(t.state.is_finished() for t in trials)
    runs = {x.info.run_name: x for x in _runs(cfg)}
    nested = [x for name, x in runs.items() if name.startswith("trial-")]
    assert len(nested) == n
    assert {x.data.tags["mlflow.parentRunId"] for x in nested} == {r.run_id}
    assert {x.info.status for x in nested} == {"FINISHED"}
    assert runs["tune"].data.tags["optuna.workers"] == "2"
    best = json.loads(Path(cfg.paths.best_params).read_text())
    assert best["n_trials"] == n and best["study"] == r.study_name


@pytest.mark.slow
def test_the_stage_with_two_workers_on_the_journal(workspace):
    _check_two_worker_stage(prepare(workspace, "tune.workers=2", "tune.n_trials=4"), 4)


@pytest.mark.slow
def test_the_stage_with_two_workers_on_postgresql(workspace, monkeypatch, postgres_db):
    monkeypatch.setenv(
        "DLOPS_OPTUNA_STORAGE", f"postgresql+psycopg2://postgres@127.0.0.1:5432/{postgres_db}"
    )
    cfg = prepare(workspace, "tune.workers=2", "tune.n_trials=3")
    assert optuna_storage.resolve(cfg).kind == "rdb"
    _check_two_worker_stage(cfg, 3)


@pytest.mark.slow
def test_a_killed_stage_resumes_marks_its_orphan_failed_and_ends_at_n_trials(workspace):
    from optuna.trial import TrialState

    overrides = ["tune.n_trials=4", "tune.max_epochs=4", "tune.pruner=none"]
    cfg = prepare(workspace, *overrides)
    params = workspace / "params.yaml"
    from tasks.config import write_overrides

    write_overrides(params, [*TINY, "tune.timeout_s=null", *overrides])
    name = tune_study.study_name(cfg)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasks.tune"],
        cwd=workspace,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                trials = _study(cfg, name).trials
            except KeyError:  # not created yet
                trials = []
            running = [
                t
                for t in trials
                if t.state == TrialState.RUNNING and tune_study.RUN_ATTR in t.user_attrs
            ]
            if running and any(t.state.is_finished() for t in trials):
                break
            assert proc.poll() is None, "the stage ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("no trial was running after a finished one")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = {t.number for t in _study(cfg, name).trials if t.state == TrialState.RUNNING}
    r = tune.run(cfg)
    trials = _study(cfg, name).trials
    orphans = [t for t in trials if t.user_attrs.get(tune_study.ORPHANED_ATTR)]
    assert {t.number for t in orphans} == killed and len(killed) == 1
    assert all(t.state == TrialState.FAIL for t in orphans)
    counted = [t for t in trials if tune_study.counted(t)]
    assert len(counted) == 4 and all(t.state.is_finished() for t in trials)
    assert len({t.number for t in trials}) == len(trials) == 5
    assert r.n_orphaned == 1 and r.n_complete + r.n_pruned + r.n_failed == 4
    # the orphan's MLflow run is not left RUNNING
    runs = {x.info.run_name: x for x in _runs(cfg)}
    (orphan,) = orphans
    assert runs[f"trial-{orphan.number}"].info.status == "FAILED"


@pytest.mark.slow
def test_a_new_study_starts_from_the_last_best_of_the_same_model(processed):
    first = tune.run(processed.with_values({"tune.n_trials": 2}))
    wider = dict(processed.tune.model_dump(mode="json")["space"])
    wider["train.batch_size"] = {"choices": [32, 64, 128, 256]}
    cfg = processed.with_values({"tune.space": wider})
    second = tune.run(cfg)
    assert second.study_name != first.study_name
    assert second.warm_start_from == first.study_name
    trial0 = _study(cfg).trials[0]
    assert trial0.params == first.best_params
    tune_run = tracking.client().get_run(second.run_id)
    assert tune_run.data.tags["optuna.warm_start_from"] == first.study_name
    # the plots and the best parameters are on the tune run
    artifacts = {a.path for a in tracking.client().list_artifacts(second.run_id, "optuna")}
    assert "optuna/optimization_history.png" in artifacts
    assert tune_run.data.params["best.train.lr"] == str(second.best_params["train.lr"])


def test_warm_start_keeps_only_values_valid_in_the_current_space(processed):
    space = processed.tune.space
    best = {"train.lr": 0.5, "model.dropout": 0.1, "model.cnn.channels": 32, "gone.key": 1}
    assert tune_study.valid_params(best, space) == {"model.dropout": 0.1, "model.cnn.channels": 32}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_storage_fails_the_stage_in_one_line_before_any_run(
    workspace, monkeypatch, capsys
):
    port = _closed_port()
    url = f"postgresql+psycopg2://app:{PASSWORD}@127.0.0.1:{port}/optuna"
    monkeypatch.setenv("DLOPS_OPTUNA_STORAGE", url)
    with pytest.raises(SystemExit) as exc:
        tune.main([])
    message = str(exc.value.code)
    assert message.startswith("tune: tune.storage rdb: cannot open ")
    assert f"on host 127.0.0.1:{port} (" in message
    assert PASSWORD not in message and "\n" not in message
    assert _runs(load_config(workspace / "params.yaml")) == []  # no MLflow run at all


def test_workers_need_a_shared_storage_and_above_the_cores_warn(workspace, caplog):
    cfg = load_config(workspace / "params.yaml", ["tune.workers=2", "tune.storage=memory"])
    with pytest.raises(optuna_storage.StorageError) as err:
        tune.run(cfg)
    assert str(err.value) == (
        "tune.workers 2: tune.storage memory (memory) is an in-process study: use tune.storage "
        "journal (one host) or a PostgreSQL URL in DLOPS_OPTUNA_STORAGE"
    )
    sqlite = optuna_storage.StudyStorage("rdb", url="sqlite:///optuna.db")
    with pytest.raises(optuna_storage.StorageError, match="optuna#820"):
        tune.check_workers(cfg, sqlite, local=True)
    many = (os.cpu_count() or 1) + 1
    cfg = load_config(workspace / "params.yaml", [f"tune.workers={many}"])
    with caplog.at_level("WARNING", logger="dlops"):
        tune.check_workers(cfg, optuna_storage.resolve(cfg), local=True)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (
        f"tune.workers {many} is above the {os.cpu_count()} cores of this host: "
        "trials will share cores"
    )


@pytest.mark.slow
def test_a_prefect_flow_run_is_a_worker_of_the_stage_study(processed, monkeypatch):
    from dataclasses import asdict

    from flows.tune_worker import pool_launcher, tune_worker

    first = tune.run(processed)
    more = processed.with_values({"tune.n_trials": 2})
    spec = tune.WorkerSpec(
        first.study_name, more.model_dump(by_alias=True, mode="json"), first.run_id
    )
    assert tune_worker.fn(asdict(spec), 1) == 1  # the flow's body, as a pool's worker runs it
    trials = _study(more).trials
    assert [t.number for t in trials] == [0, 1] and trials[1].state.is_finished()
    assert tune_worker.fn(asdict(spec), 2) == 0  # the budget is used
    # without a Prefect API (or with one worker) the stage launches local processes
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert pool_launcher(2) is None and pool_launcher(1) is None


# A worker that takes a trial and is SIGKILLed holding it.
DIES = textwrap.dedent(
    """
    import json, os, signal, sys
    import optuna
    from tasks import optuna_storage, tune_study
    from tasks.tune import WorkerSpec
    spec = WorkerSpec(**json.loads(sys.stdin.read()))
    storage = optuna_storage.resolve(spec.cfg())
    study = optuna.load_study(study_name=spec.study, storage=storage.open())
    trial = tune_study.ask_within_budget(study, spec.cfg().tune.n_trials, storage.lock(spec.study))
    print(trial.number, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_failed_and_its_place_filled(workspace):
    from dataclasses import asdict

    from optuna.trial import TrialState

    cfg = prepare(workspace, "tune.workers=2", "tune.n_trials=3")
    died: list[int] = []

    class Ended:  # the handle of a worker that is already dead
        def wait(self) -> int:
            return -signal.SIGKILL

        def kill(self) -> None:
            pass

    def launcher(spec, indexes):
        proc = subprocess.run(
            [sys.executable, "-c", DIES],
            input=json.dumps(asdict(spec)),
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == -signal.SIGKILL
        died.append(int(proc.stdout))
        return [Ended()]

    r = tune.run(cfg, launcher=launcher)
    trials = _study(cfg).trials
    (orphan,) = [t for t in trials if t.user_attrs.get(tune_study.ORPHANED_ATTR)]
    assert orphan.number == died[0] == 0 and orphan.state == TrialState.FAIL
    assert [t.number for t in trials if tune_study.counted(t)] == [1, 2, 3]
    assert all(t.state.is_finished() for t in trials)
    assert r.n_orphaned == 1 and r.n_complete + r.n_pruned + r.n_failed == 3
