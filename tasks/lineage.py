"""Lineage of a model version: git commit, DVC data hashes, params hash, study, validation."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tasks import runtime
from tasks.config import PARAMS_FILE, Config
from tasks.redact import redact
from tasks.utils import read_json


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def git_info() -> dict[str, str]:
    """The commit of the working tree and whether tracked files differ from it.

    A run's own files do not count: its workspace's params.yaml (the checkout's + the run's
    overrides, recorded as `params.overrides`) and dvc.lock. Uncommitted edits of the checkout's
    params.yaml do.
    """
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"git.commit": "none", "git.dirty": "unknown"}
    own = (f":!{PARAMS_FILE}", ":!dvc.lock")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", *own))
    home = runtime.home()
    params_edited = _git("-C", str(home), "diff", "--quiet", "HEAD", "--", PARAMS_FILE) is None
    return {"git.commit": commit, "git.dirty": str(dirty or params_edited).lower()}


def dvc_hashes(lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """`dvc.<stage>.<out>` -> md5 for the data outputs recorded in dvc.lock."""
    path = Path(lock_path)
    if not path.is_file():
        return {}
    lock = yaml.safe_load(path.read_text()) or {}
    tags = {}
    for stage in ("ingest", "preprocess", "train"):
        for out in lock.get("stages", {}).get(stage, {}).get("outs", []):
            tags[f"dvc.{stage}.{out['path']}"] = str(out.get("md5", ""))
    return tags


def collect(
    cfg: Config, flow_run_id: str | None = None, overrides: list[str] | None = None
) -> dict[str, str]:
    """Every lineage tag a registered version carries (URLs redacted)."""
    tags = {**git_info(), **dvc_hashes()}
    tags["params.overrides"] = redact(json.dumps(list(overrides or [])))
    tags["params.hash"] = cfg.params_hash()
    tags["augment.hash"] = cfg.section_hash("preprocess.augment")
    manifest = Path(cfg.paths.raw_dir) / "manifest.json"
    if manifest.is_file():
        m = read_json(manifest)
        for key in ("source", "sha256", "modality", "task"):
            tags[f"data.{key}"] = redact(str(m.get(key)))
    best = Path(cfg.paths.best_params)
    if best.is_file():
        info = read_json(best)
        tags["optuna.study"] = str(info.get("study"))
        tags["optuna.best_trial"] = str(info.get("best_trial"))
    result = Path(cfg.paths.validation_dir) / "result.json"
    if result.is_file():
        tags["validation.success"] = str(bool(read_json(result).get("success"))).lower()
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    return tags
