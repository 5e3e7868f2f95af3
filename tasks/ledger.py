"""The promotion ledger: every move of @champion (promotion, kept champion, rollback), in MLflow.

Each entry is one registered-model tag `dlops.ledger.<time ns>` holding JSON (time, user@host,
action, from/to versions, metric and scores, data hash, reason, Prefect flow-run id), so every
client of the registry sees the same history. Versions promoted before the ledger existed still
roll back: their `promotion.champion_version` tag names the champion they replaced.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

PREFIX = "dlops.ledger."
CHAMPION = "champion"
PROMOTE, KEEP, ROLLBACK = "promote", "keep", "rollback"
# version tags written by tasks.promote (kept here so that this module imports nothing of it)
TAG_CHAMPION_VERSION = "promotion.champion_version"
TAG_DECISION = "promotion.decision"


class LedgerError(LookupError):
    """No version to roll back to, or one that cannot replace the champion; one line."""


def _user() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def record(
    client: MlflowClient,
    name: str,
    action: str,
    from_version: str | None,
    to_version: str | None,
    reason: str,
    **fields: Any,
) -> dict[str, Any]:
    """Append one entry; lineage of the version it is about (data hash, flow run) is added."""
    about = to_version if action != KEEP else fields.get("judged") or to_version
    tags: dict[str, str] = {}
    if about is not None:
        tags = dict(client.get_model_version(name, str(about)).tags)
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "by": _user(),
        "action": action,
        "from": from_version,
        "to": to_version,
        "reason": reason,
        "data_sha256": tags.get("data.sha256"),
        "flow_run_id": tags.get("prefect.flow_run_id"),
        **fields,
    }
    client.set_registered_model_tag(name, f"{PREFIX}{time.time_ns():020d}", json.dumps(entry))
    return entry


def history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """The ledger, oldest first."""
    tags = client.get_registered_model(name).tags
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(PREFIX))]


def champion(client: MlflowClient, name: str) -> str | None:
    """The version @champion points to, if any."""
    version = client.get_registered_model(name).aliases.get(CHAMPION)
    return None if version is None else str(version)


def previous_champion(client: MlflowClient, name: str, current: str) -> str | None:
    """The champion that the promotion of `current` replaced (ledger first, then its tags)."""
    for entry in reversed(history(client, name)):
        if entry.get("action") == PROMOTE and str(entry.get("to")) == current:
            return None if entry.get("from") is None else str(entry["from"])
    previous = client.get_model_version(name, current).tags.get(TAG_CHAMPION_VERSION)
    return None if previous in (None, "", "none") else str(previous)


def _io(client: MlflowClient, name: str, version: str) -> tuple[Any, Any]:
    from mlflow.models import get_model_info

    sig = get_model_info(f"models:/{name}/{version}").signature
    if sig is None:
        return None, None
    d = sig.to_dict()
    return d.get("inputs"), d.get("outputs")


def rollback(
    client: MlflowClient, name: str, to: str | None = None, reason: str = ""
) -> tuple[str, str]:
    """Move @champion back to the previous champion (or `to`); record it. Returns (from, to)."""
    current = champion(client, name)
    if current is None:
        raise LedgerError(f"rollback: {name} has no @{CHAMPION} to roll back from")
    target = str(to) if to is not None else previous_champion(client, name, current)
    if target is None:
        raise LedgerError(
            f"rollback: no previous champion recorded for {name} v{current}; "
            "name one with --to VERSION"
        )
    if target == current:
        raise LedgerError(f"rollback: v{target} already holds @{CHAMPION}")
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, target)
    except MlflowException:
        raise LedgerError(f"rollback: {name} has no version {target}") from None
    if _io(client, name, target) != _io(client, name, current):
        raise LedgerError(
            f"rollback: {name} v{target} takes or gives other columns than v{current} "
            "(signatures differ); clients of the champion would break"
        )
    client.set_registered_model_alias(name, CHAMPION, target)
    record(
        client,
        name,
        ROLLBACK,
        current,
        target,
        reason or ("to the given version" if to is not None else "to the previous champion"),
    )
    return current, target


def describe(entry: dict[str, Any]) -> str:
    """One line of `dlops history`."""
    moved = f"v{entry.get('from') or '-'} -> v{entry.get('to') or '-'}"
    scores = ""
    if entry.get("metric"):
        new, old = entry.get("new_score"), entry.get("champion_score")
        versus = f" vs {_num(old)}" if old is not None else ""
        scores = f"  {entry['metric']} {_num(new)}{versus}"
    return (
        f"{entry.get('time', '?')}  {entry.get('action', '?'):<8}  {moved:<12}{scores}  "
        f"by {entry.get('by', '?')}  {entry.get('reason', '')}"
    )


def _num(value: Any) -> str:
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return str(value)
