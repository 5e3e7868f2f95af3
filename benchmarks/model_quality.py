"""Old defaults vs new defaults on small-data and long-sequence cases, beside 1-NN baselines.

Every case is GENERATED here (no archive is read): per class, a smooth random prototype; each
example is its prototype under a random time warp, shift and amplitude, plus noise; shapes
like the cases of issue 10 (3 classes x 12 training sequences of 251 steps; 2 classes, 50 x
150; 6 classes, 200 x 427), and the digits built-in. Each run is the pipeline's own stages
(ingest, preprocess, tune, train, evaluate) in a scratch copy of the project, with the defaults
of params.yaml ("new") or with the defaults as they were before issue 10 ("old": cnn1d, epochs
only, no k-fold, no sequence augmentation). Prints test accuracy and wall time side by side.

    .venv/bin/python benchmarks/model_quality.py               # everything
    .venv/bin/python benchmarks/model_quality.py --quick       # 2 trials, 20 s tune
    .venv/bin/python benchmarks/model_quality.py --cases 3c-12x251 --archs fcn resnet1d
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# run as a script, this file's folder comes first on sys.path and its name would shadow the
# `models` package: the project root instead
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path.insert(0, str(REPO))
PROJECT = ["params.yaml", "dvc.yaml", "tasks", "models", "flows"]
# name: (classes, training examples, length, test examples)
CASES = {
    "3c-12x251": (3, 36, 251, 150),
    "2c-50x150": (2, 50, 150, 150),
    "6c-200x427": (6, 200, 427, 180),
}
OLD = [
    "model.arch=cnn1d",
    "train.min_steps=0",
    "tune.min_steps=0",
    "tune.min_val_examples=0",
    "tune.archs={}",
    "preprocess.augment.jitter=0",
    "preprocess.augment.scale=0",
    "preprocess.augment.window=0",
]


def generate(classes: int, n_train: int, length: int, n_test: int, seed: int) -> dict:
    """Warped, shifted, noisy copies of one smooth random prototype per class."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, length)

    def prototype() -> np.ndarray:
        centers = rng.uniform(0.1, 0.9, 4)
        widths = rng.uniform(0.03, 0.12, 4)
        heights = rng.normal(0, 1.5, 4)
        bumps = heights[:, None] * np.exp(
            -((grid[None] - centers[:, None]) ** 2) / widths[:, None] ** 2
        )
        return bumps.sum(0)

    base = prototype()  # what the classes share; each adds a smaller bump pattern of its own
    protos = [base + 0.5 * prototype() for _ in range(classes)]

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % classes
        x = np.empty((n, length), dtype=np.float32)
        for i, c in enumerate(y):
            # a random monotone time warp plus a shift of up to 8% of the length
            knots = np.sort(rng.uniform(0, 1, 3))
            warp = np.interp(grid, [0, *knots, 1], [0, *np.sort(rng.uniform(0, 1, 3)), 1])
            t = 0.6 * grid + 0.4 * warp + rng.uniform(-0.08, 0.08)
            amp = rng.uniform(0.7, 1.3)
            x[i] = amp * np.interp(t, grid, protos[c]) + rng.normal(0, 0.5, length)
        return x, y

    x, y = sample(n_train)
    x_test, y_test = sample(n_test)
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test}


def _znorm(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-8)


