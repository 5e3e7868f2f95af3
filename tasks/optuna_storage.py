"""Where an Optuna study lives: `tune.storage` resolved against the environment, at one place.

- `auto` (the default): the database URL in `DLOPS_OPTUNA_STORAGE` when set (PostgreSQL for
  workers on several machines), else a JournalStorage file `<home>/.dlops/optuna/journal.log`
  (several processes on one host);
- `journal`: the journal file, whatever the environment says;
- `memory`: an in-process study, gone when the process ends.
Several worker processes share the journal file (one host) or PostgreSQL (any number of hosts),
never SQLite ("database is locked", optuna#820). `lock()` is the storage's own mutual exclusion
(an `flock` beside the journal file, a PostgreSQL advisory lock) that keeps a study's trial count
exact across workers (tasks.tune_study).
A URL never sits in params.yaml (it would reach dvc.lock and MLflow, password included): it comes
from the environment, and only its redacted form (`label`) is recorded or printed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.preprocessing import one_line
from tasks.config import Config, ConfigError
from tasks.redact import redact, redact_url

STORAGE_ENV = "DLOPS_OPTUNA_STORAGE"
JOURNAL = Path(".dlops") / "optuna" / "journal.log"
# SQLAlchemy dialects Optuna's RDBStorage supports (a `+driver` suffix is allowed).
RDB_SCHEMES = ("postgresql", "mysql", "sqlite")
CONNECT_TIMEOUT_S = 10  # an unreachable database host fails the stage in seconds, not minutes


class StorageError(ConfigError):
    """The Optuna storage named by the environment cannot be used (message redacted)."""


@dataclass(frozen=True)
class StudyStorage:
    """A resolved storage: its kind, and the URL or journal file it opens."""

    kind: str  # memory | journal | rdb
    url: str | None = None  # rdb only; holds credentials: never record it, record `label`
    path: Path | None = None  # journal only

    @property
    def label(self) -> str:
        """What may be recorded and printed: the kind and where, credentials masked."""
        if self.kind == "rdb":
            return redact_url(str(self.url))
        if self.kind == "journal":
            return f"journal:{self.path}"
        return "memory"

    @property
    def dialect(self) -> str:
        """The database of an rdb storage (postgresql, mysql, sqlite); else the kind."""
        if self.kind != "rdb":
            return self.kind
        return str(self.url).split("://", 1)[0].split("+", 1)[0].lower()

    @property
    def shared(self) -> bool:
        """Whether several processes may use it at once (not memory, not SQLite: optuna#820)."""
        return self.kind == "journal" or self.dialect == "postgresql"

    @property
    def host(self) -> str:
        """Where it lives, for messages: the database host:port, or this machine."""
        if self.kind == "rdb":
            from urllib.parse import urlsplit

            netloc = urlsplit(str(self.url)).netloc.rpartition("@")[2]
            return netloc or "localhost"
        return "localhost"

    @contextlib.contextmanager
    def lock(self, study_name: str) -> Iterator[None]:
        """Mutual exclusion among every process of one study on this storage.

        Journal: an `flock` on a file beside the journal (one host; the kernel releases it when
        a holder dies). PostgreSQL: a session advisory lock (released when a holder's
        connection drops). Memory and SQLite: one process only, nothing to exclude.
        """
        key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
        if self.kind == "journal":
            import fcntl

            assert self.path is not None
            lock_file = self.path.with_name(f"{self.path.name}.{key & 0xFFFFFFFF:08x}.lock")
            with open(lock_file, "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        elif self.dialect == "postgresql":
            with self._pg_connection() as conn:
                from sqlalchemy import text

                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        else:
            yield

    @contextlib.contextmanager
    def _pg_connection(self) -> Iterator[Any]:
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        engine = self.__dict__.get("_engine")
        if engine is None:
            engine = sqlalchemy.create_engine(
                str(self.url), poolclass=NullPool, connect_args=self._connect_args()
            )
            object.__setattr__(self, "_engine", engine)  # one engine per storage object
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            yield conn

    def _connect_args(self) -> dict[str, Any]:
        return {"connect_timeout": CONNECT_TIMEOUT_S} if self.dialect == "postgresql" else {}

    def open(self) -> Any:
        """The Optuna storage object (None: in memory); a failure is one redacted line."""
        if self.kind == "memory":
            return None
        import optuna

        try:
            if self.kind == "journal":
                from optuna.storages.journal import JournalFileBackend

                assert self.path is not None
                self.path.parent.mkdir(parents=True, exist_ok=True)
                return optuna.storages.JournalStorage(JournalFileBackend(str(self.path)))
            return optuna.storages.RDBStorage(
                str(self.url), engine_kwargs={"connect_args": self._connect_args()}
            )
        except Exception as exc:  # SQLAlchemy/driver errors; their text may carry the URL
            detail = redact(one_line(exc, 200))
            raise StorageError(
                f"tune.storage {self.kind}: cannot open {self.label} on host {self.host} "
                f"({detail})"
            ) from exc


def journal_path() -> Path:
    """The journal file of the project checkout (`DLOPS_HOME`), shared by its runs."""
    from tasks.runtime import home

    return home().resolve() / JOURNAL


def _rdb_url(value: str) -> str:
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme.split("+", 1)[0] not in RDB_SCHEMES:
        raise StorageError(
            f"{STORAGE_ENV}: expected a SQLAlchemy database URL ({', '.join(RDB_SCHEMES)}), "
            f"got {redact(value)!r}"
        )
    return value


def resolve(cfg: Config) -> StudyStorage:
    """The storage `tune.storage` names, with the environment as it is now."""
    kind = cfg.tune.storage
    if kind == "memory":
        return StudyStorage("memory")
    url = os.environ.get(STORAGE_ENV, "").strip()
    if kind == "auto" and url:
        return StudyStorage("rdb", url=_rdb_url(url))
    return StudyStorage("journal", path=journal_path())


def storage_url(cfg: Config) -> str | None:
    """The URL Optuna opens (None: in memory; `journal:<file>` for the journal file).

    It may hold credentials: pass it to Optuna, never to a log, tag or file.
    """
    s = resolve(cfg)
    return s.url if s.kind == "rdb" else (None if s.kind == "memory" else s.label)
