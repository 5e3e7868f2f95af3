"""tune.storage: auto | journal | memory, database URLs from the environment only."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tasks import optuna_storage
from tasks.config import ConfigError, load_config

PASSWORD = "s3cret-db-pw-71c2"


def cfg_for(workspace: Path, *overrides: str):
    return load_config(workspace / "params.yaml", list(overrides))


def test_auto_is_the_journal_file_of_the_checkout_without_a_url(workspace, monkeypatch):
    monkeypatch.setenv("DLOPS_HOME", str(workspace))
    s = optuna_storage.resolve(cfg_for(workspace))
    assert (s.kind, s.path) == ("journal", workspace.resolve() / ".dlops/optuna/journal.log")
    assert s.label == f"journal:{s.path}"
    import optuna

    study = optuna.create_study(study_name="s", storage=s.open())
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    again = optuna.load_study(
        study_name="s", storage=optuna_storage.resolve(cfg_for(workspace)).open()
    )
    assert len(again.trials) == 2 and s.path.stat().st_size > 0  # on disk, shared by processes


def test_auto_takes_the_environment_url_journal_and_memory_do_not(workspace, monkeypatch):
    url = f"postgresql+psycopg2://app:{PASSWORD}@db.internal:5432/optuna"
    monkeypatch.setenv("DLOPS_OPTUNA_STORAGE", url)
    auto = optuna_storage.resolve(cfg_for(workspace))
    assert (auto.kind, auto.url) == ("rdb", url)
    assert auto.label == "postgresql+psycopg2://app:***@db.internal:5432/optuna"
    assert optuna_storage.storage_url(cfg_for(workspace)) == url
    assert optuna_storage.resolve(cfg_for(workspace, "tune.storage=journal")).kind == "journal"
    memory = cfg_for(workspace, "tune.storage=memory")
    assert optuna_storage.resolve(memory).open() is None
    assert optuna_storage.storage_url(memory) is None


@pytest.mark.parametrize(
    "value", [f"postgresql://u:{PASSWORD}@h/db", "sqlite:///optuna.db", "optuna.db", None]
)
def test_a_url_in_params_is_refused_saying_where_it_goes(workspace, value):
    with pytest.raises(ConfigError) as err:
        cfg_for(workspace, f"tune.storage={'null' if value is None else value}")
    message = str(err.value)
    assert "\n" not in message and PASSWORD not in message
    if value is None:
        assert message.endswith(
            "tune.storage: null is not a storage: use memory (in-process), journal or auto"
        )
    elif "://" in value:
        assert "a storage URL must not be in params.yaml" in message
        assert "export DLOPS_OPTUNA_STORAGE='<URL>' and keep tune.storage auto" in message
    else:
        assert "tune.storage: Input should be 'auto', 'journal' or 'memory'" in message


def test_a_bad_environment_value_is_one_redacted_line(workspace, monkeypatch):
    monkeypatch.setenv("DLOPS_OPTUNA_STORAGE", f"redis://u:{PASSWORD}@h:6379/0")
    with pytest.raises(optuna_storage.StorageError) as err:
        optuna_storage.resolve(cfg_for(workspace))
    assert str(err.value) == (
        "DLOPS_OPTUNA_STORAGE: expected a SQLAlchemy database URL (postgresql, mysql, sqlite), "
        "got 'redis://u:***@h:6379/0'"
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_database_fails_in_one_line_with_the_cause_chained(workspace, monkeypatch):
    url = f"postgresql+psycopg2://app:{PASSWORD}@127.0.0.1:{_closed_port()}/optuna"
    monkeypatch.setenv("DLOPS_OPTUNA_STORAGE", url)
    with pytest.raises(optuna_storage.StorageError) as err:
        optuna_storage.resolve(cfg_for(workspace)).open()
    message = str(err.value)
    assert message.startswith(
        "tune.storage rdb: cannot open postgresql+psycopg2://app:***@127.0.0.1:"
    )
    assert "Connection refused" in message or "connection" in message.lower()
    assert PASSWORD not in message and "\n" not in message
    assert err.value.__cause__ is not None


def test_a_postgresql_url_with_a_password_opens_a_shared_study(
    workspace, monkeypatch, postgres_db
):
    import optuna

    url = f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:5432/{postgres_db}"
    monkeypatch.setenv("DLOPS_OPTUNA_STORAGE", url)
    s = optuna_storage.resolve(cfg_for(workspace))
    study = optuna.create_study(study_name="shared", storage=s.open())
    study.optimize(lambda t: t.suggest_int("k", 0, 3), n_trials=2)
    other_process_view = optuna.load_study(study_name="shared", storage=url)
    assert len(other_process_view.trials) == 2
    assert PASSWORD not in s.label
