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
    """Noise, scaling, time shift, window slicing and window warping for sequences (N, T, C).

    Each sample is transformed with prob p: gaussian noise of std `jitter`; a factor
    U(1 - scale, 1 + scale); a shift in time by an integer in [-max_shift, max_shift] (vacated
    steps repeat the edge value, no wrap-around); `window`: a random window of (1 - window) of
    the length stretched back to the whole length (window slicing, Le Guennec et al. 2016);
    `warp`: a random window of that fraction of the length sped up or slowed down by 2 and the
    sequence resampled to its length (window warping, ibid.). All keep the length T.
    """

    def __init__(
        self,
        p: float = 0.5,
        jitter: float = 0.0,
        scale: float = 0.0,
        max_shift: int = 0,
        window: float = 0.0,
        warp: float = 0.0,
    ) -> None:
        super().__init__()
        self.p, self.jitter, self.scale, self.max_shift = p, jitter, scale, int(max_shift)
        self.window, self.warp = window, warp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform a batch (N, T, C); identity when p == 0 or everything is off."""
        active = (self.jitter, self.scale, self.max_shift, self.window, self.warp)
        if self.p <= 0 or not any(v > 0 for v in active):
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
        if t > 1 and (self.window > 0 or self.warp > 0):
            u = torch.linspace(0, 1, t, device=x.device, dtype=x.dtype)[None, :].expand(n, t)
            src = u
            if self.window > 0:  # output [0, 1] -> a window [a, a + 1 - window] of the source
                keep = 1 - self.window
                start = torch.rand(n, 1, device=x.device, dtype=x.dtype) * self.window
                src = start + src * keep
            if self.warp > 0:
                src = self._warp(src, n, x)
            src = torch.where(apply[:, None], src, u)
            x = _resample(x, src * (t - 1))
        return x

    def _warp(self, src: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
        """Compose a window-warp map (piecewise linear, monotone) after `src`."""
        w = min(self.warp, 0.99)
        a = torch.rand(n, 1, device=like.device, dtype=like.dtype) * (1 - w)
        speed = torch.where(torch.rand(n, 1, device=like.device) < 0.5, 0.5, 2.0).to(like.dtype)
        total = 1 - w + w * speed  # the warped length, as a fraction of the original
        o1, o2 = a / total, (a + w * speed) / total  # the window's ends in output coordinates
        u = src.clamp(0, 1)
        inside = a + (u - o1) / (o2 - o1) * w
        after = a + w + (u - o2) / (1 - o2).clamp_min(1e-6) * (1 - a - w)
        before = u / o1.clamp_min(1e-6) * a
        return torch.where(u < o1, before, torch.where(u < o2, inside, after))


def _resample(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """X (N, T, C) read at fractional time positions pos (N, T), linearly interpolated."""
    t = x.shape[1]
    pos = pos.clamp(0, t - 1)
    lo = pos.floor().long().clamp(0, t - 1)
    hi = (lo + 1).clamp(max=t - 1)
    frac = (pos - lo.to(pos.dtype))[:, :, None]
    c = x.shape[2]
    left = x.gather(1, lo[:, :, None].expand(-1, -1, c))
    right = x.gather(1, hi[:, :, None].expand(-1, -1, c))
    return left + (right - left) * frac


IMAGE_KEYS = ("p", "max_shift", "max_rotation", "hflip", "vflip", "brightness", "contrast")
SEQUENCE_KEYS = ("p", "jitter", "scale", "max_shift", "window", "warp")


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
