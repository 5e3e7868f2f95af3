"""Training runtime: resume after SIGKILL, determinism, DDP on two CPU processes, bf16 on CPU.

Every test trains the wine MLP (115 training rows, 8 batches an epoch) in one prepared project
per module, each under its own experiment and output paths; the module's `reference` training is
the uninterrupted, single-process run the others are compared with.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tasks import evaluate, ingest, preprocess, tracking, train, tune
from tasks.config import Config, load_config, write_overrides

EPOCHS = 8
# Early stopping must not end any run before EPOCHS: the kill test needs epochs left to kill.
WINE = [
    "data.dataset=wine",
    f"train.max_epochs={EPOCHS}",
    "train.patience=50",
    "train.batch_size=16",
    "tune.n_trials=1",
    "tune.max_epochs=1",
    # epochs as given, no k-fold (the budget: tests/unit/test_training.py)
    "train.min_steps=0",
    "tune.min_steps=0",
    "tune.min_val_examples=0",
]
METRICS = ("train/loss", "train/acc", "val/loss", "val/acc")


def _env(project: Path, mp: pytest.MonkeyPatch) -> None:
    mp.chdir(project)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)


def config(name: str, *overrides: str) -> Config:
    """params.yaml of the project (WINE) with outputs and experiment of their own."""
    own = [
        f"register.experiment={name}",
        f"paths.checkpoint_dir=runs/{name}/checkpoints",
        f"paths.train_dir=runs/{name}/train",
        f"paths.train_metrics=runs/{name}/train_metrics.json",
        f"paths.best_params=runs/{name}/best_params.json",
        f"paths.metrics=runs/{name}/metrics.json",
        f"paths.plots_dir=runs/{name}/plots",
    ]
    return load_config("params.yaml", [*own, *overrides])


def history(run_id: str, key: str) -> dict[int, set[float]]:
    """A metric's values by step (a step logged twice with the same value shows once)."""
    out: dict[int, set[float]] = {}
    for m in tracking.client().get_metric_history(run_id, key):
        out.setdefault(m.step, set()).add(m.value)
    return out


def points(run_id: str, key: str) -> int:
    """How many times a metric was logged."""
    return len(tracking.client().get_metric_history(run_id, key))


