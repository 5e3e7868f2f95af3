"""Where a run executes: the checkout itself, or a workspace of its own (hermetic runs).

A run's parameters are params.yaml plus that run's `-S` overrides, and no run writes the
checkout's params.yaml:
- a run without overrides executes in the checkout, exactly as `dvc repro` would;
- a run with overrides executes in `.dlops/workspaces/<key>/`, a git worktree of the checkout
  (`<key>` hashes the canonical overrides, so the same overrides reuse their workspace and an
  unchanged re-run skips every stage). Before each run the workspace receives the checkout's
  working tree (committed and uncommitted code, suites, dvc.yaml) and a params.yaml of its own =
  the checkout's params.yaml + the overrides. It shares the checkout's DVC cache and remote (so
  DVC's run cache serves every workspace) and the embedded MLflow store. A finished run is saved
  as a DVC experiment (`dvc exp show` in the checkout lists it with its params and metrics;
  `dvc exp apply <name>` brings it into the checkout, to be committed like any change);
- a deployment run executes in the fresh clone Prefect's `git_clone` pull step made for it: that
  clone is its workspace (see `in_clone`).
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tasks.config import PARAMS_FILE, Config, canonical_overrides, write_overrides
from tasks.runtime import HOME_VAR

WORKSPACES = Path(".dlops") / "workspaces"
# in a workspace (ignored by git through .dvc/.gitignore): the checkout and overrides it serves
MARKER = ".dvc/tmp/dlops-workspace.json"
# Files a run owns in its workspace: never copied from the checkout, never deleted by a sync.
RUN_OWNED = frozenset({PARAMS_FILE, "dvc.lock"})
SHARED_REMOTE = "dlops-shared"  # a deployment run's remote: DLOPS_DVC_REMOTE


class WorkspaceError(RuntimeError):
    """A workspace cannot be prepared; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class Workspace:
    """A run's working folder and what it was made from."""

    root: Path  # where the stages run
    checkout: Path  # the user's project (DLOPS_HOME)
    overrides: tuple[str, ...]  # canonical `key=value` overrides
    key: str | None  # None: the checkout itself

    @property
    def isolated(self) -> bool:
        """True when the run does not execute in the checkout."""
        return self.root != self.checkout

    @property
    def experiment(self) -> str | None:
        """The DVC experiment name of an isolated run in a git checkout."""
        return f"dlops-{self.key}" if self.key else None


def overrides_key(overrides: list[str]) -> str:
    """A short stable hash of the canonical overrides (the workspace's name)."""
    blob = json.dumps(canonical_overrides(overrides))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _git(cwd: Path, *args: str, check: bool = True) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise WorkspaceError(
            f"git {' '.join(args[:2])} failed in {cwd}: {' '.join(out.stderr.split())[:200]}"
        )
    return out.stdout


