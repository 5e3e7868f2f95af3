"""The loop a team relies on, against the real stack of `make up` and real Prefect workers.

One stack for the module (its own folder, free loopback ports, a unique database prefix; MLflow
and Prefect on this machine's PostgreSQL, two process workers), a temporary git project whose
committed params.yaml names a CSV source, and `dlops deploy`. Then:
1. a deployment run completes on a worker; the new version is @champion in the PostgreSQL-backed
   MLflow; the Prefect flow run and the MLflow parent run link to each other;
2. the source is refreshed with more data: the data watch starts the pipeline, which registers
   and promotes (or keeps the champion, saying why);
3. the source is refreshed with corrupted data: the flow run ends Failed with the one-line
   validation reason, the champion is unchanged;
4. two deployment runs at once, on the two workers, both complete in distinct workspaces, with no
   DVC lock error, no duplicate version for identical inputs, one champion.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.config import write_overrides
from tasks.runtime import read_env_file
from tests.conftest import TINY, _copy_project, git
from tests.integration.test_infra import _databases, _free_port, _make, _psql, _stack_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAME = "dlops-people"
BIN = Path(sys.executable).parent
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="session")
def prefect_server():
    """This module talks to the stack's Prefect server, not the suite's temporary one."""
    yield


def _people(path: Path, n: int = 160, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    # bounded features: a refresh with more rows stays inside the committed suite's ranges
    frame = pd.DataFrame({"a": rng.uniform(-2, 2, n), "b": rng.uniform(-2, 2, n)})
    frame["label"] = np.where(frame["a"] + 0.2 * frame["b"] > 0, "up", "down")
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """The stack, a committed project whose workers clone it, and its deployments."""
    root = tmp_path_factory.mktemp("team")
    project, source = root / "project", root / "source" / "people.csv"
    project.mkdir()
    source.parent.mkdir()
    _people(source)
    _copy_project(project)
    (project / ".gitignore").write_text(
        "/data/\n/reports/\nmlflow.db\nmlartifacts/\n__pycache__/\n/.dlops/\n.env\n"
    )
    git("init", "-q", "-b", "main", cwd=project)
    git("config", "user.email", "ci@dlops.invalid", cwd=project)
    git("config", "user.name", "dlops-ci", cwd=project)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=project, check=True)
    subprocess.run(
        [str(BIN / "dvc"), "config", "core.analytics", "false"], cwd=project, check=True
    )
    overrides = [*TINY, "promote.threshold=null", "validate.min_rows=20"]
    overrides += [f"data.source={source}", "data.target=label"]
    write_overrides(project / "params.yaml", overrides)
    # the team infers the source's suite once, reviews it and commits it with the pipeline
    init = subprocess.run(
        [str(BIN / "dlops"), "suite", "init"], cwd=project, capture_output=True, text=True
    )
    assert init.returncode == 0, init.stderr
    assert (project / "expectations" / "people.json").is_file()
    git("add", "-A", cwd=project)
    git("commit", "-qm", "the team's pipeline and the source's suite", cwd=project)

    prefix = f"dlopsloop_{uuid.uuid4().hex[:8]}"
    env = _stack_env(root / "stack", project / ".env", prefix, _free_port(), _free_port())
    env["DLOPS_REPO"] = str(project)
    up = _make("up", env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        dotenv = read_env_file(project / ".env")
        run_env = {**env, **dotenv, "PATH": f"{BIN}:{os.environ['PATH']}"}
        deploy = subprocess.run(
            [str(BIN / "dlops"), "deploy"],
            cwd=project,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        yield {"project": project, "source": source, "env": dotenv, "root": root}
    finally:
        _make("down", env, "PURGE=1", timeout=180)
        for db in _databases(prefix):
            _psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        _psql(f'DROP ROLE IF EXISTS "{prefix}"')


@pytest.fixture
def stack_clients(team, monkeypatch):
    """Prefect and MLflow clients of the stack (its API URL, its MLflow login)."""
    from mlflow import MlflowClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = team["env"]
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, env[key])
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        yield MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])


def _start(name: str, overrides: list[str] | None = None):
    from prefect.deployments import run_deployment

    params = None if overrides is None else {"overrides": overrides}
    return run_deployment(name, parameters=params, timeout=0, as_subflow=False)


def _wait(flow_run_id, timeout: float = 900):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.type.value in TERMINAL:
                return run
            assert time.monotonic() < deadline, f"flow run {flow_run_id} still {run.state}"
            time.sleep(2)


def _started_by(watch_run) -> str | None:
    """The pipeline run a watch run started (tagged with the watch run's id), if any."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    tag = f"dlops-watch:{watch_run.id}"
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
        )
    assert len(runs) <= 1
    return runs[0].id if runs else None


