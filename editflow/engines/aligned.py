"""An aligned face crop: the face rotated so its eye line is level, cropped square around it and
resized (usually up) to a model's resolution, then mapped back.

A face-editing model trained on aligned face crops (Stable-Makeup, most makeup and face models:
512x512, eyes level) sees the same framing whatever the photo: a small face in a large picture is
upscaled, so its lips span many latent rows instead of 1-3. `AlignedCrop` has `CropPlan`'s
interface (`image`, `mask`, `paste`, `proc_size`), so an engine can use either; `points` maps
landmarks into the crop (a ControlNet condition is drawn there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are made: planning a crop needs none (CPU mask stage)
    import torch

__all__ = ["AlignedCrop", "plan_aligned_crop", "eye_centres"]


def eye_centres(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) eye-opening centres in image coordinates (left = smaller x) from face-mesh landmarks."""
    from editflow.masks.face import topology

    centres = sorted((points[list(eye)].mean(axis=0) for eye in topology().eyes), key=lambda c: float(c[0]))
    return centres[0], centres[1]


@dataclass(frozen=True)
class AlignedCrop:
    """The affine map image -> crop (2x3, rotation + scale + shift) and the square crop's side."""

    matrix: np.ndarray
    size: int
    #: H×W: `paste` changes only pixels where region > 0 (None: every pixel the crop covers)
    region: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def proc_size(self) -> tuple[int, int]:
        return self.size, self.size

    def points(self, points: np.ndarray) -> np.ndarray:
        """Image coordinates (N, 2) -> crop coordinates."""
        return np.asarray(points, np.float64) @ self.matrix[:, :2].T + self.matrix[:, 2]

    def image(self, image: np.ndarray) -> torch.Tensor:
        """H×W×3 uint8 -> [1, 3, size, size] in [-1, 1] (edges repeated where the crop leaves the image)."""
        import torch

        crop = cv2.warpAffine(image, self.matrix, (self.size, self.size), flags=cv2.INTER_CUBIC,
                              borderMode=cv2.BORDER_REPLICATE)
        return torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1.0

    def mask(self, mask: np.ndarray) -> torch.Tensor:
        """H×W (1 = edit) -> [1, 1, size, size], bilinear (0 outside the image)."""
        import torch

        m = cv2.warpAffine(np.asarray(mask, np.float32), self.matrix, (self.size, self.size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return torch.from_numpy(np.clip(m, 0, 1))[None, None]

    def paste(self, original: np.ndarray, result: torch.Tensor, mask: np.ndarray | None = None) -> np.ndarray:
        """The crop ([3, s, s] / [1, 3, s, s] in [-1, 1]) mapped back into a copy of `original`.

        Only pixels the crop covers change; with `mask`, only pixels where mask > 0 (others keep
        the original's exact values)."""
        import torch

        x = result.detach().to("cpu", torch.float32)
        x = x[0] if x.dim() == 4 else x
        crop = ((x.permute(1, 2, 0).numpy() / 2 + 0.5).clip(0, 1) * 255).round().astype(np.uint8)
        h, w = original.shape[:2]
        flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
        back = cv2.warpAffine(crop, self.matrix, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
        inside = cv2.warpAffine(np.ones((self.size, self.size), np.float32), self.matrix, (w, h),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0) > 0.999
        mask = self.region if mask is None else mask
        if mask is not None:
            inside &= np.asarray(mask) > 0
        out = original.copy()
        out[inside] = back[inside]
        return out


def plan_aligned_crop(points: np.ndarray, size: int, margin: float = 0.25, box_points: np.ndarray | None = None,
                      region: np.ndarray | None = None) -> AlignedCrop:
    """The crop of the face with face-mesh landmarks `points` (N, 2): eye line level, the box of
    `box_points` (default: all landmarks) in the rotated frame grown by `margin` x its long side on
    each side, resized to size x size. `region`: see `AlignedCrop.region`."""
    left, right = eye_centres(points)
    angle = math.degrees(math.atan2(float(right[1] - left[1]), float(right[0] - left[0])))
    box_points = points if box_points is None else box_points
    centre = box_points.mean(axis=0)
    rotation = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, 1.0)
    rotated = np.asarray(box_points, np.float64) @ rotation[:, :2].T + rotation[:, 2]
    (x0, y0), (x1, y1) = rotated.min(axis=0), rotated.max(axis=0)
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * max(0.0, margin))
    if side < 2:
        raise ValueError("the face is too small to crop")
    scale = size / side
    matrix = rotation * scale
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    matrix[:, 2] = rotation[:, 2] * scale + np.array([size / 2 - cx * scale, size / 2 - cy * scale])
    return AlignedCrop(matrix.astype(np.float64), int(size), region)