def runs_in(experiment: str) -> list[Any]:
    c = tracking.client()
    return c.search_runs([c.get_experiment_by_name(experiment).experiment_id])


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, _mlflow_template_db: Path) -> Path:
    """A copy of the project with wine ingested and preprocessed, WINE written to params.yaml."""
    from tests.conftest import _copy_project

    root = tmp_path_factory.mktemp("runtime")
    _copy_project(root)
    shutil.copy(_mlflow_template_db, root / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        _env(root, mp)
        cfg = write_overrides("params.yaml", WINE)
        ingest.run(cfg)
        preprocess.run(cfg)
    return root


@pytest.fixture
def wine(project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The prepared project as cwd, with its MLflow store."""
    import mlflow

    _env(project, monkeypatch)
    yield project
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture(scope="module")
def reference(project: Path) -> dict[str, Any]:
    """The uninterrupted single-process training: result, test metrics, metric histories."""
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        _env(project, mp)
        cfg = config("reference")
        r = train.run(cfg)
        out = {
            "result": r,
            "train_metrics": json.loads(Path(cfg.paths.train_metrics).read_text()),
            "test": evaluate.run(cfg).metrics,
            "history": {k: history(r.run_id, k) for k in METRICS},
        }
        mlflow.set_tracking_uri(None)
    return out


def test_reference_logs_each_epoch_once(wine: Path, reference: dict[str, Any]) -> None:
    r = reference["result"]
    assert r.epochs == EPOCHS and r.resumed_from_epoch is None
    assert 0 <= r.best_epoch < EPOCHS
    for key in METRICS:
        assert len(reference["history"][key]) == points(r.run_id, key) == EPOCHS, key
    assert reference["train_metrics"]["epochs"] == EPOCHS
    assert reference["test"]["accuracy"] > 0.8
    # last.ckpt is written every epoch, not only in epochs that improve val/loss
    last = torch.load(r.train_dir / "last.ckpt", weights_only=True)
    assert last["epoch"] == EPOCHS - 1


def test_same_seed_and_params_give_identical_metrics(
    wine: Path, reference: dict[str, Any]
) -> None:
    cfg = config("again")
    r = train.run(cfg)
    ref = reference["result"]
    assert r.run_id != ref.run_id
    assert (r.best_val_loss, r.best_val_metric, r.best_epoch) == (
        ref.best_val_loss,
        ref.best_val_metric,
        ref.best_epoch,
    )
    assert evaluate.run(cfg).metrics == reference["test"]
    for key in METRICS:
        assert history(r.run_id, key) == reference["history"][key], key


def test_resumable_checks_fingerprint_and_checkpoint(
    wine: Path, reference: dict[str, Any]
) -> None:
    cfg = config("fingerprint")
    ckpt_dir = Path(cfg.paths.checkpoint_dir)
    messages: list[str] = []
    assert train.resumable(cfg, messages.append) == (None, None)
    assert "nothing to resume" in messages[-1]

    ckpt_dir.mkdir(parents=True)
    shutil.copy(reference["result"].train_dir / "last.ckpt", ckpt_dir / "last.ckpt")
    meta = {"fingerprint": train.fingerprint(cfg), "run_id": "run-of-the-checkpoint"}
    (ckpt_dir / "fingerprint.json").write_text(json.dumps(meta))
    assert train.resumable(cfg, messages.append) == (ckpt_dir / "last.ckpt", meta["run_id"])

    # every training parameter counts, the output paths do not
    assert train.fingerprint(config("fingerprint", "train.lr=0.002")) != meta["fingerprint"]
    assert train.fingerprint(config("fingerprint", "model.dropout=0.3")) != meta["fingerprint"]
    assert train.fingerprint(config("elsewhere")) == meta["fingerprint"]

    (ckpt_dir / "last.ckpt").write_bytes(b"cut short")
    assert train.resumable(cfg, messages.append) == (None, None)
    assert "is unreadable" in messages[-1] and "starting from scratch" in messages[-1]


def test_checkpoint_carries_its_epochs_training_metrics(
    wine: Path, reference: dict[str, Any]
) -> None:
    from models.module import EPOCH_METRICS_KEY

    ref = reference["result"]
    state = torch.load(ref.train_dir / "last.ckpt", weights_only=True)
    step = state["global_step"] - 1
    assert state[EPOCH_METRICS_KEY] == {
        key: next(iter(reference["history"][key][step])) for key in ("train/loss", "train/acc")
    }
    # a run killed after writing last.ckpt, before logging that epoch's training metrics
    run_id = tracking.start_run("mended", "train")
    train._log_checkpointed_epoch(run_id, state)
    train._log_checkpointed_epoch(run_id, state)  # resumed twice: still once
    for key in ("train/loss", "train/acc"):
        assert history(run_id, key) == {step: reference["history"][key][step]}, key
    assert history(run_id, "epoch") == {step: {float(EPOCHS - 1)}}


def test_changed_parameter_restarts_from_scratch(
    wine: Path, reference: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    ref = reference["result"]
    cfg = config("changed")
    ckpt_dir = Path(cfg.paths.checkpoint_dir)
    ckpt_dir.mkdir(parents=True)
    shutil.copy(ref.train_dir / "last.ckpt", ckpt_dir / "last.ckpt")
    meta = {"fingerprint": train.fingerprint(cfg), "run_id": ref.run_id}
    (ckpt_dir / "fingerprint.json").write_text(json.dumps(meta))

    r = train.run(config("changed", "train.lr=0.002"), resume=True)
    assert "belongs to other parameters or data; starting from scratch" in capsys.readouterr().out
    assert r.resumed_from_epoch is None
    assert r.run_id != ref.run_id and r.epochs == EPOCHS
    run = tracking.client().get_run(r.run_id)
    assert "dlops.resumed_from" not in run.data.tags
    assert len(history(r.run_id, "val/loss")) == EPOCHS  # every epoch trained again
    assert r.best_val_loss != ref.best_val_loss
    assert not ckpt_dir.exists()


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(
    wine: Path, reference: dict[str, Any]
) -> None:
    cfg = load_config("params.yaml")  # exactly what `python -m tasks.train` reads
    last = Path(cfg.paths.checkpoint_dir) / "last.ckpt"
    log = wine / "killed-train.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasks.train"], cwd=wine, env=env, stdout=out, stderr=out
        )
    epoch, deadline = -1, time.monotonic() + 300
    try:
        while epoch < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            try:
                epoch = int(torch.load(last, weights_only=True)["epoch"])
            except (FileNotFoundError, RuntimeError, EOFError):
                pass  # not written yet
    finally:
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert not finished, f"training ended before the kill:\n{log.read_text()[-3000:]}"
    assert epoch >= 2, f"no checkpoint of epoch 2 in time:\n{log.read_text()[-3000:]}"
    killed_epoch = int(torch.load(last, weights_only=True)["epoch"])
    assert 2 <= killed_epoch < EPOCHS - 1
    killed_run = json.loads((last.parent / "fingerprint.json").read_text())["run_id"]
    assert tracking.client().get_run(killed_run).info.status == "RUNNING"

    r = train.run(cfg, resume=True)

    ref = reference["result"]
    assert r.run_id == killed_run  # the same MLflow run, continued
    assert r.resumed_from_epoch == killed_epoch
    run = tracking.client().get_run(r.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dlops.resumed_from"] == str(last)
    assert len(runs_in(cfg.register_.experiment)) == 1
    # identical to the uninterrupted run (RNG states, sampler epoch, LR schedule, early stopping
    # and checkpoint state all travel in last.ckpt), not merely within 0.5 %
    assert (r.best_val_loss, r.best_val_metric, r.best_epoch, r.epochs) == (
        ref.best_val_loss,
        ref.best_val_metric,
        ref.best_epoch,
        ref.epochs,
    )
    assert json.loads(Path(cfg.paths.train_metrics).read_text()) == reference["train_metrics"]
    # one value per epoch, the uninterrupted run's, including the epochs before the kill
    for key in METRICS:
        assert history(r.run_id, key) == reference["history"][key], key
    assert not last.parent.exists()
    assert {"best.ckpt", "last.ckpt", "model.pt"} <= {p.name for p in r.train_dir.iterdir()}


def test_training_sampler_shards_and_reshuffles_under_ddp(wine: Path) -> None:
    import lightning as L
    from torch.utils.data import DistributedSampler

    from models.datamodule import DataModule, EpochSampler

    cfg = load_config("params.yaml")
    dm = DataModule(cfg.paths.processed_dir, batch_size=16, seed=cfg.seed)
    dm.setup()
    n = len(dm.datasets["train"])
    assert isinstance(dm.train_dataloader().sampler, EpochSampler)  # no trainer: one process

    # a real two-process trainer (nothing is launched before fit): rank 0's view
    dm.trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False)
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, DistributedSampler)
    assert (sampler.num_replicas, sampler.rank) == (2, 0)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert len(first) == len(second) == math.ceil(n / 2)
    assert first != second  # reshuffled every epoch
    assert isinstance(dm.val_dataloader().sampler, torch.utils.data.SequentialSampler)


def test_tuning_stays_in_one_process_when_training_uses_ddp(wine: Path) -> None:
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    cfg = config("tune-ddp", "train.devices=2")
    assert train.strategy(cfg) == "ddp_spawn"
    ddp = train.make_trainer(cfg, 1, [])
    assert isinstance(ddp.strategy, DDPStrategy) and ddp.num_devices == 2
    one = train.make_trainer(cfg, 1, [], devices=1, strategy="auto")  # as tune passes
    assert isinstance(one.strategy, SingleDeviceStrategy) and one.world_size == 1

    r = tune.run(cfg)
    assert r.n_complete == 1
    trial = next(run for run in runs_in("tune-ddp") if run.info.run_name == "trial-0")
    assert trial.data.tags["optuna.state"] == "COMPLETE"
    assert math.isfinite(trial.data.metrics["val/loss"])


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_logs_one_run(wine: Path, reference: dict[str, Any]) -> None:
    cfg = config("ddp", "train.devices=2")
    r = train.run(cfg)
    runs = runs_in("ddp")
    assert [run.info.run_id for run in runs] == [r.run_id]  # one run, not one per rank
    assert runs[0].info.status == "FINISHED"
    assert r.epochs == EPOCHS
    for key in METRICS:  # once per epoch, by rank 0 alone
        assert len(history(r.run_id, key)) == points(r.run_id, key) == EPOCHS, key
    # each process takes half of every epoch's rows: half the single-process run's steps
    steps = max(history(r.run_id, "val/loss")) + 1
    assert 2 * steps == max(reference["history"]["val/loss"]) + 1
    ref = reference["result"]
    assert abs(r.best_val_metric - ref.best_val_metric) <= 0.05
    test = evaluate.run(cfg).metrics
    assert abs(test["accuracy"] - reference["test"]["accuracy"]) <= 0.05
    spec = json.loads((r.train_dir / "model.json").read_text())
    assert spec["mlflow_run_id"] == r.run_id


def test_bf16_mixed_precision_trains_on_cpu(wine: Path, reference: dict[str, Any]) -> None:
    cfg = config("bf16", "train.precision=bf16-mixed", "train.max_epochs=2")
    r = train.run(cfg)
    assert r.epochs == 2
    assert math.isfinite(r.best_val_loss) and 0.0 < r.best_val_loss < 1.5
    assert 0.5 <= r.best_val_metric <= 1.0
    assert tracking.client().get_run(r.run_id).info.status == "FINISHED"
    for key in METRICS:
        values = [v for vs in history(r.run_id, key).values() for v in vs]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), key
    # autocast was on: bf16 matmuls do not reproduce the float32 run's first epoch
    first = min(reference["history"]["train/loss"])
    assert history(r.run_id, "train/loss")[first] != reference["history"]["train/loss"][first]


@pytest.mark.slow
def test_torchrun_launch_logs_one_run_from_rank_zero(wine: Path) -> None:
    """The README's `torchrun --nproc_per_node=2 -m tasks.train` on the CPU: two processes."""
    before = Path("params.yaml").read_text()
    write_overrides(
        "params.yaml",
        [
            "register.experiment=torchrun",
            "paths.checkpoint_dir=runs/torchrun/checkpoints",
            "paths.train_dir=runs/torchrun/train",
            "paths.train_metrics=runs/torchrun/train_metrics.json",
            "train.devices=2",
            "train.strategy=ddp",
        ],
    )
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    try:
        out = subprocess.run(
            [torchrun, "--nproc_per_node=2", "-m", "tasks.train"],
            cwd=wine,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        Path("params.yaml").write_text(before)  # what the other tests expect
    assert out.returncode == 0, out.stderr[-3000:]
    reports = [line for line in out.stdout.splitlines() if line.startswith("train: best")]
    assert len(reports) == 1  # rank zero reports, the worker does not
    runs = runs_in("torchrun")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert points(runs[0].info.run_id, "val/loss") == EPOCHS
    spec = json.loads((wine / "runs/torchrun/train/model.json").read_text())
    assert spec["mlflow_run_id"] == runs[0].info.run_id
