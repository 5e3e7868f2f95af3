"""`dlops run --data X` on bad data, as a user runs it: a subprocess in a git + DVC project.

One case per modality from the bad-data matrix (tests/unit/test_bad_data.py): stderr is exactly
one `dlops: ...` line, the exit code is 1, no traceback anywhere, no tracked file changed and no
model registered.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import git

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _semicolons(root: Path) -> Path:
    rows = "".join(f"{i};{i * 2};{'ab'[i % 2]}\n" for i in range(40))
    (root / "src" / "people.csv").write_text("a;b;label\n" + rows)
    return root / "src" / "people.csv"


def _empty_image(root: Path) -> Path:
    from PIL import Image

    pets = root / "src" / "pets"
    for k, cls in enumerate(("cat", "dog")):
        (pets / cls).mkdir(parents=True)
        for i in range(12):
            pixels = np.random.default_rng(i + 100 * k).integers(0, 255, (8, 8), np.uint8)
            Image.fromarray(pixels).save(pets / cls / f"{i}.png")
    (pets / "cat" / "empty.png").write_bytes(b"")
    return pets


def _nan_labels(root: Path) -> Path:
    rng = np.random.default_rng(0)
    y = (np.arange(60) % 2).astype(np.float64)
    y[:30] = np.nan
    np.savez(root / "src" / "waves.npz", x=rng.normal(size=(60, 16)), y=y)
    return root / "src" / "waves.npz"


CASES = {
    "tables: wrong delimiter": (
        _semicolons,
        ["-S", "data.target=label"],
        "people.csv: one column 'a;b;label': the file looks semicolon-separated",
    ),
    "images: zero-byte image": (
        _empty_image,
        [],
        "validation failed for data/raw/images: expect_column_values_to_be_in_set(decodes): "
        "1 of 25 files do not decode: cat/empty.png (empty file)",
    ),
    "sequences: half the labels missing": (
        _nan_labels,
        [],
        "validation failed for data/raw/data.npz: expect_column_values_to_not_be_null(label): "
        "30 of 60 rows have no target (50.0%), at most 5.0% allowed "
        "(validate.max_missing_target)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dlops_run_on_bad_data_says_one_line_and_changes_nothing(dvc_project, case):
    from mlflow import MlflowClient
    from prefect.settings import PREFECT_API_URL

    root = dvc_project
    (root / "src").mkdir()
    (root / ".gitignore").write_text((root / ".gitignore").read_text() + "/src/\n.dlops/\n")
    git("commit", "-qam", "ignore the sources", cwd=root)
    make, extra, phrase = CASES[case]
    src = make(root)
    before = git("status", "--porcelain", "--untracked-files=all", cwd=root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PREFECT_API_URL": PREFECT_API_URL.value()}
    cmd = [sys.executable, "-m", "flows.cli", "run", "--data", str(src)]
    cmd += ["-S", "validate.min_rows=20", *extra]

    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)

    lines = out.stderr.splitlines()
    assert out.returncode == 1, out.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("dlops: "), out.stderr[-3000:]
    assert phrase in lines[0]
    assert "Traceback" not in out.stdout + out.stderr
    after = git("status", "--porcelain", "--untracked-files=all", cwd=root)
    # a run with --data runs in its own workspace: nothing of it reaches the checkout
    assert after == before
    assert not (root / "dvc.lock").exists()
    assert not (root / "expectations").exists()  # no suite learnt from bad data
    assert MlflowClient(tracking_uri=uri).search_registered_models() == []
