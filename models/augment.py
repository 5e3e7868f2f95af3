"""Training-time augmentation of normalized batches: batched tensor ops on the batch's device."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _uniform(n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    """`n` draws of U(low, high) on the device and dtype of `like`."""
    return low + (high - low) * torch.rand(n, device=like.device, dtype=like.dtype)


class ImageAugment(nn.Module):
    """Random affine, flips and color jitter for images (N, C, H, W), each sample with prob p.

    Affine: shift by up to `max_shift` pixels and rotate by up to `max_rotation` degrees, filling
    with the image's minimum (the background of a normalized image). Flips: each enabled flip
    with prob 0.5. Brightness adds U(-b, b) times the image's std; contrast scales each channel
    around its mean by U(1 - c, 1 + c).
    """

    def __init__(
        self,
        p: float = 0.5,
        max_shift: float = 1.0,
        max_rotation: float = 10.0,
        hflip: bool = False,
        vflip: bool = False,
        brightness: float = 0.0,
        contrast: float = 0.0,
    ) -> None:
        super().__init__()
        self.p, self.max_shift, self.max_rotation = p, max_shift, max_rotation
        self.hflip, self.vflip = hflip, vflip
        self.brightness, self.contrast = brightness, contrast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform a batch (N, C, H, W); identity when p == 0 or everything is off."""
        affine = self.max_shift > 0 or self.max_rotation > 0
        jitter = self.brightness > 0 or self.contrast > 0
        if self.p <= 0 or not (affine or self.hflip or self.vflip or jitter):
            return x
        n = x.shape[0]
        apply = torch.rand(n, device=x.device) < self.p
        if affine:
            x = self._affine(x, apply)
        for enabled, dim in ((self.hflip, 3), (self.vflip, 2)):
            if enabled:
                flip = apply & (torch.rand(n, device=x.device) < 0.5)
                x = torch.where(flip[:, None, None, None], x.flip(dim), x)
        mask = apply.to(x.dtype)[:, None, None, None]
        if self.brightness > 0:
            std = x.std(dim=(1, 2, 3), correction=0, keepdim=True)
            delta = _uniform(n, -self.brightness, self.brightness, x)[:, None, None, None]
            x = x + delta * std * mask
        if self.contrast > 0:
            mean = x.mean(dim=(2, 3), keepdim=True)
            factor = _uniform(n, 1 - self.contrast, 1 + self.contrast, x)[:, None, None, None]
            x = mean + (x - mean) * (1 + (factor - 1) * mask)
        return x

    def _affine(self, x: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        dev, dt = x.device, x.dtype
        angle = (torch.rand(n, device=dev, dtype=dt) * 2 - 1) * math.radians(self.max_rotation)
        shift = (torch.rand(n, 2, device=dev, dtype=dt) * 2 - 1) * self.max_shift
        angle, shift = angle * apply.to(dt), shift * apply.to(dt)[:, None]
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


class RandomAffine(ImageAugment):
    """Shift by up to `max_shift` pixels, rotate by up to `max_rotation` degrees, with prob p."""

    def __init__(self, p: float = 0.5, max_shift: float = 1.0, max_rotation: float = 10.0) -> None:
        super().__init__(p=p, max_shift=max_shift, max_rotation=max_rotation)


class SequenceAugment(nn.Module):
    """Noise, scaling and a time shift for sequences (N, T, C), each sample with prob p.

    Adds gaussian noise of std `jitter`, multiplies by U(1 - scale, 1 + scale), and shifts in time
    by an integer in [-max_shift, max_shift]; the vacated steps repeat the edge value (no
    wrap-around, so the end of a sequence never appears at its start).
    """

    def __init__(
        self, p: float = 0.5, jitter: float = 0.0, scale: float = 0.0, max_shift: int = 0
    ) -> None:
        super().__init__()
        self.p, self.jitter, self.scale, self.max_shift = p, jitter, scale, int(max_shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform a batch (N, T, C); identity when p == 0 or everything is off."""
        if self.p <= 0 or not (self.jitter > 0 or self.scale > 0 or self.max_shift > 0):
            return x
        n, t, _ = x.shape
        apply = torch.rand(n, device=x.device) < self.p
        mask = apply.to(x.dtype)[:, None, None]
        if self.jitter > 0:
            x = x + torch.randn_like(x) * self.jitter * mask
        if self.scale > 0:
            factor = _uniform(n, 1 - self.scale, 1 + self.scale, x)[:, None, None]
            x = x * (1 + (factor - 1) * mask)
        if self.max_shift > 0:
            shift = torch.randint(-self.max_shift, self.max_shift + 1, (n,), device=x.device)
            shift = shift * apply
            # out[:, i] = x[:, i - shift], clamped to the first/last step
            steps = torch.arange(t, device=x.device)[None, :] - shift[:, None]
            index = steps.clamp(0, t - 1)[:, :, None].expand_as(x)
            x = x.gather(1, index)
        return x


IMAGE_KEYS = ("p", "max_shift", "max_rotation", "hflip", "vflip", "brightness", "contrast")
SEQUENCE_KEYS = ("p", "jitter", "scale", "max_shift")


def build_augment(modality: str, options: dict[str, Any]) -> nn.Module:
    """The augmentation for a modality ("images", "sequences", "tables") from its options.

    Keys that do not apply to the modality are ignored; keys unknown to every modality raise
    ValueError. A sequence's `max_shift` is cast to whole time steps; tables are never augmented.
    """
    unknown = sorted(set(options) - set(IMAGE_KEYS) - set(SEQUENCE_KEYS))
    if unknown:
        raise ValueError(f"unknown augment option(s) {unknown}")
    if modality == "images":
        return ImageAugment(**{k: v for k, v in options.items() if k in IMAGE_KEYS})
    if modality == "sequences":
        return SequenceAugment(**{k: v for k, v in options.items() if k in SEQUENCE_KEYS})
    if modality == "tables":
        return nn.Identity()
    raise ValueError(f"unknown modality '{modality}' (known: images, sequences, tables)")
