"""Inference from a trained model folder (or the registered model's artifacts): RAW inputs in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.preprocessing import Preprocessor, load


@dataclass
class Predictor:
    """The network (eval mode) and its fitted preprocessor."""

    net: Any
    preprocessor: Preprocessor
    task: str

    @classmethod
    def from_files(
        cls, spec_path: str | Path, weights_path: str | Path, preprocessor_path: str | Path
    ) -> Predictor:
        """Build from model.json, model.pt (a state dict) and preprocessor.json."""
        from models.networks import load_network

        pre = load(preprocessor_path)
        return cls(load_network(spec_path, weights_path), pre, pre.target.task)

    @classmethod
    def from_dir(cls, train_dir: str | Path) -> Predictor:
        """Build from a train folder."""
        d = Path(train_dir)
        return cls.from_files(d / "model.json", d / "model.pt", d / "preprocessor.json")

    def outputs(self, raw: Any, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities (N, K), or predictions in target units (N,)."""
        return self.scores(self.preprocessor.transform(raw), batch_size)

    def scores(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """`outputs` of already preprocessed inputs (the server's batched forward pass)."""
        import torch

        chunks = []
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                out = self.net(torch.from_numpy(x[start : start + batch_size])).double()
                chunks.append(
                    torch.softmax(out, dim=1).numpy()
                    if self.task == "classification"
                    else out.squeeze(-1).numpy()
                )
        out = np.concatenate(chunks) if chunks else np.zeros((0,))
        return out if self.task == "classification" else self.preprocessor.target.decode(out)

    @property
    def classes(self) -> list[Any]:
        """Class labels (classification)."""
        return list(self.preprocessor.target.classes)
