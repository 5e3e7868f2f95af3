"""dlops' Lightning training vs a hand-written PyTorch loop: same model, data, batches, optimizer.

Both train `DigitsCNN` on the processed digits splits for the same epochs, with the same seeded
shuffling, AdamW + cosine schedule, augmentation, and a validation pass each epoch; runs alternate
and the median of each is compared. Prints seconds per epoch and the ratio (target <= 1.05).
Usage: python benchmarks/train_overhead.py [--epochs 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def prepare(dest: Path):
    import os

    from tasks import ingest, preprocess
    from tasks.config import load_config

    repo = Path(__file__).resolve().parents[1]
    os.chdir(dest)
    cfg = load_config(repo / "params.yaml")
    ingest.run(cfg)
    preprocess.run(cfg)
    return cfg


def dlops_fit(cfg, epochs: int, full: bool) -> float:
    import lightning as L

    from models.datamodule import DigitsDataModule
    from tasks.train import build_module, hyperparameters, make_trainer

    L.seed_everything(cfg.seed, verbose=False)
    hp = hyperparameters(cfg)
    module = build_module(cfg, hp, epochs)
    dm = DigitsDataModule(cfg.paths.processed_dir, batch_size=hp["batch_size"], seed=cfg.seed)
    dm.setup()
    callbacks = []
    kwargs = {"enable_checkpointing": False}
    if full:  # what the train stage adds: best-epoch checkpoint and early stopping
        from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

        from models.metrics import VAL_LOSS

        kwargs = {}
        callbacks = [
            ModelCheckpoint(dirpath=tempfile.mkdtemp(), monitor=VAL_LOSS, save_top_k=1),
            EarlyStopping(monitor=VAL_LOSS, patience=epochs),
        ]
    trainer = make_trainer(cfg, epochs, callbacks, **kwargs)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return time.perf_counter() - start


def plain_fit(cfg, epochs: int) -> float:
    import lightning as L

    from models.datamodule import DigitsDataModule
    from tasks.train import build_module, hyperparameters

    L.seed_everything(cfg.seed, verbose=False)
    torch.set_num_threads(cfg.train.threads)
    hp = hyperparameters(cfg)
    module = build_module(cfg, hp, epochs)  # the same network and augmentation, used bare
    net, augment = module.net, module.augment
    dm = DigitsDataModule(cfg.paths.processed_dir, batch_size=hp["batch_size"], seed=cfg.seed)
    dm.setup()
    opt = torch.optim.AdamW(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    train_loader, val_loader = dm.train_dataloader(), dm.val_dataloader()
    start = time.perf_counter()
    for _ in range(epochs):
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dlops-overhead-") as tmp:
        cfg = prepare(Path(tmp))
        dlops_fit(cfg, 1, False)  # warm-up: imports, first-call allocations
        plain_fit(cfg, 1)
        times: dict[str, list[float]] = {"plain": [], "dlops": [], "dlops+ckpt+es": []}
        for _ in range(args.repeats):
            times["plain"].append(plain_fit(cfg, args.epochs))
            times["dlops"].append(dlops_fit(cfg, args.epochs, full=False))
            times["dlops+ckpt+es"].append(dlops_fit(cfg, args.epochs, full=True))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.epochs} epochs x {args.repeats} repeats, median wall seconds:")
    for name, value in med.items():
        print(f"  {name:<14} {value:7.2f} s  ({value / args.epochs:.3f} s/epoch)")
    for name in ("dlops", "dlops+ckpt+es"):
        extra = (med[name] - med["plain"]) / args.epochs
        print(f"ratio {name}/plain: {med[name] / med['plain']:.3f}  ({extra:+.3f} s/epoch)")


if __name__ == "__main__":
    main()
