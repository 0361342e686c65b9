"""Crop-around-mask for model-resolution engines: what region a model sees, and putting it back.

An SD or DDPM model works best near its training resolution (`max_side`). For an image no larger
than that, the whole image is processed at its own size. For a larger image the model sees a
window around the mask's bounding box: the box plus a context margin, widened (when the image
allows) to `max_side` along each axis so the model gets full-resolution context. Only when that
window is still larger than `max_side` is it scaled down (the result is scaled back up and the
scale is recorded as proc_width/proc_height — never a silent downscale of the output). Every
window is then padded (reflect) to a multiple of the model's size granularity, so any image size
works.

The engine writes the model's window back into a copy of the original (`CropPlan.paste`), and the
edit stage composites that over the original by the full-resolution mask, so pixels outside the
mask are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CropPlan", "WindowBox", "plan_crop"]


@dataclass(frozen=True)
class WindowBox:
    """Where in the image the model's input comes from (y0:y1, x0:x1) and the size it is resized to."""

    y0: int
    y1: int
    x0: int
    x1: int
    height: int
    width: int


@dataclass(frozen=True)
class CropPlan(WindowBox):
    """A window resized to (height, width), then padded; the processing size before padding is
    (height, width)."""

    #: padding added at the bottom and right to reach a multiple of the model's granularity
    pad_bottom: int
    pad_right: int

    @property
    def scaled(self) -> bool:
        return (self.height, self.width) != (self.y1 - self.y0, self.x1 - self.x0)

    @property
    def proc_size(self) -> tuple[int, int]:
        """(height, width) of what the model sees, padding included."""
        return self.height + self.pad_bottom, self.width + self.pad_right

    def image(self, image: np.ndarray) -> torch.Tensor:
        """H×W×3 uint8 -> [1, 3, h, w] float32 in [-1, 1] (window, scaled, padded)."""
        window = np.ascontiguousarray(image[self.y0:self.y1, self.x0:self.x1])
        x = torch.from_numpy(window).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        if self.scaled:
            x = F.interpolate(x, size=(self.height, self.width), mode="bicubic", antialias=True,
                              align_corners=False).clamp(-1, 1)
        return _pad(x, self.pad_bottom, self.pad_right, "reflect")

    def mask(self, mask: np.ndarray) -> torch.Tensor:
        """H×W float (1 = edit) -> [1, 1, h, w]; downscaling keeps the max, so no edit pixel is lost."""
        window = np.ascontiguousarray(mask[self.y0:self.y1, self.x0:self.x1], dtype=np.float32)
        m = torch.from_numpy(window)[None, None]
        if self.scaled:
            m = F.adaptive_max_pool2d(m, (self.height, self.width))
        return _pad(m, self.pad_bottom, self.pad_right, "zeros").clamp(0, 1)

    def image01(self, image: np.ndarray) -> np.ndarray:
        """H×W×3 uint8 -> h×w×3 float32 in [0, 1], as diffusers' image processor reads a PIL image.

        Unscaled windows are divided by 255 straight from the uint8 pixels (bit-identical to
        passing the PIL crop to a diffusers pipeline), then padded like `image`.
        """
        if self.scaled:
            return ((self.image(image)[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()
        window = np.ascontiguousarray(image[self.y0:self.y1, self.x0:self.x1])
        x = window.astype(np.float32) / 255.0
        if self.pad_bottom or self.pad_right:
            h, w = x.shape[:2]
            mode = "reflect" if self.pad_bottom < h and self.pad_right < w else "edge"
            x = np.pad(x, ((0, self.pad_bottom), (0, self.pad_right), (0, 0)), mode=mode)
        return x

    def paste(self, original: np.ndarray, result: torch.Tensor | np.ndarray) -> np.ndarray:
        """Put the model's window back into a copy of `original`.

        `result` is a tensor [3, h, w] / [1, 3, h, w] in [-1, 1] (the sampler's output) or an
        h×w×3 array in [0, 1] (a diffusers pipeline's output_type="np"), padding included.
        """
        if isinstance(result, np.ndarray):
            x01 = torch.from_numpy(np.ascontiguousarray(result, dtype=np.float32)).permute(2, 0, 1)[None]
        else:
            x = result.detach().to("cpu", torch.float32)
            x01 = ((x[None] if x.dim() == 3 else x) / 2 + 0.5).clamp(0, 1)
        x01 = x01[..., : self.height, : self.width]
        if self.scaled:
            x01 = F.interpolate(x01, size=(self.y1 - self.y0, self.x1 - self.x0), mode="bicubic",
                                align_corners=False).clamp(0, 1)
        out = original.copy()
        out[self.y0:self.y1, self.x0:self.x1] = to_uint8(x01[0])
        return out


def to_uint8(x01: torch.Tensor) -> np.ndarray:
    """[3, h, w] in [0, 1] -> h×w×3 uint8, rounded as diffusers' numpy_to_pil does ((x * 255).round())."""
    return (x01.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _pad(x: torch.Tensor, bottom: int, right: int, mode: str) -> torch.Tensor:
    if not bottom and not right:
        return x
    if mode == "zeros":
        return F.pad(x, (0, right, 0, bottom))
    h, w = x.shape[-2:]
    if bottom < h and right < w:
        return F.pad(x, (0, right, 0, bottom), mode="reflect")
    return F.pad(x, (0, right, 0, bottom), mode="replicate")


def plan_crop(
    mask: np.ndarray,
    max_side: int,
    multiple: int = 8,
    context: float = 0.5,
    min_context: int = 16,
) -> CropPlan:
    """Plan the model's window for `mask` (H×W, > 0 = edit).

    Args:
        max_side: the model's native resolution; larger windows are scaled down to it.
        multiple: pad the processed window to a multiple of this (8 for SD latents, the UNet's
            downsampling factor for pixel UNets).
        context: margin around the mask's bounding box, as a fraction of the box's long side.
        min_context: the margin is at least this many pixels.
    """
    if max_side < multiple:
        raise ValueError(f"max_side must be >= {multiple}, got {max_side}")
    height, width = mask.shape[:2]
    if max(height, width) <= max_side:
        y0, y1, x0, x1 = 0, height, 0, width
    else:
        ys, xs = np.nonzero(mask > 0)
        if ys.size == 0:
            raise ValueError("mask is empty: nothing to edit")
        by0, by1, bx0, bx1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        margin = max(min_context, int(math.ceil(context * max(by1 - by0, bx1 - bx0))))
        y0, y1 = _grow(by0 - margin, by1 + margin, min(max_side, height), height)
        x0, x1 = _grow(bx0 - margin, bx1 + margin, min(max_side, width), width)
    crop_h, crop_w = y1 - y0, x1 - x0
    scale = min(1.0, max_side / max(crop_h, crop_w))
    h = max(1, int(round(crop_h * scale)))
    w = max(1, int(round(crop_w * scale)))
    return CropPlan(y0, y1, x0, x1, h, w, (-h) % multiple, (-w) % multiple)


def _grow(lo: int, hi: int, at_least: int, limit: int) -> tuple[int, int]:
    """Clamp [lo, hi) to [0, limit) and widen it around its centre to `at_least` when it is shorter."""
    lo, hi = max(0, lo), min(limit, hi)
    short = at_least - (hi - lo)
    if short > 0:
        lo -= short // 2
        hi += short - short // 2
        if lo < 0:
            hi, lo = hi - lo, 0
        if hi > limit:
            lo, hi = max(0, lo - (hi - limit)), limit
    return lo, hi
