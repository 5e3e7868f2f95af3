"""`dvc repro` looks at the source every time, but re-ingests only a changed source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tasks.config import write_overrides

DVC = str(Path(sys.executable).parent / "dvc")


def _repro_ingest(root: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(
        [DVC, "repro", "ingest"], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout


def _raw_md5(root: Path) -> str:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]["ingest"]["outs"][0]["md5"]


def test_unchanged_source_is_not_rewritten_and_a_changed_one_is(dvc_project):
    root = dvc_project
    src = root.parent / f"{root.name}-src.csv"
    rows = "\n".join(f"{i},{i % 3},{i % 2}" for i in range(60))
    src.write_text(f"a,b,target\n{rows}\n")
    write_overrides("params.yaml", [f"data.source={src}"])
    _repro_ingest(root)
    data = root / "data/raw/data.csv"
    first_md5, first_inode = _raw_md5(root), data.stat().st_ino

    _repro_ingest(root)  # the same content: the raw folder is left as it was
    assert _raw_md5(root) == first_md5 and data.stat().st_ino == first_inode

    src.write_text(f"a,b,target\n{rows}\n99,1,1\n")  # the source changed outside the repo
    _repro_ingest(root)
    assert _raw_md5(root) != first_md5
    assert data.read_text().endswith("99,1,1\n")


def test_flow_skips_a_builtin_ingest_whose_code_params_and_outputs_are_unchanged(dvc_project):
    from flows.dvc_record import Outcome, Recorder
    from tasks import ingest
    from tasks.config import load_config

    cfg = load_config("params.yaml")  # digits: a built-in, no source outside the repository
    calls: list[int] = []
    with Recorder(dvc_project) as r:
        assert r.reproduce("ingest", lambda: ingest.run(cfg), deterministic=True)[0] is Outcome.RAN
        outcome, _ = r.reproduce("ingest", lambda: calls.append(1), deterministic=True)
        assert outcome is Outcome.SKIPPED and calls == []
        # without the flag (a user's source) ingest looks every time: always_changed
        assert r.reproduce("ingest", lambda: calls.append(1))[0] is Outcome.RAN and calls == [1]
    write_overrides("params.yaml", ["data.max_files=100000"])  # the data section changed
    with Recorder(dvc_project) as r:
        cfg = load_config("params.yaml")
        assert r.reproduce("ingest", lambda: ingest.run(cfg), deterministic=True)[0] is Outcome.RAN
