"""The fitted normalization, shared by training and the registered model (raw rows in)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Normalizer:
    """Standardization with one mean and std per channel, fitted on the training split only."""

    mean: float
    std: float
    height: int = 8
    width: int = 8

    @classmethod
    def fit(cls, x: np.ndarray, height: int = 8, width: int = 8) -> Normalizer:
        """Fit on raw training rows of shape (N, height*width)."""
        x = np.asarray(x, dtype=np.float64)
        return cls(mean=float(x.mean()), std=float(x.std()) or 1.0, height=height, width=width)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Raw rows (N, H*W) -> normalized images (N, 1, H, W), float32."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.height * self.width:
            raise ValueError(
                f"expected raw rows of {self.height * self.width} pixel values, "
                f"got shape {x.shape}"
            )
        out = (x - np.float32(self.mean)) / np.float32(self.std)
        return out.reshape(-1, 1, self.height, self.width)

    def save(self, path: str | Path) -> None:
        """Write as JSON."""
        Path(path).write_text(json.dumps(self.__dict__, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Normalizer:
        """Read from JSON."""
        return cls(**json.loads(Path(path).read_text()))


def load_split(processed_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw rows (N, 64) and labels (N,) of one processed split (train, val or test)."""
    with np.load(Path(processed_dir) / f"{split}.npz") as npz:
        return npz["x"], npz["y"]
