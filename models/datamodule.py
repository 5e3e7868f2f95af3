"""The DataModule: processed splits (raw pixel rows) normalized with the fitted normalizer."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from models.preprocessing import Normalizer, load_split

SPLITS = ("train", "val", "test")


class DigitsDataModule(L.LightningDataModule):
    """In-memory tensors; shuffling is seeded so that runs repeat exactly."""

    def __init__(self, processed_dir: str | Path, batch_size: int = 64, seed: int = 42) -> None:
        super().__init__()
        self.processed_dir = Path(processed_dir)
        self.batch_size = batch_size
        self.seed = seed
        self.normalizer = Normalizer.load(self.processed_dir / "normalizer.json")
        self.datasets: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        """Load and normalize every split once."""
        if self.datasets:
            return
        for split in SPLITS:
            x, y = load_split(self.processed_dir, split)
            self.datasets[split] = TensorDataset(
                torch.from_numpy(self.normalizer.transform(x)), torch.from_numpy(y).long()
            )

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            self.datasets[split], batch_size=self.batch_size, shuffle=shuffle, generator=gen
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test batches."""
        return self._loader("test")
