"""What a server runs with: a plain dataclass, filled by the CLI from params.yaml's `serve:`."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STATE_ENV = "DLOPS_SERVE_STATE"  # the folder where workers report the model they hold
DEFAULT_DB = "mlflow.db"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the embedded SQLite store of the project (as tasks.tracking)."""
    home = Path(os.environ.get("DLOPS_HOME") or Path.cwd())
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / DEFAULT_DB}"


@dataclass(frozen=True)
class Settings:
    """One server: the model it follows and how it batches requests."""

    name: str
    alias: str = "champion"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1  # inference processes (LitServe workers_per_device)
    api_servers: int | None = None  # HTTP processes (None: one per worker)
    max_batch_size: int = 64
    batch_timeout: float = 0.005  # seconds a busy server waits to fill a batch
    threads: int = 1  # torch intra-op threads per worker
    poll_s: float = 5.0  # how often a worker checks where the alias points
    max_rows: int = 1024  # rows in one request (more: 413)
    max_body_bytes: int = 20_000_000  # bytes in one request (more: 413)
    timeout_s: float = 30.0  # a request waiting longer in the queue gets a 504
    fast_queue: bool = True  # LitServe's ZeroMQ transport for responses
    accelerator: str = "cpu"
    state_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (shown by /metadata)."""
        return asdict(self)
