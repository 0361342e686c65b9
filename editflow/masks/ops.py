"""Operations on float masks (1 = edit): grow/shrink, feather, bounding boxes."""

from __future__ import annotations

import cv2
import numpy as np


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Dilate (pixels > 0) or erode (pixels < 0) the edit region by a disc of that radius."""
    if pixels == 0:
        return mask
    radius = abs(int(pixels))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    op = cv2.dilate if pixels > 0 else cv2.erode
    return op(mask.astype(np.float32), kernel).astype(np.float32)


def feather(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Soften the edge outward by about `pixels`: the edit region stays 1, a ramp falls to 0 outside.

    The ramp lies outside the original region so feathering never shrinks what is repainted.
    """
    if pixels <= 0:
        return mask
    hard = (mask > 0.5).astype(np.uint8)
    outside = cv2.distanceTransform(1 - hard, cv2.DIST_L2, 5)
    ramp = np.clip(1.0 - outside / float(pixels), 0.0, 1.0).astype(np.float32)
    return np.maximum(mask.astype(np.float32), ramp)


def area_fraction(mask: np.ndarray) -> float:
    """Mean mask value: the fraction of the image that is edited."""
    return float(mask.mean()) if mask.size else 0.0


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the nonzero region, exclusive ends; None for an empty mask."""
    ys, xs = np.nonzero(mask > 0)
    if ys.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
