"""Networks: plain `nn.Module`s built from a typed spec."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from models.preprocessing import Normalizer


@dataclass(frozen=True)
class CNNSpec:
    """Architecture of `DigitsCNN` (saved as model.json next to the weights)."""

    channels: int = 32
    dropout: float = 0.2
    hidden: int = 128
    n_classes: int = 10
    in_channels: int = 1
    height: int = 8
    width: int = 8

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


class DigitsCNN(nn.Module):
    """Two conv blocks (conv, batch norm, ReLU, max-pool), then a dropout-regularized head."""

    def __init__(self, spec: CNNSpec) -> None:
        super().__init__()
        c = spec.channels

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(spec.in_channels, c),
            nn.MaxPool2d(2),
            block(c, 2 * c),
            nn.MaxPool2d(2),
        )
        flat = 2 * c * (spec.height // 4) * (spec.width // 4)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(spec.dropout),
            nn.Linear(flat, spec.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(spec.dropout),
            nn.Linear(spec.hidden, spec.n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, n_classes) for images of shape (N, C, H, W)."""
        return self.head(self.features(x))


def build_network(spec: CNNSpec) -> nn.Module:
    """Build the network a spec describes."""
    return DigitsCNN(spec)


def load_network(spec_path: str | Path, weights_path: str | Path) -> nn.Module:
    """A network in eval mode from model.json and a weights-only state dict."""
    meta = json.loads(Path(spec_path).read_text())
    net = build_network(CNNSpec(**meta["spec"]))
    net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return net.eval()


def load_trained(train_dir: str | Path) -> tuple[nn.Module, Normalizer]:
    """The trained network (eval mode) and its normalizer from a train folder."""
    folder = Path(train_dir)
    net = load_network(folder / "model.json", folder / "model.pt")
    return net, Normalizer.load(folder / "normalizer.json")
