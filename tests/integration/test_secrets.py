"""Secrets end to end: a source URL with a password and a presigned query, and an Optuna storage
URL with a password, used by a whole pipeline run and found in none of its records or logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tasks import tracking
from tests.integration.test_flow import BYO, _table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOURCE_PASSWORD = "src-pw-4b1d9e77"
SIGNATURE_VALUE = "a91f3c0e5d2b7f68e4c1"
QUERY = f"X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature={SIGNATURE_VALUE}"
DB_PASSWORD = "db-pw-0c7a55e1"
SECRETS = (SOURCE_PASSWORD, SIGNATURE_VALUE, DB_PASSWORD)


def _leaks(where: str, blob: bytes | str) -> list[str]:
    data = blob if isinstance(blob, bytes) else blob.encode()
    return [f"{where}: {s}" for s in SECRETS if s.encode() in data]


def _mlflow_leaks(tmp: Path) -> tuple[list[str], int]:
    """Secrets in any MLflow run's params, tags and artifacts, or any version's tags."""
    import mlflow

    c = tracking.client()
    leaks, runs = [], 0
    for exp in c.search_experiments():
        for run in c.search_runs([exp.experiment_id]):
            runs += 1
            rid = run.info.run_id
            leaks += _leaks(f"run {rid} params", repr(run.data.params))
            leaks += _leaks(f"run {rid} tags", repr(run.data.tags))
            local = Path(mlflow.artifacts.download_artifacts(run_id=rid, dst_path=str(tmp / rid)))
            for f in local.rglob("*"):
                if f.is_file():
                    leaks += _leaks(f"run {rid} artifact {f.relative_to(local)}", f.read_bytes())
    for model in c.search_registered_models():
        for mv in c.search_model_versions(f"name='{model.name}'"):
            leaks += _leaks(f"{model.name} v{mv.version}", repr((mv.tags, mv.source)))
    return leaks, runs


def _prefect_logs() -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs()]


def test_secret_urls_never_reach_records_or_logs(
    dvc_project, tiny, loopback, postgres_db, tmp_path_factory, monkeypatch, caplog, capfd
):
    from flows.pipeline import pipeline
    from tasks.runtime import setup
    from tasks.sources import DataError

    root = dvc_project
    served = tmp_path_factory.mktemp("bucket")
    _table(served / "people.csv")
    server = loopback(served, auth=f"reader:{SOURCE_PASSWORD}", query=QUERY)
    source = server.url("people.csv", userinfo=f"reader:{SOURCE_PASSWORD}", query=QUERY)
    storage = f"postgresql+psycopg2://postgres:{DB_PASSWORD}@127.0.0.1:5432/{postgres_db}"
    monkeypatch.setenv("DLOPS_DATA_URL", source)
    monkeypatch.setenv("DLOPS_OPTUNA_STORAGE", storage)
    setup(root)  # what every entry point does: redaction of log records and tracebacks
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="fsspec")  # fsspec logs the URLs it opens

    overrides = [*tiny, *BYO, "data.source=env:DLOPS_DATA_URL", "data.target=label"]
    result = pipeline(overrides=overrides)

    assert result["model"]["name"] == "dlops-people" and result["model"]["version"] == "1"
    assert server.seen and all(ok for _, ok in server.seen)  # the credentials were used
    shown = server.url("people.csv", userinfo="reader:***", query="***")
    ws = Path(result["workspace"])  # a run with overrides: its own workspace
    manifest = (ws / "data/raw/manifest.json").read_text()
    assert f'"source": "{shown}"' in manifest
    lock = (ws / "dvc.lock").read_text()
    assert "source: env:DLOPS_DATA_URL" in lock and "storage: auto" in lock
    c = tracking.client()
    tune_run = next(
        r
        for r in c.search_runs([c.get_experiment_by_name("dlops").experiment_id])
        if r.info.run_name == "tune"
    )
    assert tune_run.data.tags["optuna.storage"] == (
        f"postgresql+psycopg2://postgres:***@127.0.0.1:5432/{postgres_db}"
    )
    version = c.get_model_version("dlops-people", "1")
    assert version.tags["data.source"] == shown

    # a refused download: the library's error (with the URL) is chained, and still redacted
    monkeypatch.setenv("DLOPS_DATA_URL", source.replace(SOURCE_PASSWORD, "wrong-" + "1" * 8))
    with pytest.raises(DataError, match=r"cannot read the source \(403"):
        pipeline(overrides=overrides)

    leaks = []
    # every file of the checkout and its workspaces (data, reports, dvc.lock, params.yaml,
    # suites, DVC cache, the MLflow store), git's compressed objects aside
    for f in root.rglob("*"):
        if f.is_file() and ".git" not in f.relative_to(root).parts:
            leaks += _leaks(str(f.relative_to(root)), f.read_bytes())
    mlflow_leaks, runs = _mlflow_leaks(tmp_path_factory.mktemp("artifacts"))
    assert runs >= 4  # pipeline, tune, trial, train (and the failed run's pipeline run)
    leaks += mlflow_leaks
    prefect_logs = _prefect_logs()
    assert any("stage ingest" in m for m in prefect_logs)
    leaks += _leaks("Prefect logs", "\n".join(prefect_logs))
    leaks += _leaks("log records", caplog.text)
    out, err = capfd.readouterr()
    leaks += _leaks("stdout/stderr", out + err)
    assert leaks == []
