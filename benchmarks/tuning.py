"""Tuning figures, side by side: trials/minute with 2 workers vs 1, and what pruning saves.

1. Throughput: the same study settings (digits, no pruning, fixed epochs per trial) with
   `tune.workers` 1 and 2, each in a fresh journal file; trials/minute over the stage's wall
   time (worker start included) and over the trials' own span (first start to last end).
   Goal on this 2-core machine: 2 workers >= 1.8x.
2. Pruning: no pruning vs median vs Hyperband, same trial budget and seed, on digits and the
   waveforms built-in: total training epochs spent, wall time, best val/loss.
   Goal: Hyperband's best within 0.5% of the unpruned best with <= 1/3 of the epochs.
Every run is a real tune stage (tasks.tune.run): journal storage, nested MLflow runs in a
temporary SQLite store.
Usage: python benchmarks/tuning.py [--quick] [--trials N] [--epochs E] [--min-steps S]
(a worker process starts in ~5 s: with ~1 s trials, as the built-ins' defaults give, a second
worker cannot pay; `--min-steps 1000` makes trials long enough to measure the parallelism)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# run as a script, this folder comes first on sys.path and benchmarks/model_quality.py would shadow
# the models package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path.insert(0, str(REPO))


def prepare(dest: Path, dataset: str) -> Any:
    """Ingest and preprocess a built-in into `dest` (the working directory and DLOPS_HOME)."""
    from tasks import ingest, preprocess
    from tasks.config import load_config

    dest.mkdir(parents=True, exist_ok=True)
    os.chdir(dest)
    os.environ["DLOPS_HOME"] = str(dest)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{dest / 'mlflow.db'}"
    cfg = load_config(
        REPO / "params.yaml",
        [f"data.dataset={dataset}", "tune.timeout_s=null", "tune.storage=journal"],
    )
    ingest.run(cfg)
    preprocess.run(cfg)
    return cfg


def tune_once(cfg: Any, home: Path, **values: Any) -> dict[str, Any]:
    """One tune stage in a fresh journal under `home`; its figures."""
    import optuna

    from tasks import optuna_storage, tune

    home.mkdir(parents=True, exist_ok=True)
    os.environ["DLOPS_HOME"] = str(home)  # the journal (and so the study) is new
    run_cfg = cfg.with_values({f"tune.{k}": v for k, v in values.items()})
    start = time.perf_counter()
    r = tune.run(run_cfg)
    wall = time.perf_counter() - start
    study = optuna.load_study(
        study_name=r.study_name, storage=optuna_storage.resolve(run_cfg).open()
    )
    trials = [t for t in study.trials if t.state.is_finished()]
    span = max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
    return {
        "trials": len(trials),
        "wall": wall,
        "span": span.total_seconds(),
        "epochs": sum(int(t.user_attrs.get("epochs", 0)) for t in trials),
        "best": r.best_value,
        "pruned": r.n_pruned,
    }


def throughput(root: Path, trials: int, epochs: int, min_steps: int | None) -> None:
    """Trials/minute with 1 and 2 workers, same study settings."""
    cfg = prepare(root / "digits", "digits")
    if min_steps is not None:  # longer trials: a worker's start (~5 s) matters less
        cfg = cfg.with_values({"tune.min_steps": min_steps})
    # this process's imports are paid before timing (a second worker's are part of its cost)
    tune_once(cfg, root / "warm-up", workers=1, n_trials=1, max_epochs=1, pruner="none")
    rows = {}
    for workers in (1, 2):
        rows[workers] = tune_once(
            cfg,
            root / f"throughput-{workers}",
            workers=workers,
            n_trials=trials,
            max_epochs=epochs,
            pruner="none",
        )
    steps = cfg.tune.min_steps
    print(
        f"\n## Throughput: digits, {trials} trials x {epochs} epochs (>= {steps} steps), "
        "no pruning"
    )
    print(f"{'workers':>8} {'trials':>7} {'wall s':>8} {'trials/min':>11} {'span-rate':>10}")
    for w, row in rows.items():
        per_min, span_rate = 60 * row["trials"] / row["wall"], 60 * row["trials"] / row["span"]
        print(f"{w:>8} {row['trials']:>7} {row['wall']:>8.1f} {per_min:>11.1f} {span_rate:>10.1f}")
    one, two = rows[1], rows[2]
    print(
        f"2 workers vs 1: {one['wall'] / two['wall']:.2f}x over the wall time, "
        f"{one['span'] / two['span']:.2f}x over the trials' span (goal >= 1.8x)"
    )


def pruning(root: Path, trials: int, epochs: int) -> None:
    """No pruning vs median vs Hyperband on digits and waveforms, same budget and seed."""
    print(f"\n## Pruning: {trials} trials x up to {epochs} epochs, seed 42, 1 worker")
    print(
        f"{'data':>10} {'pruner':>10} {'epochs':>7} {'pruned':>7} {'wall s':>8} "
        f"{'best val/loss':>14}"
    )
    for dataset in ("digits", "waveforms"):
        cfg = prepare(root / dataset, dataset)
        rows = {}
        for pruner in ("none", "median", "hyperband"):
            rows[pruner] = tune_once(
                cfg,
                root / f"prune-{dataset}-{pruner}",
                workers=1,
                n_trials=trials,
                max_epochs=epochs,
                pruner=pruner,
            )
            row = rows[pruner]
            print(
                f"{dataset:>10} {pruner:>10} {row['epochs']:>7} {row['pruned']:>7} "
                f"{row['wall']:>8.1f} {row['best']:>14.4f}"
            )
        base, hb = rows["none"], rows["hyperband"]
        gap = (hb["best"] - base["best"]) / base["best"] * 100
        share = hb["epochs"] / max(base["epochs"], 1)
        print(
            f"{dataset:>10} hyperband vs none: best {gap:+.2f}% (goal <= +0.5%), epochs "
            f"{share:.2f} of unpruned (goal <= 0.33)"
        )


def main() -> None:
    """Run both comparisons and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small budget (sanity check)")
    parser.add_argument("--trials", type=int, help="trials per study")
    parser.add_argument("--epochs", type=int, help="epochs per trial (at most, when pruned)")
    parser.add_argument(
        "--min-steps", type=int, help="throughput: tune.min_steps per trial (default: params)"
    )
    parser.add_argument("--skip", choices=["throughput", "pruning"], help="leave one out")
    args = parser.parse_args()
    trials = args.trials or (6 if args.quick else 24)
    epochs = args.epochs or (4 if args.quick else 12)
    from tasks.runtime import setup

    setup()
    logging.getLogger("dlops").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="dlops-bench-tuning-") as tmp:
        root = Path(tmp)
        if args.skip != "throughput":
            throughput(root, trials, epochs, args.min_steps)
        if args.skip != "pruning":
            pruning(root, max(trials, 8), epochs)
        os.chdir(REPO)


if __name__ == "__main__":
    main()
