"""A fixed-aspect frame around the mask, resized to a checkpoint's training resolution.

Try-on checkpoints such as CatVTON's are trained on portrait person photos of one aspect at one
resolution (3:4, 512x384 or 1024x768, height x width). `plan_frame` picks the frame the model
sees: the largest frame of that aspect that fits in the image, placed over the mask (the person's
context, as in training), or, when the mask with its margin does not fit in such a frame, the
smallest frame of that aspect around the mask, padded beyond the image's edges. The frame is then
resized (up or down) to the resolution. `FramePlan` has `CropPlan`'s interface (`image`, `mask`,
`paste`, `proc_size`), so an engine can use either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from editflow.engines.crop import WindowBox, to_uint8

__all__ = ["FramePlan", "plan_frame", "parse_resolution"]


def parse_resolution(value: object, multiple: int = 8) -> tuple[int, int]:
    """``"1024x768"`` / ``[1024, 768]`` (height x width) -> (height, width), multiples of `multiple`."""
    if isinstance(value, str):
        parts = value.lower().replace("×", "x").split("x")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = []
    try:
        height, width = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"resolution must be HEIGHTxWIDTH (e.g. 1024x768), got {value!r}") from None
    if height < multiple or width < multiple or height % multiple or width % multiple:
        raise ValueError(f"resolution {height}x{width}: both sides must be positive multiples of {multiple}")
    return height, width


@dataclass(frozen=True)
class FramePlan(WindowBox):
    """A frame in image coordinates (it may reach past the image: padded) and the size it is resized to."""

    @property
    def proc_size(self) -> tuple[int, int]:
        return self.height, self.width

    def _window(self, array: np.ndarray, mode: str) -> np.ndarray:
        h, w = array.shape[:2]
        top, left = max(0, -self.y0), max(0, -self.x0)
        bottom, right = max(0, self.y1 - h), max(0, self.x1 - w)
        inside = array[max(0, self.y0):min(h, self.y1), max(0, self.x0):min(w, self.x1)]
        if top or left or bottom or right:
            pad = ((top, bottom), (left, right)) + ((0, 0),) * (array.ndim - 2)
            inside = np.pad(inside, pad, mode=mode)
        return np.ascontiguousarray(inside)

    def image(self, image: np.ndarray) -> torch.Tensor:
        """H×W×3 uint8 -> [1, 3, height, width] in [-1, 1]; outside the image: its edge pixels repeated."""
        x = torch.from_numpy(self._window(image, "edge")).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        if tuple(x.shape[-2:]) != self.proc_size:
            x = F.interpolate(x, size=self.proc_size, mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
        return x

    def mask(self, mask: np.ndarray) -> torch.Tensor:
        """H×W (1 = edit) -> [1, 1, height, width]; each output pixel takes the max of what it covers."""
        m = torch.from_numpy(self._window(np.asarray(mask, np.float32), "constant"))[None, None]
        if tuple(m.shape[-2:]) != self.proc_size:
            m = F.adaptive_max_pool2d(m, self.proc_size)
        return m.clamp(0, 1)

    def paste(self, original: np.ndarray, result: torch.Tensor) -> np.ndarray:
        """The model's frame ([3, h, w] / [1, 3, h, w] in [-1, 1]) back into a copy of `original`."""
        x = result.detach().to("cpu", torch.float32)
        x01 = ((x[None] if x.dim() == 3 else x) / 2 + 0.5).clamp(0, 1)
        size = (self.y1 - self.y0, self.x1 - self.x0)
        if tuple(x01.shape[-2:]) != size:
            x01 = F.interpolate(x01, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        h, w = original.shape[:2]
        ys, xs = max(0, self.y0), max(0, self.x0)
        ye, xe = min(h, self.y1), min(w, self.x1)
        out = original.copy()
        out[ys:ye, xs:xe] = to_uint8(x01[0, :, ys - self.y0:ye - self.y0, xs - self.x0:xe - self.x0])
        return out


def _place(lo: float, hi: float, length: int, limit: int) -> int:
    """Start of a span of `length` centred on [lo, hi), kept inside [0, limit) when it fits."""
    start = int(round((lo + hi) / 2 - length / 2))
    if length <= limit:
        start = min(max(0, start), limit - length)
    return start


def plan_frame(mask: np.ndarray, height: int, width: int, context: float = 0.1, min_context: int = 4) -> FramePlan:
    """The frame of aspect width:height over `mask` (H×W, > 0 = edit), resized to height×width.

    `context`: margin kept around the mask's box (fraction of its long side, at least
    `min_context` px) when the frame has to be fitted to the mask rather than to the image.
    """
    ys, xs = np.nonzero(np.asarray(mask) > 0)
    if ys.size == 0:
        raise ValueError("mask is empty: nothing to edit")
    img_h, img_w = mask.shape[:2]
    aspect = width / height
    by0, by1, bx0, bx1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    margin = max(min_context, int(math.ceil(context * max(by1 - by0, bx1 - bx0))))
    ny0, ny1 = max(0, by0 - margin), min(img_h, by1 + margin)
    nx0, nx1 = max(0, bx0 - margin), min(img_w, bx1 + margin)
    # the largest frame of the aspect inside the image
    fh = min(img_h, int(math.floor(img_w / aspect)))
    fw = int(round(fh * aspect))
    if fh < 1 or fw < 1 or ny1 - ny0 > fh or nx1 - nx0 > fw:
        # the mask does not fit: the smallest frame of the aspect around it, padded past the image
        fh = max(ny1 - ny0, int(math.ceil((nx1 - nx0) / aspect)))
        fw = max(nx1 - nx0, int(round(fh * aspect)))
    y0 = _place(ny0, ny1, fh, img_h)
    x0 = _place(nx0, nx1, fw, img_w)
    return FramePlan(y0, y0 + fh, x0, x0 + fw, int(height), int(width))
