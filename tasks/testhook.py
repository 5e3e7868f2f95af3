"""A test-only hook: pause a run at a named point so a test can kill it there (or let it go on).

Set `DLOPS_TEST_PAUSE_AT=<point>` and the run, on reaching that point, writes
`DLOPS_TEST_PAUSE_FILE` (default `.dvc/tmp/dlops-test-paused.json` under the current folder:
the point's name and the process id) and waits until that file is deleted, then carries on.
tests/integration/test_faults.py uses it to SIGKILL `dlops run` inside each stage and to hold
one run while a second one starts. Unset (always, outside tests), `pause_point` does nothing.

Points: `ingest`, `suite`, `validate`, `preprocess`, `evaluate` (the start of the stage's task);
`tune`, `train` (the end of the first epoch: the stage's MLflow runs are open, a checkpoint
written); `register` (the pyfunc logged, no version registered yet); `promote` (the decision
tags written, @champion not moved yet).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

PAUSE_AT = "DLOPS_TEST_PAUSE_AT"
PAUSE_FILE = "DLOPS_TEST_PAUSE_FILE"
DEFAULT_FILE = ".dvc/tmp/dlops-test-paused.json"


def pause_point(name: str) -> None:
    """Wait here while the test holds the pause file, when `DLOPS_TEST_PAUSE_AT` names `name`."""
    if os.environ.get(PAUSE_AT) != name:
        return
    path = Path(os.environ.get(PAUSE_FILE) or DEFAULT_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"point": name, "pid": os.getpid()}))
    tmp.replace(path)
    os.environ.pop(PAUSE_AT)  # once per process: a retried task does not pause again
    while path.exists():
        time.sleep(0.05)