def nn1_euclidean(d: dict) -> float:
    """1-NN accuracy, Euclidean distance on z-normalized sequences."""
    a, b = _znorm(d["x_test"]), _znorm(d["x"])
    dist = (a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T
    return float((d["y"][dist.argmin(1)] == d["y_test"]).mean())


def nn1_dtw(d: dict, window: float = 0.1) -> float:
    """1-NN accuracy, DTW with a Sakoe-Chiba band of `window` of the length (z-normalized)."""
    a, b = _znorm(d["x_test"]), _znorm(d["x"])
    t = a.shape[1]
    w = max(1, int(window * t))
    cost = np.full((len(a), len(b), t + 1), np.inf)  # the previous row of the DP, per pair
    cost[:, :, 0] = 0.0
    prev, cur = cost, np.empty_like(cost)
    for i in range(1, t + 1):
        cur.fill(np.inf)
        lo, hi = max(1, i - w), min(t, i + w)
        for j in range(lo, hi + 1):
            c = (a[:, None, i - 1] - b[None, :, j - 1]) ** 2
            best = np.minimum(np.minimum(prev[:, :, j], prev[:, :, j - 1]), cur[:, :, j - 1])
            cur[:, :, j] = c + best
        prev, cur = cur, prev
    return float((d["y"][prev[:, :, t].argmin(1)] == d["y_test"]).mean())


@contextlib.contextmanager
def scratch_project() -> Iterator[Path]:
    """A copy of the project as cwd, with its own SQLite MLflow store and Optuna home."""
    old_cwd, old_env = Path.cwd(), dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="dlops-bench-") as tmp:
        root = Path(tmp)
        for name in PROJECT:
            src = REPO / name
            if src.is_dir():
                shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, root / name)
        os.chdir(root)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        os.environ["DLOPS_HOME"] = str(root)
        try:
            yield root
        finally:
            os.chdir(old_cwd)
            os.environ.clear()
            os.environ.update(old_env)


def pipeline(overrides: list[str]) -> tuple[float, float, str]:
    """(test accuracy, seconds, arch) of ingest -> preprocess -> tune -> train -> evaluate."""
    from tasks import evaluate, ingest, preprocess, train, tune
    from tasks.config import load_config
    from tasks.train import tuned_config

    cfg = load_config("params.yaml", overrides)
    start = time.perf_counter()
    ingest.run(cfg)
    preprocess.run(cfg)
    tune.run(cfg)
    train.run(cfg)
    acc = float(evaluate.run(cfg).metrics["accuracy"])
    return acc, time.perf_counter() - start, tuned_config(cfg).arch


def main() -> None:
    """Print the table."""
    import logging
    import warnings

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="*", default=[*CASES, "digits"])
    parser.add_argument("--quick", action="store_true", help="2 trials, tune.timeout_s=20")
    parser.add_argument("--archs", nargs="*", default=[], help="also the new defaults, arch fixed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-defaults", action="store_true", help="only the --archs columns")
    parser.add_argument("--no-old", action="store_true", help="no column of the old defaults")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    budget = ["tune.n_trials=2", "tune.timeout_s=20"] if args.quick else []
    common = ["tune.storage=memory", "validate.min_rows=20", *budget]
    defaults = [] if args.no_defaults else ["new"] if args.no_old else ["old", "new"]
    cols = [*defaults, *[f"new/{a}" for a in args.archs]]
    print(f"cores: {os.cpu_count()}, load: {os.getloadavg()[0]:.1f}; {' '.join(budget) or 'full'}")
    header = f"{'case':<12}{'1NN-ED':>8}{'1NN-DTW':>9}" + "".join(f"{c:>22}" for c in cols)
    print(header)
    print("-" * len(header))
    for case in args.cases:
        with scratch_project() as root:
            if case == "digits":
                data, ed, dtw = ["data.dataset=digits"], float("nan"), float("nan")
            else:
                arrays = generate(*CASES[case], seed=args.seed)
                np.savez(root / f"{case}.npz", **arrays)
                data = [f"data.source={case}.npz"]
                ed, dtw = nn1_euclidean(arrays), nn1_dtw(arrays)
            cells = []
            for col in cols:
                extra = OLD if col == "old" else []
                if case == "digits" and col == "old":
                    extra = [o for o in OLD if o.startswith(("train.", "tune."))]
                if col.startswith("new/"):
                    extra = [f"model.arch={col.split('/')[1]}"]
                if case == "digits" and col.startswith("new/"):
                    cells.append(f"{'-':>22}")
                    continue
                acc, sec, arch = pipeline([*data, *common, *extra])
                cells.append(f"{acc:>7.3f} {sec:>6.0f}s {arch:>7}")
            print(f"{case:<12}{ed:>8.3f}{dtw:>9.3f}" + "".join(cells), flush=True)
    print("accuracy on the test split, wall seconds of ingest..evaluate, the trained arch")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
