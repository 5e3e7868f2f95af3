import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.dvc_record import Outcome, reproduce
from tasks import ingest, preprocess, validate
from tasks.config import load_config, write_overrides

DVC = str(Path(sys.executable).parent / "dvc")


def _cfg():
    return load_config("params.yaml")


def test_stage_is_recorded_skipped_and_restored_like_dvc_repro(dvc_project):
    root = dvc_project
    outcome, value = reproduce(root, "ingest", lambda: ingest.run(_cfg()))
    assert outcome is Outcome.RAN and value.manifest.rows == 1797
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert lock["stages"]["ingest"]["outs"][0]["path"] == "data/raw"
    md5 = lock["stages"]["ingest"]["outs"][0]["md5"]
    assert md5.endswith(".dir")
    assert (root / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).is_file()

    # ingest looks at its source every time (always_changed); the same content, the same out
    assert reproduce(root, "ingest", lambda: ingest.run(_cfg()))[0] is Outcome.RAN
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert lock["stages"]["ingest"]["outs"][0]["md5"] == md5
    assert validate.init_suite(_cfg()).created  # the suite step: validate depends on it
    assert reproduce(root, "validate", lambda: validate.run(_cfg()))[0] is Outcome.RAN
    assert reproduce(root, "validate", lambda: validate.run(_cfg()))[0] is Outcome.SKIPPED
    assert reproduce(root, "preprocess", lambda: preprocess.run(_cfg()))[0] is Outcome.RAN
    first_test = (root / "data/processed/test.npz").read_bytes()

    # dvc itself agrees that nothing is left to do
    status = subprocess.run(
        [DVC, "status", "validate", "preprocess"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "up to date" in status.stdout

    # a changed param re-runs the stage; changing it back restores from DVC's run cache
    write_overrides("params.yaml", ["preprocess.test_size=0.25"])
    assert reproduce(root, "preprocess", lambda: preprocess.run(_cfg()))[0] is Outcome.RAN
    assert (root / "data/processed/test.npz").read_bytes() != first_test
    write_overrides("params.yaml", ["preprocess.test_size=0.2"])
    calls = []
    outcome, _ = reproduce(root, "preprocess", lambda: calls.append(1))
    assert outcome is Outcome.RESTORED and calls == []
    assert (root / "data/processed/test.npz").read_bytes() == first_test


def test_failed_stage_records_nothing(dvc_project):
    root = dvc_project

    def boom():
        raise RuntimeError("stage failed")

    with pytest.raises(RuntimeError, match="stage failed"):
        reproduce(root, "ingest", boom)
    assert not (root / "dvc.lock").exists()
    assert reproduce(root, "ingest", lambda: ingest.run(_cfg()))[0] is Outcome.RAN
