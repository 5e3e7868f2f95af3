"""Training-time image augmentation: small random shifts and rotations, batched on the device."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RandomAffine(nn.Module):
    """Shift by up to `max_shift` pixels, rotate by up to `max_rotation` degrees, with prob p."""

    def __init__(self, p: float = 0.5, max_shift: float = 1.0, max_rotation: float = 10.0) -> None:
        super().__init__()
        self.p, self.max_shift, self.max_rotation = p, max_shift, max_rotation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform a batch (N, C, H, W); identity when p == 0."""
        if self.p <= 0 or (self.max_shift <= 0 and self.max_rotation <= 0):
            return x
        n, _, h, w = x.shape
        dev, dt = x.device, x.dtype
        apply = (torch.rand(n, device=dev) < self.p).to(dt)
        angle = (torch.rand(n, device=dev, dtype=dt) * 2 - 1) * math.radians(self.max_rotation)
        shift = (torch.rand(n, 2, device=dev, dtype=dt) * 2 - 1) * self.max_shift
        angle, shift = angle * apply, shift * apply[:, None]
        cos, sin = torch.cos(angle), torch.sin(angle)
        # affine_grid works in [-1, 1] coordinates: a shift of k pixels is 2k / size.
        theta = torch.stack(
            [
                torch.stack([cos, -sin, shift[:, 0] * 2 / w], dim=1),
                torch.stack([sin, cos, shift[:, 1] * 2 / h], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # the background of a normalized image is its minimum, not zero
        fill = x.amin(dim=(1, 2, 3), keepdim=True)
        out = F.grid_sample(x - fill, grid, align_corners=False, padding_mode="zeros")
        return out + fill
