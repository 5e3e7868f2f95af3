"""dlops' Lightning training vs a hand-written PyTorch loop: same model, data, batches, optimizer.

Both train the digits CNN (`model.arch: auto` picks `cnn` for images) on the processed digits
splits for the same epochs: the same network and augmentation modules, the same seeded shuffling
(`EpochSampler`), AdamW + cosine schedule, the epoch's loss and accuracy, and a validation
pass each epoch. `dlops` is the module under `make_trainer` without checkpoints; `dlops+ckpt+es`
adds what the train stage adds (best and every-epoch checkpoints, early stopping). Runs
alternate; medians, minima and the median of each repeat's ratio (paired, steadier on a shared
machine) are compared.
Usage: python benchmarks/train_overhead.py [--epochs 10] [--repeats 3]   (target ratio <= 1.05)
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def prepare(dest: Path) -> Any:
    """Ingest and preprocess the digits into `dest` (which becomes the working directory)."""
    from tasks import ingest, preprocess
    from tasks.config import load_config

    repo = Path(__file__).resolve().parents[1]
    os.chdir(dest)
    cfg = load_config(repo / "params.yaml", ["data.dataset=digits", "model.arch=auto"])
    ingest.run(cfg)
    preprocess.run(cfg)
    return cfg


def _module_and_data(cfg: Any, epochs: int) -> tuple[Any, Any]:
    import lightning as L

    from models.datamodule import DataModule
    from tasks.train import build_module, data_info

    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg, data_info(cfg.paths.processed_dir), epochs)
    dm = DataModule(cfg.paths.processed_dir, batch_size=cfg.train.batch_size, seed=cfg.seed)
    dm.setup()
    return module, dm


def dlops_fit(cfg: Any, epochs: int, full: bool) -> float:
    """Seconds of `trainer.fit` for the train stage's module and trainer."""
    from tasks.train import make_trainer

    module, dm = _module_and_data(cfg, epochs)
    callbacks: list = []
    kwargs: dict[str, Any] = {"enable_checkpointing": False}
    if full:  # what the train stage adds: best and every-epoch checkpoints, early stopping
        from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

        from models.metrics import VAL_LOSS
        from tasks.train import BEST, LAST

        folder = tempfile.mkdtemp()
        kwargs = {}
        callbacks = [
            ModelCheckpoint(dirpath=folder, filename=BEST, monitor=VAL_LOSS, mode="min"),
            ModelCheckpoint(dirpath=folder, filename=LAST, enable_version_counter=False),
            EarlyStopping(monitor=VAL_LOSS, patience=epochs),
        ]
    trainer = make_trainer(cfg, epochs, callbacks, **kwargs)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return time.perf_counter() - start


def plain_fit(cfg: Any, epochs: int) -> float:
    """Seconds of a hand-written loop over the same network, augmentation and batches."""
    torch.set_num_threads(cfg.train.threads)
    module, dm = _module_and_data(cfg, epochs)  # the network and augmentation, used bare
    net, augment, t = module.net, module.augment, cfg.train
    opt = torch.optim.AdamW(net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    train_loader, val_loader = dm.train_dataloader(), dm.val_dataloader()
    start = time.perf_counter()
    for epoch in range(epochs):
        train_loader.sampler.set_epoch(epoch)  # Lightning does this for the dlops runs
        net.train()
        correct = total = 0
        for x, y in train_loader:
            logits = net(augment(x))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
        sched.step()
        net.eval()
        with torch.no_grad():
            val = [F.cross_entropy(net(x), y).item() for x, y in val_loader]
        _ = (correct / total, sum(val) / len(val))
    return time.perf_counter() - start


def main() -> None:
    """Alternate the three fits, print seconds per epoch and the ratios to the plain loop."""
    import warnings

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import lightning.pytorch  # noqa: F401  (sets its logger to INFO on import)

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*non-writable tensors.*")
    with tempfile.TemporaryDirectory(prefix="dlops-overhead-") as tmp:
        cfg = prepare(Path(tmp))
        dlops_fit(cfg, 1, False)  # warm-up: imports, first-call allocations
        dlops_fit(cfg, 1, True)
        plain_fit(cfg, 1)
        times: dict[str, list[float]] = {"plain": [], "dlops": [], "dlops+ckpt+es": []}
        for _ in range(args.repeats):
            times["plain"].append(plain_fit(cfg, args.epochs))
            times["dlops"].append(dlops_fit(cfg, args.epochs, full=False))
            times["dlops+ckpt+es"].append(dlops_fit(cfg, args.epochs, full=True))
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    print(f"{args.epochs} epochs x {args.repeats} repeats, wall seconds (median, min):")
    for name, value in med.items():
        per_epoch = value / args.epochs
        print(f"  {name:<14} {value:7.2f} s  {low[name]:7.2f} s  ({per_epoch:.3f} s/epoch)")
    for name in ("dlops", "dlops+ckpt+es"):
        extra = (med[name] - med["plain"]) / args.epochs
        # each repeat's ratio to the plain run just before it: steadier under a drifting load
        pairs = zip(times[name], times["plain"], strict=True)
        paired = statistics.median(a / b for a, b in pairs)
        print(
            f"ratio {name}/plain: median {med[name] / med['plain']:.3f} ({extra:+.3f} s/epoch), "
            f"min {low[name] / low['plain']:.3f}, paired {paired:.3f}"
        )


if __name__ == "__main__":
    main()
