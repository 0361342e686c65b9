"""Turn geometric specs (box, polygon, full) into float masks at an image's size; draw a mask over its
photo (previews, the report)."""

from __future__ import annotations

import cv2
import numpy as np

from editflow.masks.spec import MaskSpec


def render_geometric(spec: MaskSpec, width: int, height: int) -> np.ndarray:
    """Draw a box, polygon or full mask; shapes are clipped to the image.

    Raises ValueError when the shape misses the image entirely, which would make an edit a no-op.
    """
    mask = np.zeros((height, width), np.float32)
    if spec.kind == "full":
        mask[:] = 1.0
    elif spec.kind == "box":
        x0, y0, x1, y1 = spec.box  # type: ignore[misc]
        cx0, cy0 = max(0, int(round(x0))), max(0, int(round(y0)))
        cx1, cy1 = min(width, int(round(x1))), min(height, int(round(y1)))
        if cx1 > cx0 and cy1 > cy0:
            mask[cy0:cy1, cx0:cx1] = 1.0
    elif spec.kind == "polygon":
        points = np.round(np.array(spec.points, np.float64)).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(mask, [points], 1.0)
    else:
        raise ValueError(f"not a geometric mask spec: {spec.kind}")
    if not mask.any():
        raise ValueError(f"mask {spec.text!r} lies outside the {width}x{height} image")
    return mask


TINT = np.array([255, 40, 90], np.float32)  # magenta-red: visible on skin, clothes and sky


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, color=TINT) -> np.ndarray:
    """RGB uint8: the photo with the mask tinted over it (alpha x mask) and its edge outlined."""
    rgb = image[..., :3].astype(np.float32)
    weight = (alpha * np.clip(mask, 0.0, 1.0))[..., None]
    out = rgb * (1.0 - weight) + np.asarray(color, np.float32) * weight
    hard = (mask > 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(hard, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(image.shape[:2]) / 400))
    out = np.clip(out, 0, 255).astype(np.uint8)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), thickness)
    return out
