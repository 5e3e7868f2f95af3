"""Every speed figure of dlops in one run, side by side: `make bench` (`--quick`: < 3 min).

Each repeat works in a fresh `git clone` of this checkout (committed code; a `dvc init`-ed
project as a user gets it) and measures, as subprocesses, the wall time of:
- the first `dlops run` (wall and flow body, test accuracy, peak RSS of the pipeline process);
- a second `dlops run` with nothing changed, and `dvc repro` with nothing changed;
- the one-line error of a bad `--data`, a bad `-S` and a missing source file;
- the same params.yaml change run by `dlops run` and by `dvc repro` (two copies of the project);
- the stages' `run()` functions called directly in one process (no Prefect, no DVC record):
  the flow body over it is the orchestration overhead;
- `dlops --help`; and training vs a hand-written loop (benchmarks/train_overhead.py).
Medians over `--repeats` (3; `--quick`: 1, with a tiny tuning/training budget committed into
the clone: its run rows are not comparable with the goals). The bench has a Prefect home of its
own (`PREFECT_HOME`), whose database a timed first `dlops server start` migrates (once per
machine); each repeat's first run then starts that stopped server again, and the repeat stops
it (`dlops server stop`) at its end.
Prints the table and writes it as JSON (`--json`, default reports/bench.json); `--baseline
OLD.json` adds the figures of an earlier bench as a column. Never asserted in tests.
Usage: python benchmarks/bench.py [--quick] [--repeats 3] [--json PATH] [--baseline PATH]
       [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GIT_ID = ["-c", "user.email=bench@dlops.invalid", "-c", "user.name=bench"]
# --quick: a budget small enough for < 3 minutes on two cores (committed into the clone, so that
# runs execute in the checkout as the default ones do)
QUICK = {"tune.n_trials": 2, "tune.max_epochs": 2, "train.max_epochs": 3, "train.patience": 2}
CHANGE = ("train.patience", 5)  # the change both `dlops run` and `dvc repro` re-run (train on)

# (key, label, unit, the figure before this work, the goal) in the order printed
ROWS = [
    ("server_first_start", "Prefect server's first start (once)", "s", "", ""),
    ("first_wall", "first dlops run (wall)", "s", "85-110", "<= 40"),
    ("first_body", "first dlops run (flow body)", "s", "59-63", "<= 30"),
    ("first_accuracy", "first run test accuracy", "", "0.99", ">= 0.99"),
    ("first_peak_rss", "peak RSS of the pipeline", "MiB", "", ""),
    ("second_wall", "second dlops run, nothing changed", "s", "17", "<= 5"),
    ("second_body", "second dlops run (flow body)", "s", "4.3", ""),
    ("repro_noop", "dvc repro, nothing changed", "s", "5.4", "<= 3"),
    ("error_data", "bad --data (missing file) -> error", "s", "14-17", "<= 2"),
    ("error_set", "bad -S key -> error", "s", "14-17", "<= 2"),
    ("error_missing", "-S data.source=<missing file> -> error", "s", "14-17", "<= 2"),
    ("help", "dlops --help", "s", "0.05", "<= 0.5"),
    ("direct_body", "stage functions called directly", "s", "", ""),
    ("overhead_ratio", "flow body / direct stages", "x", "", ""),
    ("change_dlops", "dlops run after a params change", "s", "", ""),
    ("change_repro", "dvc repro after the same change", "s", "", ""),
    ("train_ratio", "training / hand-written loop", "x", "1.18-1.20", "<= 1.05"),
    ("train_ratio_ckpt", "same, with checkpoints + early stop", "x", "1.37", ""),
    ("train_extra", "training overhead per epoch", "s/epoch", "+0.034", "<= +0.03"),
]


def _env(project: Path) -> dict[str, str]:
    """A user's environment in `project`: the venv first on PATH, no server configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_"))}
    env.pop("DLOPS_HOME", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(project)  # the clone's code, as its own checkout would run it
    return env


def timed(cmd: list[str], cwd: Path, check: bool = True) -> dict[str, Any]:
    """Run `cmd`; wall seconds, exit code, output and the peak RSS of the process (MiB)."""
    out_f, err_f = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(cwd), stdout=out_f, stderr=err_f, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out_f.seek(0), err_f.seek(0)
    result = {
        "wall": wall,
        "rc": proc.returncode,
        "stdout": out_f.read(),
        "stderr": err_f.read(),
        "rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
    }
    if check and proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({proc.returncode}):\n{result['stderr'][-3000:]}")
    return result


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *GIT_ID, *args], cwd=cwd, check=True, capture_output=True)


