"""Hermetic runs through the `dlops` CLI: nothing a run sets leaks into params.yaml or the next."""

import subprocess
from pathlib import Path

import dvc.repo  # noqa: F401  (DVC binds its log handlers to the streams of its first import)
import numpy as np
import pandas as pd
import pytest

from tasks import tracking
from tasks.config import write_overrides
from tests.conftest import TINY, git

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _dlops(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from flows.cli import main

    with pytest.raises(SystemExit) as done:
        main(list(argv))
    out = capfd.readouterr()
    return int(done.value.code), out.out, out.err


def _tracked_changes(root: Path) -> str:
    return git("status", "--porcelain", "--untracked-files=no", cwd=root).strip()


def _pipeline_param(run_id: str, key: str) -> str:
    return tracking.client().get_run(run_id).data.params[key]


def _people(path: Path) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=120), "b": rng.normal(size=120)})
    frame["label"] = np.where(frame["a"] > 0, "up", "down")
    frame.to_csv(path, index=False)
    return path


def _waves(path: Path) -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(120) % 2
    t = np.linspace(0, 1, 24)
    x = np.sin(2 * np.pi * (1 + 2 * y[:, None]) * t) + rng.normal(0, 0.1, (120, 24))
    np.savez(path, x=x.astype(np.float32), y=y)
    return path


def test_runs_with_overrides_leave_params_and_the_next_run_alone(dvc_project, capfd):
    import json

    root = dvc_project
    # the user commits a small budget, as they would commit their own defaults
    write_overrides("params.yaml", [*TINY, "validate.min_rows=20", "promote.threshold=null"])
    git("commit", "-qam", "small budget", cwd=root)
    committed = (root / "params.yaml").read_bytes()

    # a sequence file with an RNN, then a table with its own target, then a plain run
    code, out, err = _dlops(
        capfd, "run", "--data", str(_waves(root / "w.npz")), "-S", "model.arch=rnn"
    )
    assert code == 0, err
    assert (root / "params.yaml").read_bytes() == committed and _tracked_changes(root) == ""

    code, out, err = _dlops(
        capfd,
        "run",
        "--data",
        str(_people(root / "people.csv")),
        "-S",
        "data.target=label",
        "--json",
    )
    assert code == 0, err  # no "rnn does not apply to tables": the last run's arch did not leak
    table_run = json.loads(out[out.index("{") :])
    parent = table_run["parent_run_id"]
    assert _pipeline_param(parent, "model.arch") == "auto"
    assert _pipeline_param(parent, "data.target") == "label"
    assert (root / "params.yaml").read_bytes() == committed and _tracked_changes(root) == ""

    code, out, err = _dlops(capfd, "run", "--data", str(root / "w.npz"), "--json")
    assert code == 0, err  # --data starts from the committed data section: target is not "label"
    seq_run = json.loads(out[out.index("{") :])
    assert _pipeline_param(seq_run["parent_run_id"], "data.target") == "target"
    assert _pipeline_param(seq_run["parent_run_id"], "model.arch") == "auto"

    code, out, err = _dlops(capfd, "run", "--json")
    assert code == 0, err
    plain = json.loads(out[out.index("{") :])
    assert plain["workspace"] == str(root) and plain["experiment"] is None
    assert plain["stages"][0]["detail"]["source"] == "builtin:digits"
    assert (root / "data/raw/manifest.json").is_file()  # a plain run works in the checkout
    assert (root / "params.yaml").read_bytes() == committed

    # every run with overrides is a DVC experiment of the checkout
    shown = subprocess.run(
        [str(Path(__import__("sys").executable).parent / "dvc"), "exp", "show", "--json"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown.count('"name": "dlops-') >= 3


def test_a_failed_run_leaves_every_tracked_file_as_it_was(dvc_project, capfd):
    root = dvc_project
    committed = (root / "params.yaml").read_bytes()
    frame = pd.DataFrame({"a": np.arange(60.0), "label": ["same"] * 60})
    frame.to_csv(root / "one.csv", index=False)
    code, _, err = _dlops(
        capfd,
        "run",
        "--data",
        str(root / "one.csv"),
        "-S",
        "data.target=label",
        *sum((["-S", o] for o in TINY), []),
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("dlops: ") and "class" in lines[-1]
    assert (root / "params.yaml").read_bytes() == committed
    assert _tracked_changes(root) == ""
    assert tracking.client().search_registered_models() == []

    # a missing file fails before Prefect starts, and leaves nothing either
    code, _, err = _dlops(capfd, "run", "--data", str(root / "nope.csv"))
    assert code == 1 and err.strip() == f"dlops: {root / 'nope.csv'}: file not found"
    assert (root / "params.yaml").read_bytes() == committed and _tracked_changes(root) == ""


def test_train_alone_on_stale_inputs_names_the_stale_stage(dvc_project, capfd):
    root = dvc_project
    write_overrides("params.yaml", [*TINY, "promote.threshold=null"])
    git("commit", "-qam", "small budget", cwd=root)
    code, _, err = _dlops(capfd, "run")
    assert code == 0, err
    # params.yaml now names another data set: train alone must not build a network for it
    write_overrides("params.yaml", ["data.dataset=wine"])
    code, _, err = _dlops(capfd, "train")
    assert code == 1
    assert err.strip() == (
        "dlops: train: upstream stage ingest is out of date (params data modified); run "
        "`dvc repro train` or `dlops run` first"
    )
