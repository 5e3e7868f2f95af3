"""`dlops dashboard`: optuna-dashboard on the study storage, on 127.0.0.1, address printed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dvc.repo  # noqa: F401  (the CLI-in-process convention)

from flows.cli import main
from tasks import optuna_storage
from tests.conftest import REPO


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_dashboard_serves_the_journal_studies_on_loopback(workspace: Path):
    import optuna

    from tasks.config import load_config

    storage = optuna_storage.resolve(load_config(workspace / "params.yaml"))
    study = optuna.create_study(study_name="dlops-digits-abc", storage=storage.open())
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "dashboard", "--port", str(port)],
        cwd=workspace,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line == (
            f"optuna-dashboard on {storage.label}: http://127.0.0.1:{port}/  (Ctrl-C stops it)"
        )
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as r:
                    body = json.loads(r.read())
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None
                time.sleep(0.2)
        names = [s["study_name"] for s in body["study_summaries"]]
        assert names == ["dlops-digits-abc"]
    finally:
        proc.terminate()
        proc.wait(20)


def test_nothing_to_show_is_one_line(workspace: Path, capfd):
    try:
        main(["dashboard", "--port", str(_free_port())])
    except SystemExit as exc:
        assert exc.code == 2
    err = capfd.readouterr().err.strip()
    journal = workspace.resolve() / ".dlops/optuna/journal.log"
    assert err == f"dlops: no study yet in journal:{journal}: run the tune stage first"
    try:
        main(["dashboard", "-S", "tune.storage=memory"])
    except SystemExit as exc:
        assert exc.code == 2
    assert capfd.readouterr().err.strip() == (
        "dlops: tune.storage memory: a study in memory ends with its tune process; "
        "nothing to show (use auto or journal)"
    )
