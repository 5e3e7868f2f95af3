"""Refuse to run a stage on out-of-date inputs: name the stale upstream stage and what to run.

`dvc repro` runs stages in order, so under it (DVC sets `DVC_STAGE`) upstream is fresh by
construction and nothing is checked. A stage started on its own (`python -m tasks.train`,
`dlops train`) first asks DVC whether any stage it depends on is out of date with dvc.yaml,
params.yaml and dvc.lock: another data set or modality in params.yaml would otherwise reach a
network built for the old one. Ingest looks at its source on every run (`always_changed`); here
only its code, params and outputs count.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class StaleUpstreamError(RuntimeError):
    """An upstream stage is out of date; the message is one line saying what to run."""


def _why(stage: Any) -> str:
    """A short reason a stage is out of date (from `dvc status`'s own entries)."""
    if stage.changed_stage():
        return "its definition in dvc.yaml changed"
    for entry in stage.status().get(stage.addressing, []):
        if isinstance(entry, dict):
            for kind, changes in entry.items():
                if kind == "changed deps" and isinstance(changes, dict):
                    for dep, state in changes.items():
                        if isinstance(state, dict):  # params: {key: "modified"}
                            keys = ", ".join(sorted(state))
                            return f"params {keys} {next(iter(state.values()))}"
                        return f"{dep} {state}"
                if kind == "changed outs" and isinstance(changes, dict):
                    out, state = next(iter(changes.items()))
                    return f"its output {out} is {state}"
    return "its inputs changed"


def _stale(stage: Any) -> bool:
    # `stage.changed()` is always true for an always_changed stage (ingest): look past the flag.
    return bool(stage.changed_stage() or stage._changed_deps() or stage.changed_outs())


def check(stage_name: str, root: str | Path = ".", repo: Any = None) -> None:
    """Raise StaleUpstreamError when a stage that `stage_name` depends on is out of date.

    `repo`: a DVC repository whose lock the caller holds (a run's Recorder); else one is opened
    and locked here.
    """
    if os.environ.get("DVC_STAGE"):
        return
    if repo is None:
        from dvc.repo import Repo, lock_repo

        with Repo(str(root)) as opened, lock_repo(opened):
            return check(stage_name, root, opened)
    import networkx as nx

    repo._reset()  # dvc.yaml, dvc.lock and params as they are now
    graph = repo.index.graph
    (target,) = repo.stage.collect(stage_name)
    upstream = nx.descendants(graph, target)  # DVC's edges point at what a stage needs
    order = [s for s in reversed(list(nx.topological_sort(graph))) if s in upstream]
    for stage in order:
        if _stale(stage):
            raise StaleUpstreamError(
                f"{stage_name}: upstream stage {stage.addressing} is out of date "
                f"({_why(stage)}); run `dvc repro {stage_name}` or `dlops run` first"
            )
