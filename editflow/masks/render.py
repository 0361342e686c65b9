"""Turn geometric specs (box, polygon, full) into float masks at an image's size."""

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
