"""Make the demo's try-on and makeup references (run from the repo root; needs editflow[masks]):

    python manifests/assets/make_tryon_makeup_assets.py

* garment_tshirt_checked.png — a blue checked T-shirt on white, drawn here (a product photo with a
  plain background, as the builtin try-on expects);
* makeup_reference.png — a closer crop of scikit-image's astronaut (public domain, NASA) with plum
  lipstick and darker brows painted on through her face-mesh lips and brows masks.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def checked_tshirt(size: int = 256, period: int = 16) -> np.ndarray:
    s = size / 256.0
    yy, xx = np.mgrid[0:size, 0:size]
    base, dark = np.array([40, 90, 190], np.float32), np.array([20, 45, 120], np.float32)
    band = max(2, period // 4)
    vert, horiz = (xx % period) < band, (yy % period) < band
    cloth = np.where((vert & horiz)[..., None], dark, np.where((vert | horiz)[..., None], (base + dark) / 2, base))
    outline = np.array([[88, 20], [108, 30], [128, 34], [148, 30], [168, 20], [230, 60], [210, 100], [184, 86],
                        [184, 236], [72, 236], [72, 86], [46, 100], [26, 60]], np.float32) * s
    silhouette = np.zeros((size, size), np.uint8)
    cv2.fillPoly(silhouette, [np.round(outline).astype(np.int32)], 1, lineType=cv2.LINE_AA)
    image = np.full((size, size, 3), 255, np.uint8)
    image[silhouette > 0] = cloth.astype(np.uint8)[silhouette > 0]
    return image


def makeup_reference(size: int = 160) -> np.ndarray:
    from skimage import data

    from editflow.masks.face import FaceLandmarker, part_masks

    face = cv2.resize(data.astronaut()[30:250, 140:360], (size, size), interpolation=cv2.INTER_AREA)
    landmarker = FaceLandmarker()
    try:
        parts = part_masks(landmarker.detect(face)[0], face.shape[:2])
    finally:
        landmarker.close()
    lab = cv2.cvtColor(face.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    lips = cv2.dilate(parts["lips"], np.ones((3, 3), np.uint8)).astype(bool)
    v = lab[lips]
    v[:, 0] *= 0.75
    v[:, 1] = 48 + 0.5 * (v[:, 1] - v[:, 1].mean())  # plum: red-magenta ...
    v[:, 2] = -8 + 0.5 * (v[:, 2] - v[:, 2].mean())  # ... slightly blue
    lab[lips] = v
    brows = parts["brows"].astype(bool)
    lab[brows, 0] *= 0.6
    rgb = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


if __name__ == "__main__":
    Image.fromarray(checked_tshirt()).save(HERE / "garment_tshirt_checked.png", optimize=True)
    Image.fromarray(makeup_reference()).save(HERE / "makeup_reference.png", optimize=True)
    for name in ("garment_tshirt_checked.png", "makeup_reference.png"):
        print(name, (HERE / name).stat().st_size, "bytes")