def make_clone(dest: Path, budget: dict[str, Any]) -> None:
    """A fresh clone of this checkout's HEAD; `budget` committed into its params.yaml."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True, capture_output=True)
    if not (dest / ".dvc").is_dir():
        subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=dest, check=True)
        _git("add", "-A", cwd=dest)
        _git("commit", "-qm", "dvc init", cwd=dest)
    if budget:
        set_params(dest, budget)
        _git("commit", "-qam", "bench budget", cwd=dest)


def set_params(project: Path, values: dict[str, Any]) -> None:
    """Edit params.yaml in place as a user would (comments kept)."""
    code = (
        "import sys, json; from tasks.config import write_overrides; "
        "write_overrides('params.yaml', [f'{k}={v}' for k, v in json.loads(sys.argv[1]).items()])"
    )
    subprocess.run(
        [sys.executable, "-c", code, json.dumps(values)],
        cwd=project,
        env=_env(project),
        check=True,
        capture_output=True,
    )


def dlops_run(project: Path) -> dict[str, Any]:
    """`dlops run --json` in `project`: wall, flow body, accuracy, peak RSS."""
    r = timed([str(BIN / "dlops"), "run", "--json"], project)
    text = r["stdout"]
    result = json.loads(text[text.index("{\n") :])
    return {
        "wall": r["wall"],
        "body": result["total_seconds"],
        "accuracy": result["metrics"].get("accuracy"),
        "rss_mib": r["rss_mib"],
        "stages": {s["name"]: [s["outcome"], s["seconds"]] for s in result["stages"]},
    }


def error_time(project: Path, *args: str) -> dict[str, Any]:
    """Seconds to the one-line error of a bad `dlops run`."""
    r = timed([str(BIN / "dlops"), "run", *args], project, check=False)
    lines = r["stderr"].strip().splitlines()
    return {"wall": r["wall"], "rc": r["rc"], "lines": len(lines), "message": lines[-1:]}


def direct(project: Path) -> float:
    """The stages' run() functions in one fresh process, as the flow calls them (seconds)."""
    r = timed([sys.executable, str(Path(__file__).resolve()), "--direct"], project)
    return float(r["stdout"].strip().splitlines()[-1])


def _direct_main() -> None:
    """`--direct`: in the current project, every stage once, timed (no Prefect, no DVC)."""
    start = time.perf_counter()
    from tasks import (
        evaluate,
        ingest,
        lineage,
        preprocess,
        promote,
        register,
        tracking,
        train,
        tune,
        validate,
    )
    from tasks.config import load_config
    from tasks.runtime import setup

    setup(Path.cwd())
    cfg = load_config()
    parent = tracking.start_run(cfg.register_.experiment, "pipeline", tags={"bench": "direct"})
    ingest.run(cfg)
    validate.init_suite(cfg, mlflow_run_id=parent)
    validate.run(cfg, mlflow_run_id=parent)
    preprocess.run(cfg)
    tune.run(cfg, parent_run_id=parent)
    train.run(cfg, parent_run_id=parent)
    evaluate.run(cfg)
    promote.check_compatible(cfg, cfg.model_name)
    reg = register.run(cfg, lineage.collect(cfg, None, overrides=[]), parent_run_id=parent)
    promote.run(cfg, reg.name, reg.version)
    tracking.end_run(parent)
    print(f"{time.perf_counter() - start:.3f}")


def stop_server(project: Path) -> None:
    """Stop the local Prefect server this repeat's runs started (and its children)."""
    timed([str(BIN / "dlops"), "server", "stop"], project, check=False)


def one_repeat(root: Path, quick: bool, log: Any) -> dict[str, Any]:
    """Every project-level figure once, in fresh clones under `root`."""
    budget = QUICK if quick else {}
    a, b = root / "a", root / "b"
    make_clone(a, budget)
    fig: dict[str, Any] = {}
    try:
        fig["help"] = timed([str(BIN / "dlops"), "--help"], a)["wall"]
        for key, args in (
            ("error_data", ["--data", "missing.csv"]),
            ("error_set", ["-S", "bad.key=1"]),
            ("error_missing", ["-S", f"data.source={a / 'nope.csv'}"]),
        ):
            e = error_time(a, *args)
            fig[key] = e["wall"]
            log(f"  {key}: {e['wall']:.2f} s, exit {e['rc']}, {e['lines']} line(s) {e['message']}")
        first = dlops_run(a)
        fig.update(
            first_wall=first["wall"],
            first_body=first["body"],
            first_accuracy=first["accuracy"],
            first_peak_rss=first["rss_mib"],
        )
        log(f"  first run: {first['wall']:.1f} s (body {first['body']:.1f} s) {first['stages']}")
        second = dlops_run(a)
        fig.update(second_wall=second["wall"], second_body=second["body"])
        log(f"  second run: {second['wall']:.1f} s (body {second['body']:.1f} s)")
        fig["repro_noop"] = timed([str(BIN / "dvc"), "repro"], a)["wall"]
        log(f"  dvc repro no-op: {fig['repro_noop']:.1f} s")
        # the same change in two copies of the same state: one by the flow, one by dvc repro
        shutil.copytree(a, b, symlinks=True)
        for project in (a, b):
            set_params(project, {CHANGE[0]: CHANGE[1]})
        fig["change_dlops"] = dlops_run(a)["wall"]
        fig["change_repro"] = timed([str(BIN / "dvc"), "repro"], b)["wall"]
        changed = f"dlops run {fig['change_dlops']:.1f} s, dvc repro {fig['change_repro']:.1f} s"
        log(f"  change {CHANGE[0]}={CHANGE[1]}: {changed}")
    finally:
        stop_server(a)
    c = root / "c"
    make_clone(c, budget)
    fig["direct_body"] = direct(c)
    fig["overhead_ratio"] = fig["first_body"] / fig["direct_body"]
    log(f"  stages called directly: {fig['direct_body']:.1f} s")
    return fig


