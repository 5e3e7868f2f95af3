"""Prometheus metrics, shared by the HTTP and the inference processes (multiprocess mode).

`PROMETHEUS_MULTIPROC_DIR` must be set before prometheus_client is first imported in a process:
the server sets it in the launching process, whose children inherit it.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from types import SimpleNamespace

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def configure(folder: str | Path) -> None:
    """Point this process (and its future children) at the metrics folder."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)


@cache
def metrics() -> SimpleNamespace:
    """The server's metrics (created once per process)."""
    from prometheus_client import Counter, Histogram

    return SimpleNamespace(
        requests=Counter(
            "dlops_requests_total", "HTTP requests by path and status", ["path", "status"]
        ),
        latency=Histogram(
            "dlops_request_latency_seconds",
            "Latency of /invocations requests",
            buckets=LATENCY_BUCKETS,
        ),
        errors=Counter("dlops_errors_total", "Failed /invocations requests by kind", ["kind"]),
        batch_size=Histogram(
            "dlops_batch_size", "Requests per forward pass", buckets=BATCH_BUCKETS
        ),
        batch_rows=Histogram("dlops_batch_rows", "Rows per forward pass", buckets=BATCH_BUCKETS),
        swaps=Counter("dlops_model_swaps_total", "Models loaded by the inference workers"),
    )


def exposition() -> bytes:
    """Every process's metrics in Prometheus' text format."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return generate_latest(registry)