def git_head(root: Path) -> str | None:
    """The commit checked out in `root`, or None outside git or before the first commit."""
    if shutil.which("git") is None:
        return None
    out = subprocess.run(
        ["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root, capture_output=True, text=True
    )
    return out.stdout.strip() if out.returncode == 0 else None


def _working_files(root: Path) -> set[str]:
    """Tracked and untracked-but-not-ignored files of a git working tree that exist."""
    listed = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    return {f for f in listed.split("\0") if f and (root / f).is_file()}


def _dvc_settings(checkout: Path) -> tuple[str, dict[str, str], str | None]:
    """The checkout's DVC cache folder, its remotes' URLs (absolute where local), the default."""
    from dvc.repo import Repo

    with Repo(str(checkout)) as repo:
        cache = str(repo.cache.local_cache_dir)
        remotes = {name: str(r["url"]) for name, r in repo.config["remote"].items()}
        default = repo.config["core"].get("remote")
    return cache, remotes, default


def configure_dvc(
    root: Path, cache_dir: str, remotes: dict[str, str], default: str | None = None
) -> None:
    """Point a workspace's DVC at a cache folder and remotes (`.dvc/config.local`)."""
    lines = ["[core]", f"    remote = {default}"] if default else []
    lines += ["[cache]", f"    dir = {cache_dir}"]
    for name, url in sorted(remotes.items()):
        lines += [f"['remote \"{name}\"']", f"    url = {url}"]
    local = root / ".dvc" / "config.local"
    local.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    if not local.is_file() or local.read_text() != text:
        local.write_text(text)


def sync(checkout: Path, root: Path) -> None:
    """Make the workspace's files those of the checkout's working tree (run-owned files aside)."""
    wanted = _working_files(checkout) - RUN_OWNED
    present = _working_files(root) - RUN_OWNED
    for rel in sorted(present - wanted):
        (root / rel).unlink()
    for rel in sorted(wanted):
        src, dst = checkout / rel, root / rel
        if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.sync.tmp")
        shutil.copy2(src, tmp)
        tmp.replace(dst)


def _create(checkout: Path, root: Path, head: str) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists() and not (root / ".git").exists():
        shutil.rmtree(root)  # a copy cut short before git made it a worktree
    if not root.exists():
        _git(checkout, "worktree", "prune")
        try:
            _git(checkout, "worktree", "add", "--detach", "--force", str(root), head)
        except WorkspaceError:
            if not (root / ".git").exists():  # not a concurrent run that made it first
                raise


def prepare(checkout: str | Path, overrides: list[str]) -> Workspace:
    """The workspace of a run: the checkout when there are no overrides, else its own worktree.

    Validates the overrides first (ConfigError, nothing written), then makes sure the workspace
    exists and uses the checkout's DVC cache and remotes. Its files are refreshed by `refresh`,
    under the run's DVC lock. The checkout is never modified.
    """
    from tasks.config import load_config

    checkout = Path(checkout).resolve()
    canon = tuple(canonical_overrides(list(overrides)))
    # refuse bad overrides before any write (messages name params.yaml as the user sees it)
    shown = PARAMS_FILE if Path.cwd().resolve() == checkout else checkout / PARAMS_FILE
    load_config(shown, list(canon))
    if not canon:
        return Workspace(checkout, checkout, (), None)
    head = git_head(checkout)
    if head is None:
        raise WorkspaceError(
            f"{checkout}: runs with -S/--data execute in a git worktree of the project, but it "
            "is not a git repository with a commit (run `git init && git add -A && git commit`)"
        )
    key = overrides_key(list(canon))
    root = checkout / WORKSPACES / key
    _create(checkout, root, head)
    configure_dvc(root, *_dvc_settings(checkout))
    return Workspace(root, checkout, canon, key)


def refresh(ws: Workspace) -> None:
    """Give an isolated workspace the checkout's files and its own params.yaml (under its lock).

    The workspace's baseline commit follows the checkout's HEAD; its files are the checkout's
    working tree (uncommitted changes included) except params.yaml = the checkout's params.yaml
    + the overrides, and the run's own dvc.lock.
    """
    if not ws.isolated:
        return
    head = git_head(ws.checkout)
    if head is not None and git_head(ws.root) != head:
        _git(ws.root, "reset", "-q", "--mixed", head)
    sync(ws.checkout, ws.root)
    write_overrides(ws.root / PARAMS_FILE, list(ws.overrides), source=ws.checkout / PARAMS_FILE)
    marker = {"checkout": str(ws.checkout), "overrides": list(ws.overrides), "key": ws.key}
    (ws.root / MARKER).parent.mkdir(parents=True, exist_ok=True)
    (ws.root / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def in_clone(root: str | Path, overrides: list[str]) -> Workspace:
    """A deployment run's workspace: the fresh clone it runs in, its params.yaml overridden.

    The clone belongs to this run alone (Prefect's process worker makes a temporary folder per
    flow run, and `git_clone` clones into it), so writing its params.yaml leaks nowhere. DVC
    there uses the shared cache and remote named by `DLOPS_DVC_CACHE` / `DLOPS_DVC_REMOTE`.
    """
    root = Path(root).resolve()
    canon = tuple(canonical_overrides(list(overrides)))
    write_overrides(root / PARAMS_FILE, list(canon))
    cache = os.environ.get("DLOPS_DVC_CACHE")
    remote = os.environ.get("DLOPS_DVC_REMOTE")
    if cache or remote:
        own_cache, remotes, default = _dvc_settings(root)
        if remote:  # the team's remote is where this run's outputs go
            remotes, default = {**remotes, SHARED_REMOTE: remote}, SHARED_REMOTE
        configure_dvc(root, cache or own_cache, remotes, default)
    return Workspace(root, root, canon, overrides_key(list(canon)) if canon else None)


@contextlib.contextmanager
def entered(ws: Workspace) -> Iterator[Workspace]:
    """Run inside the workspace (cwd), the checkout as DLOPS_HOME; restore both afterwards."""
    before = Path.cwd()
    home = os.environ.get(HOME_VAR)
    os.environ[HOME_VAR] = str(ws.checkout)
    os.chdir(ws.root)
    try:
        yield ws
    finally:
        os.chdir(before)
        if home is None:
            os.environ.pop(HOME_VAR, None)
        else:
            os.environ[HOME_VAR] = home


def copy_back_new(ws: Workspace, folder: str) -> list[Path]:
    """Files a run created under `folder` (new GX suites) copied into the checkout for review."""
    if not ws.isolated:
        return []
    src_dir = ws.root / folder
    copied = []
    for src in sorted(p for p in src_dir.rglob("*") if p.is_file()) if src_dir.is_dir() else []:
        dst = ws.checkout / src.relative_to(ws.root)
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            copied.append(dst)
    return copied


def save_experiment(ws: Workspace, cfg: Config, new_files: list[Path] = ()) -> str | None:
    """Save a finished isolated run as a DVC experiment; returns its name (None: not saved).

    The experiment holds the run's code, params.yaml, dvc.lock, metrics and `new_files` (the
    suites it inferred, also copied into the checkout for review).

    Called after the run released its DVC lock: DVC's experiment executor opens the repository
    (and takes its lock) itself.
    """
    if not ws.isolated or ws.experiment is None or git_head(ws.root) is None:
        return None
    from dvc.repo import Repo

    metrics = [cfg.paths.metrics, cfg.paths.train_metrics]
    keep = [m for m in metrics if (ws.root / m).is_file()]
    keep += [str(p.relative_to(ws.checkout)) for p in new_files]  # new suites, for review
    with Repo(str(ws.root)) as repo:
        repo.experiments.save(name=ws.experiment, force=True, include_untracked=keep)
    return ws.experiment


def push_outputs(ws: Workspace) -> int:
    """Push the run's DVC outputs to the configured remote (deployment runs: the shared one)."""
    from dvc.repo import Repo

    with Repo(str(ws.root)) as repo:
        if not repo.config["remote"]:
            return 0
        return int(repo.push())
