"""The DataModule: processed splits (raw inputs) through the fitted preprocessor, in memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import (
    ConcatDataset,
    DataLoader,
    Dataset,
    DistributedSampler,
    Sampler,
    TensorDataset,
)

from models.preprocessing import Preprocessor, load, load_split

SPLITS = ("train", "val", "test")


class EpochSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch): a resumed run sees the same batches.

    `repeats` > 1 makes one epoch that many shuffled passes (the derived epoch of a small data
    set, models.training.budget); one pass is exactly the single-pass shuffle of before.
    """

    def __init__(self, n: int, seed: int, repeats: int = 1) -> None:
        self.n, self.seed, self.epoch, self.repeats = n, seed, 0, repeats

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order: list[int] = []
        for r in range(self.repeats):
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + r * 7_919_993)
            order += torch.randperm(self.n, generator=gen).tolist()
        return iter(order)

    def __len__(self) -> int:
        return self.n * self.repeats


class DataModule(L.LightningDataModule):
    """Tensors of every split, preprocessed once; labels as class indices or standardized."""

    def __init__(
        self, processed_dir: str | Path, batch_size: int = 64, seed: int = 42, repeats: int = 1
    ) -> None:
        super().__init__()
        self.processed_dir = Path(processed_dir)
        self.batch_size = batch_size
        self.seed = seed
        self.repeats = repeats  # passes over the training split per epoch
        self.preprocessor: Preprocessor = load(self.processed_dir / "preprocessor.json")
        self.datasets: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        """Load and preprocess every split once."""
        if self.datasets:
            return
        target = self.preprocessor.target
        for split in SPLITS:
            x, y = load_split(self.processed_dir, split)
            x = torch.from_numpy(self.preprocessor.transform(x))
            if target.task == "classification":
                y = torch.from_numpy(y).long()
            else:
                y = torch.from_numpy(target.encode(y))
            self.datasets[split] = TensorDataset(x, y)

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        data: Dataset = self.datasets[split]
        sampler: Sampler[int] | None = None
        if (
            shuffle
            and self.repeats > 1
            and self.trainer is not None
            and self.trainer.world_size > 1
        ):
            data = ConcatDataset([data] * self.repeats)
        if shuffle and self.trainer is not None and self.trainer.world_size > 1:
            # DDP: each process its shard of a (seed, epoch) shuffle. Lightning would wrap an
            # EpochSampler in a non-shuffling DistributedSampler that never moves it past epoch 0.
            t = self.trainer
            sampler = DistributedSampler(
                data, num_replicas=t.world_size, rank=t.global_rank, shuffle=True, seed=self.seed
            )
        elif shuffle:
            sampler = EpochSampler(len(data), self.seed, self.repeats)
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test batches."""
        return self._loader("test")