def _champion(c) -> str:
    return str(c.get_model_version_by_alias(NAME, "champion").version)


def _versions(c) -> list:
    return sorted(c.search_model_versions(f"name = '{NAME}'"), key=lambda v: int(v.version))


def test_the_team_loop(team, stack_clients):
    from prefect.client.orchestration import get_client

    c = stack_clients
    # 1. a deployment run on a worker: champion v1 in the PostgreSQL-backed MLflow, linked
    first = _wait(_start("dlops-pipeline/nightly").id)
    assert first.state.type.value == "COMPLETED", first.state.message
    assert _champion(c) == "1"
    v1 = c.get_model_version(NAME, "1")
    parent = v1.tags["dlops.pipeline_run_id"]
    assert v1.tags["prefect.flow_run_id"] == str(first.id)
    parent_tags = c.get_run(parent).data.tags
    assert parent_tags["prefect.flow_run_id"] == str(first.id)
    assert str(first.id) in parent_tags["prefect.flow_run_url"]
    assert f"mlflow-run:{parent}" in first.tags
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[first.id]))
        )
    keys = {a.key for a in arts}
    assert {"validation", "best-trial", "test-metrics", "promotion", "mlflow-run"} <= keys
    workspace_1 = parent_tags["dlops.workspace"]
    assert not workspace_1.startswith(str(team["project"]))  # a clone of its own
    # the watch sees the data the champion was trained on: nothing starts
    idle = _wait(_start("dlops-watch/data-changed").id)
    assert idle.state.type.value == "COMPLETED" and _started_by(idle) is None

    # 2. more data: the watch starts the pipeline, which registers and decides
    _people(team["source"], n=220, seed=1)
    watch = _wait(_start("dlops-watch/data-changed").id)
    assert watch.state.type.value == "COMPLETED"
    second = _wait(_started_by(watch))
    assert second.state.type.value == "COMPLETED", second.state.message
    versions = _versions(c)
    assert [v.version for v in versions] == ["1", "2"]
    assert versions[1].tags["data.sha256"] != versions[0].tags["data.sha256"]
    assert versions[1].tags["promotion.decision"] in ("promoted", "rejected")
    assert versions[1].tags["promotion.reason"]
    champion_after_2 = _champion(c)

    # 3. corrupted data: the run fails with the one-line validation reason, champion unchanged
    good = team["source"].read_bytes()
    corrupt = pd.read_csv(team["source"]).rename(columns={"a": "alpha"})
    corrupt.to_csv(team["source"], index=False)
    watch = _wait(_start("dlops-watch/data-changed").id)
    bad = _wait(_started_by(watch))
    assert bad.state.type.value == "FAILED"
    message = bad.state.message or ""
    assert "validation failed" in message and "alpha" in message, message
    assert _champion(c) == champion_after_2 and len(_versions(c)) == 2

    # 4. two runs at once on the two workers, identical inputs: both complete, one version
    team["source"].write_bytes(good)
    overrides = ["train.max_epochs=3"]
    runs = [_start("dlops-pipeline/nightly", overrides) for _ in range(2)]
    done = [_wait(r.id) for r in runs]
    assert [r.state.type.value for r in done] == ["COMPLETED", "COMPLETED"], [
        r.state.message for r in done
    ]
    parents = [
        r.data.tags
        for r in c.search_runs(
            [c.get_experiment_by_name("dlops").experiment_id],
            filter_string="tags.`dlops.stage` = 'pipeline'",
        )
        if r.data.tags.get("prefect.flow_run_id") in {str(d.id) for d in done}
    ]
    assert len({p["dlops.workspace"] for p in parents}) == 2  # two clones, two workspaces
    versions = _versions(c)
    shas = [v.tags["dlops.model_sha256"] for v in versions]
    assert len(shas) == len(set(shas)) == 3  # the two runs' identical weights: one version
    aliases = c.get_registered_model(NAME).aliases
    assert list(aliases).count("champion") == 1
    shutil.rmtree(team["root"] / "source", ignore_errors=True)
