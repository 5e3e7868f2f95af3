"""Deploy the pipeline on a schedule to a Prefect process work pool (`prefect worker start`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_POOL = "dlops"
DEFAULT_NAME = "dlops-scheduled"


def ensure_process_pool(pool: str) -> None:
    """Create the process work pool unless the server has it; one of another type is an error."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        except ObjectAlreadyExists as exc:  # created before: it must be a process pool
            existing = client.read_work_pool(pool)
            if existing.type != "process":
                raise ValueError(
                    f"work pool {pool!r} exists with type {existing.type!r}, not 'process': "
                    "choose another --pool"
                ) from exc


def deploy(
    root: str | Path = ".",
    name: str = DEFAULT_NAME,
    pool: str = DEFAULT_POOL,
    cron: str | None = "0 3 * * *",
    overrides: list[str] | None = None,
) -> Any:
    """Register a deployment of the pipeline from this checkout; returns its id."""
    from flows.pipeline import pipeline

    ensure_process_pool(pool)
    source = pipeline.from_source(
        source=str(Path(root).resolve()), entrypoint="flows/pipeline.py:pipeline"
    )
    return source.deploy(
        name=name,
        work_pool_name=pool,
        cron=cron,
        parameters={"overrides": list(overrides or [])},
        build=False,
        push=False,
        print_next_steps=False,
    )
