"""Orphan runs: what a killed pipeline left RUNNING is closed, a live process's runs never are."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tasks import tracking

EXP = "orphans"


def _pipeline(token: str) -> tuple[str, str, str]:
    """A parent run tagged with `token`, a child and a grandchild, all RUNNING."""
    parent = tracking.start_run(EXP, "pipeline", tags={tracking.TOKEN_TAG: token})
    child = tracking.start_run(EXP, "tune", parent)
    grandchild = tracking.start_run(EXP, "trial-0", child)
    return parent, child, grandchild


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _status(run_id: str) -> str:
    return tracking.client().get_run(run_id).info.status


def test_a_dead_runs_open_runs_are_marked_failed_with_the_reason(workspace: Path) -> None:
    tracking.write_marker(workspace, "dead", experiment=EXP)  # phase running: lock holder died
    parent, child, grandchild = _pipeline("dead")
    tracking.end_run(child)  # finished before the kill: left as it was
    mine = tracking.start_run(EXP, "pipeline", tags={tracking.TOKEN_TAG: "mine"})
    tracking.write_marker(workspace, "mine", experiment=EXP)

    (dead,) = tracking.close_orphans(workspace, "mine", by=mine)

    assert sorted(dead["closed"]) == sorted([parent, grandchild])
    assert (_status(parent), _status(child), _status(grandchild)) == (
        "FAILED",
        "FINISHED",
        "FAILED",
    )
    reason = tracking.client().get_run(grandchild).data.tags[tracking.ORPHAN_TAG]
    assert "ended without closing this run: killed" in reason and f"by run {mine}" in reason
    assert _status(mine) == "RUNNING"  # this run's own marker and runs are not orphans
    assert [m["token"] for m in tracking.markers(workspace)] == ["mine"]
    assert tracking.close_orphans(workspace, "mine") == []  # once


def test_a_finishing_run_is_left_alone_while_its_process_lives(workspace: Path) -> None:
    # released the lock to save its DVC experiment, parent not closed yet: alive (this process)
    tracking.write_marker(workspace, "live", experiment=EXP, phase=tracking.FINISHING)
    live_parent, *_ = _pipeline("live")
    assert tracking.close_orphans(workspace, "new") == []
    assert _status(live_parent) == "RUNNING"
    assert [m["token"] for m in tracking.markers(workspace)] == ["live"]

    # the same phase from a process that is gone: closed
    tracking.write_marker(workspace, "live", phase=tracking.FINISHING, pid=_dead_pid())
    (dead,) = tracking.close_orphans(workspace, "new")
    assert live_parent in dead["closed"] and _status(live_parent) == "FAILED"
    assert tracking.markers(workspace) == []


def test_a_torn_marker_is_not_a_run(workspace: Path) -> None:
    folder = workspace / tracking.MARKER_DIR
    folder.mkdir(parents=True)
    (folder / "torn.json").write_text('{"token": "to')
    assert tracking.markers(workspace) == []
    assert tracking.close_orphans(workspace, "new") == []


def test_a_training_killed_mid_way_has_its_run_closed_by_the_next(workspace: Path) -> None:
    from tasks.train import FINGERPRINT, close_killed_run

    ckpt = workspace / "data" / "checkpoints"
    ckpt.mkdir(parents=True)
    killed = tracking.start_run(EXP, "train")  # RUNNING: the process died with it
    (ckpt / FINGERPRINT).write_text(f'{{"fingerprint": "x", "run_id": "{killed}"}}')
    assert close_killed_run(ckpt) == killed
    run = tracking.client().get_run(killed)
    assert run.info.status == "FAILED" and "killed" in run.data.tags[tracking.ORPHAN_TAG]
    assert close_killed_run(ckpt) is None  # closed once; a finished run is left alone
    (ckpt / FINGERPRINT).write_text('{"fingerprint": "x", "run_id": "0123456789abcdef"}')
    assert close_killed_run(ckpt) is None  # not in this store
