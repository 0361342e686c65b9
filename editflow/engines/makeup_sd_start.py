"""The `sd` makeup's host step (engines/host.py): the CPU work of a makeup row before the GPU's,
run by the mask stage (on Ray, CPU actors apart from the GPU edit actors) or else by the engine.

Per row: the reference's face mesh (cached per worker by `reference_key`), the image's face (the
mask stage's landmarks when it found them, else a mesh of its own, cached by `image_key`), the
builtin makeup's region-wise colour transfer as the SDEdit start (`makeup_start`) and the aligned
crop of the reference's makeup regions for the IP-Adapter. The engine (engines/makeup_sd.py)
gets them as `EditRequest.host`:

  * ``start``: H×W×3 uint8, the image with the reference's colours in the chosen parts;
  * ``reference_crop``: REFERENCE_CROP_SIZE²×3 uint8, the reference's brows, eyes and lips, eye line level;
  * ``face``: 478×2 float32, the image's chosen face (landmarks in pixels);
  * ``eye_opening``: H×W bool, that face's eye openings and irises (never repainted).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from editflow.engines.aligned import plan_aligned_crop
from editflow.engines.base import EditRequest, EngineError
from editflow.engines.host import HostStep
from editflow.engines.makeup_start import MakeupFaceParams, MakeupFaces, makeup_start
from editflow.engines.params import param

__all__ = ["SDMakeupStart", "SDMakeupStartParams", "makeup_region_crop", "DEFAULT_REFERENCE_MARGIN",
           "REFERENCE_CROP_SIZE"]

DEFAULT_REFERENCE_MARGIN = 0.15
REFERENCE_CROP_SIZE = 256  # the CLIP processor resizes to its own size (224 for h94's ViT-H)


@dataclass(frozen=True)
class SDMakeupStartParams(MakeupFaceParams):
    """Row params the `sd` makeup's start reads (the engine's `SDMakeupParams` extends them)."""

    reference_margin: float = param(DEFAULT_REFERENCE_MARGIN, "margin of the reference's makeup-regions crop")


def makeup_region_crop(image: np.ndarray, points: np.ndarray, margin: float = DEFAULT_REFERENCE_MARGIN,
                       size: int = REFERENCE_CROP_SIZE) -> np.ndarray:
    """The reference's makeup regions (brows, eyes, lips), eye line level, in a size×size crop."""
    from editflow.masks.face import topology

    topo = topology()
    index = sorted({i for loop in topo.eyes for i in loop} | {i for c in topo.lips for i in c}
                   | {i for brow in topo.brows for edge in brow for i in edge})
    crop = plan_aligned_crop(points, size, margin, box_points=points[index])
    return cv2.warpAffine(image, crop.matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


class SDMakeupStart(HostStep):
    """Faces, colour-transfer start and reference crop of an `sd` makeup row (the module docstring)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.faces = MakeupFaces(options)  # one landmarker and the face caches, per worker

    def close(self) -> None:
        self.faces.close()

    def run(self, request: EditRequest) -> dict[str, np.ndarray]:
        # OpenCV's worker pool spinning beside torch's threads slows the start's mesh warp ~100x
        # on a small CPU (measured: 0.1 s -> 10-30 s at 256 px); the start runs on one OpenCV thread.
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            return self._run(request)
        finally:
            cv2.setNumThreads(threads)

    def _run(self, request: EditRequest) -> dict[str, np.ndarray]:
        if request.reference is None:
            raise EngineError("makeup needs a reference: the makeup face image (column `reference`)")
        p = start_params(request)
        ref, tgt, parts, _ = self.faces.prepare(request, p)
        start = np.asarray(makeup_start(request.image, request.reference, parts, target_face=tgt, reference_face=ref,
                                        warp_weight=p.warp_weight))
        if start.shape != request.image.shape:
            raise EngineError(f"makeup start is {start.shape}, expected {request.image.shape}")
        return {
            "start": start.astype(np.uint8, copy=False),
            "reference_crop": makeup_region_crop(request.reference, ref.face.points, float(p.reference_margin)),
            "face": np.asarray(tgt.face.points, np.float32),
            "eye_opening": np.asarray(tgt.parts["eye_opening"], bool),
        }


def start_params(request: EditRequest) -> SDMakeupStartParams:
    """The start's params of a row: the engine's parsed params, or (in the mask stage) the row's
    keys the start reads; the engine checks the whole set, so other keys are its business."""
    if isinstance(request.typed_params, SDMakeupStartParams):
        return request.typed_params
    names = {f.name for f in dataclasses.fields(SDMakeupStartParams)}
    return SDMakeupStartParams.parse({k: v for k, v in (request.params or {}).items() if k in names}, "sd")
