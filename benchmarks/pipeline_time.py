"""Time the default pipeline twice in a fresh git + DVC copy of this project.

Prints each stage's time, the total wall time of `dlops run` (process start, Prefect's temporary
server and all), the test accuracy, and the time of a second run with nothing changed.
Usage: python benchmarks/pipeline_time.py [--keep] [-S key=value ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = ["params.yaml", "dvc.yaml", ".dvcignore", ".gitignore", "tasks", "models", "flows"]


def _sh(*args: str, cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)


def make_copy(dest: Path) -> None:
    for name in FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    bin_dir = Path(sys.executable).parent
    _sh("git", "init", "-q", cwd=dest)
    _sh("git", "-c", "user.email=b@dlops.invalid", "-c", "user.name=bench", "add", "-A", cwd=dest)
    _sh(str(bin_dir / "dvc"), "init", "-q", cwd=dest)
    _sh(str(bin_dir / "dvc"), "config", "core.analytics", "false", cwd=dest)
    _sh(
        "git",
        "-c",
        "user.email=b@dlops.invalid",
        "-c",
        "user.name=bench",
        "commit",
        "-qam",
        "bench",
        cwd=dest,
    )


def timed_run(dest: Path, overrides: list[str]) -> tuple[float, dict]:
    dlops = str(Path(sys.executable).parent / "dlops")
    cmd = [dlops, "run", "--json"] + [a for o in overrides for a in ("-S", o)]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"dlops run failed ({out.returncode}):\n{out.stderr[-3000:]}")
    text = out.stdout
    return wall, json.loads(text[text.index("{\n") :])


def report(label: str, wall: float, result: dict) -> None:
    print(f"\n{label}: wall {wall:.1f} s (flow body {result['total_seconds']:.1f} s)")
    for s in result["stages"]:
        print(f"  {s['name']:<11} {s['outcome']:<9} {s['seconds']:7.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the temporary project")
    parser.add_argument("-S", "--set", action="append", default=[])
    args = parser.parse_args()
    dest = Path(tempfile.mkdtemp(prefix="dlops-bench-"))
    try:
        make_copy(dest)
        wall1, first = timed_run(dest, args.set)
        wall2, second = timed_run(dest, [])
        report("first run", wall1, first)
        report("second run (nothing changed)", wall2, second)
        m = first["metrics"]
        print(
            f"\ntest accuracy {m['accuracy']:.4f}  f1_macro {m['f1_macro']:.4f}  "
            f"roc_auc_ovr {m['roc_auc_ovr']:.4f}  (n_test {m['n_test']})"
        )
        print(
            f"model {first['model']['name']} v{first['model']['version']}; "
            f"second run version {second['model']['version']}"
        )
        print(f"total first {wall1:.1f} s, second {wall2:.1f} s, ratio {wall2 / wall1:.2f}")
    finally:
        if args.keep:
            print(f"kept {dest}")
        else:
            shutil.rmtree(dest, ignore_errors=True)


if __name__ == "__main__":
    main()
