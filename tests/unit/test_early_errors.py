"""Bad input fails in the CLI before Prefect, MLflow or torch is imported or a server starts.

`dlops run` runs as a subprocess of the temporary project without PREFECT_API_URL: reaching
Prefect would start a server (dlops' local one, or Prefect's temporary one). Every process the
command starts is watched while it runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from flows.server import STATE_SUBDIR


def _run_cli(project, *args: str) -> tuple[int, str, list[str]]:
    """Run `dlops <args>` in `project`; (exit code, stderr, command lines of its children)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(project / ".prefect-home")  # no user profile naming a server
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children: set[str] = set()
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            children |= {" ".join(c.cmdline()) for c in parent.children(recursive=True)}
        except psutil.Error:
            pass
        time.sleep(0.01)
    _, err = proc.communicate()
    return proc.returncode, err, sorted(children)


CASES = {
    "missing --data": (["--data", "missing.csv"], 1, "{root}/missing.csv: file not found"),
    "missing source": (["-S", "data.source=/nope/x.csv"], 1, "/nope/x.csv: file not found"),
    "unknown section": (["-S", "bad.key=1"], 2, "override 'bad.key=1': unknown key 'bad'"),
    "unknown key": (["-S", "train.max_epoch=3"], 2, "params.yaml: train.max_epoch: unknown key"),
    "bad value": (
        ["-S", "train.lr=abc"],
        2,
        "params.yaml: train.lr: Input should be a valid number, unable to parse string as a "
        "number",
    ),
    "a file for images": (
        ["--data", "{root}/params.yaml", "-S", "data.modality=images"],
        1,
        "{root}/params.yaml: images need a folder root/<class>/<image>, got a file",
    ),
    "a folder for tables": (
        ["--data", "{root}/tasks", "-S", "data.modality=tables"],
        1,
        "{root}/tasks: expected a file for tables, got a folder",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_run_fails_in_one_line_before_any_server(workspace, case):
    args, code, message = CASES[case]
    root = workspace.resolve()
    rc, err, children = _run_cli(root, "run", *(a.format(root=root) for a in args))
    assert rc == code
    assert err.splitlines() == [f"dlops: {message.format(root=root)}"]
    assert children == []  # no server, no worker: nothing was started
    assert not (root / ".prefect-home" / STATE_SUBDIR).exists()
    assert not (root / "data").exists() and not (root / "mlflow.db").exists()


def test_bad_input_does_not_import_the_stack(workspace):
    code = (
        "import sys\n"
        "from flows.cli import main\n"
        "try:\n"
        "    main(['run', '--data', 'missing.csv'])\n"
        "except SystemExit as e:\n"
        "    heavy = ('prefect', 'mlflow', 'torch', 'lightning', 'great_expectations', 'dvc')\n"
        "    print(e.code, sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=workspace, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "1 []"