def train_overhead(quick: bool) -> dict[str, float]:
    """benchmarks/train_overhead.py's ratios (median) and extra seconds per epoch."""
    epochs, repeats = ("3", "1") if quick else ("10", "3")
    with tempfile.TemporaryDirectory(prefix="dlops-bench-") as tmp:
        r = timed(
            [
                sys.executable,
                str(REPO / "benchmarks/train_overhead.py"),
                "--epochs",
                epochs,
                "--repeats",
                repeats,
            ],
            Path(tmp),
        )
    out: dict[str, float] = {}
    for name, key in (("dlops", "train_ratio"), ("dlops\\+ckpt\\+es", "train_ratio_ckpt")):
        m = re.search(
            rf"ratio {name}/plain: median ([\d.]+) \(([+-][\d.]+) s/epoch\)", r["stdout"]
        )
        if m:
            out[key] = float(m.group(1))
            if key == "train_ratio":
                out["train_extra"] = float(m.group(2))
    return out


def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "MiB":
        return f"{value:.0f}"
    if unit == "s/epoch":
        return f"{value:+.3f}"
    if unit in ("", "x"):
        return f"{value:.3f}" if unit == "x" else f"{value:.4f}"
    return f"{value:.2f}"


def table(median: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    """The figures side by side: before (the issue's), goal, now, and an earlier bench."""
    head = ["what", "unit", "before", "goal", "now (median)"] + (["baseline"] if baseline else [])
    rows = [head]
    for key, label, unit, before, goal in ROWS:
        row = [label, unit, before, goal, _fmt(median.get(key), unit)]
        if baseline:
            row.append(_fmt(baseline.get(key), unit))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    """Measure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one repeat, tiny budget, < 3 min")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument("--json", type=Path, default=REPO / "reports" / "bench.json")
    parser.add_argument("--baseline", type=Path, help="an earlier bench JSON, shown beside")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clones")
    parser.add_argument("--skip-train", action="store_true", help="no training-overhead rows")
    parser.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.direct:
        _direct_main()
        return
    repeats = args.repeats or (1 if args.quick else 3)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = time.perf_counter()
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    # A Prefect home of the bench's own: the local server dlops starts is never the user's.
    # Its first start ever migrates a new database (once per machine): timed apart, so that
    # each repeat's first run starts the (stopped) server on a migrated database.
    prefect_home = Path(tempfile.mkdtemp(prefix="dlops-bench-prefect-"))
    os.environ["PREFECT_HOME"] = str(prefect_home)
    first_start = timed([str(BIN / "dlops"), "server", "start"], REPO)["wall"]
    stop_server(REPO)
    log(f"Prefect server's first start (new database): {first_start:.1f} s")
    for i in range(repeats):
        root = Path(tempfile.mkdtemp(prefix="dlops-bench-"))
        log(f"repeat {i + 1}/{repeats} in {root}")
        try:
            runs.append(one_repeat(root, args.quick, log))
        finally:
            if args.keep:
                log(f"  kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(prefect_home, ignore_errors=True)
    for r in runs:
        r["server_first_start"] = first_start
    if not args.skip_train:
        log("training overhead (benchmarks/train_overhead.py)")
        train = train_overhead(args.quick)
        for r in runs:
            r.update(train)
    median = {
        k: statistics.median(r[k] for r in runs if r.get(k) is not None)
        for k in {k for r in runs for k in r}
    }
    baseline = json.loads(args.baseline.read_text())["median"] if args.baseline else None
    print(table(median, baseline))
    info = {
        "quick": args.quick,
        "budget": QUICK if args.quick else "params.yaml as committed",
        "repeats": repeats,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(
        f"\n{repeats} repeat(s){' (--quick: tiny budget)' if args.quick else ''}, "
        f"{info['cpus']} CPUs, load average before {load_before[0]:.2f}, after "
        f"{info['loadavg_after'][0]:.2f}; {info['seconds']:.0f} s; commit {info['commit']}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"info": info, "median": median, "runs": runs}, indent=2))
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
