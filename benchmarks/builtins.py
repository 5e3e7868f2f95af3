"""Test metrics of the default params and tuning budget on every built-in data set.

Runs `dlops run -S data.dataset=<name> --json` in a fresh git + DVC copy of this project per
data set (the real CLI, Prefect flow and all) and prints the test metrics and wall times.
Usage: python benchmarks/builtins.py [name ...] [-S key=value ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_time import make_copy  # noqa: E402

BUILTINS = ["digits", "breast_cancer", "wine", "diabetes", "waveforms"]


def main() -> None:
    """Run each built-in and print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=BUILTINS)
    parser.add_argument("-S", "--set", action="append", default=[])
    args = parser.parse_args()
    dlops = str(Path(sys.executable).parent / "dlops")
    rows = []
    for name in args.names:
        with tempfile.TemporaryDirectory(prefix=f"dlops-{name}-") as tmp:
            root = Path(tmp)
            make_copy(root)
            cmd = [dlops, "run", "--json", "-S", f"data.dataset={name}"]
            for s in args.set:
                cmd += ["-S", s]
            start = time.perf_counter()
            out = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if out.returncode != 0:
                print(f"{name}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
                continue
            result = json.loads(out.stdout[out.stdout.index("{") :])
            stages = {s["name"]: s for s in result["stages"]}
            rows.append(
                {
                    "data": name,
                    "modality": stages["ingest"]["detail"]["modality"],
                    "task": stages["ingest"]["detail"]["task"],
                    "arch": json.loads((root / "data/train/model.json").read_text())["arch"],
                    "metrics": {k: round(v, 4) for k, v in result["metrics"].items()},
                    "tune_s": stages["tune"]["seconds"],
                    "train_s": stages["train"]["seconds"],
                    "flow_s": result["total_seconds"],
                    "wall_s": round(wall, 1),
                    "promoted": result["promotion"]["promoted"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
