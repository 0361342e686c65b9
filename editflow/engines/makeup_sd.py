"""Diffusers makeup engine (`sd`, task `makeup`): colour-transfer start, then masked latent SDEdit
with an IP-Adapter image prompt of the reference face.

Per row:

1. **Start**: the builtin makeup's region-wise colour transfer from the reference face
   (`editflow.engines.makeup.makeup_start`) with the builtin's faces and parts: the reference's
   and the image's face meshes (MediaPipe, cached per worker by `reference_key` / `image_key`),
   parts from ``params.parts`` (``"lips+eyes"`` or a list) or else every part of the image's face
   lying mostly inside the row's mask. No face in the reference (or the image) is a row error.
2. **Reference face**: the reference's face box, grown by ``params.face_margin`` (fraction of the
   box, default 0.25) and squared: the IP-Adapter's image prompt. Its embedding is cached per
   worker by the reference's content hash.
3. **Sampler**: the masked sampler from the noised start under the row's mask (SDEdit,
   ``strength`` default 0.5, 30 DDIM steps, guidance 5), with the SD UNet conditioned on the
   prompt (the row's, or "a close-up photo of a face wearing makeup") and the IP-Adapter
   embedding of the face crop (editflow.engines.ipadapter; ``params.ip_adapter``,
   ``ip_adapter_scale``, ...). The model is the row's SD checkpoint (9-channel inpainting or
   4-channel; default SD 1.5 inpainting).
4. **Identity**: outside the mask nothing is repainted: the sampler keeps the known region on the
   forward-noised original, pastes input pixels back bit for bit, and the edit stage composites
   by the mask again.

Windows (a face in a large photo is processed at the model's resolution around the mask), seeds
and batching are the `sd` engine's: per-row CPU generators, one row per network call on CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from editflow.engines.base import EditRequest, EditResult, EngineError
from editflow.engines.ipadapter import (
    IPAdapterParams, IPAdapterSDEngine, RefJob, array_key, pad_to_square, sampler_settings,
)
from editflow.engines.makeup import MakeupFaceParams, MakeupFaces, makeup_start
from editflow.engines.params import param
from editflow.engines.window import check_request, plan_window

__all__ = ["SDMakeupEngine", "face_crop", "DEFAULT_PROMPT"]

TASKS = frozenset({"makeup"})
DEFAULT_PROMPT = "a close-up photo of a face wearing makeup"
DEFAULT_STEPS = 30
DEFAULT_STRENGTH = 0.5
DEFAULT_GUIDANCE = 5.0
DEFAULT_FACE_MARGIN = 0.25


def face_crop(image: np.ndarray, box: tuple[float, float, float, float], margin: float = DEFAULT_FACE_MARGIN) -> np.ndarray:
    """A square crop around `box` (x0, y0, x1, y1) grown by `margin` × its long side, clipped to the image."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * max(0.0, margin))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    h, w = image.shape[:2]
    left, top = int(max(0, np.floor(cx - side / 2))), int(max(0, np.floor(cy - side / 2)))
    right, bottom = int(min(w, np.ceil(cx + side / 2))), int(min(h, np.ceil(cy + side / 2)))
    if right - left < 2 or bottom - top < 2:
        raise EngineError("the face in the makeup reference is too small to crop")
    return pad_to_square(image[top:bottom, left:right], fill=0)


@dataclass(frozen=True)
class SDMakeupParams(IPAdapterParams, MakeupFaceParams):
    """Row params of the `sd` makeup: the IP-Adapter window's, the start's, and the face crop's."""

    face_margin: float = param(DEFAULT_FACE_MARGIN, "the reference face crop's margin, fraction of the face box")


class SDMakeupEngine(IPAdapterSDEngine):
    """Makeup transfer: colour-transfer start + masked SDEdit with an IP-Adapter on the reference face."""

    name = "sd"
    tasks = TASKS
    Params = SDMakeupParams
    weights = "SD + IP-Adapter"
    summary = "the builtin makeup start, then masked latent SDEdit (strength 0.5) with IP-Adapter on the reference face crop"

    def __init__(self, pipe: Any, model: str = "in-memory", device: str | None = None, **options: Any) -> None:
        super().__init__(pipe, model=model, device=device, **options)
        self.faces = MakeupFaces(options)  # the builtin makeup's prepared faces (landmarks, part masks)

    def close(self) -> None:
        self.faces.close()

    def start(self, request: EditRequest) -> tuple[np.ndarray, np.ndarray, str]:
        """(start image, reference face crop, crop cache key) for a makeup row.

        The start is the builtin makeup's region-wise colour transfer (`makeup_start`) with the same
        faces and parts; no face in the reference (or the image) is a row error (NoFaceError)."""
        import cv2

        # OpenCV's worker pool spinning beside torch's threads slows the start's scipy mesh warp ~100x
        # on a small CPU (measured: 0.1 s -> 10-30 s at 256 px); the start runs on one OpenCV thread.
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            return self._start(request)
        finally:
            cv2.setNumThreads(threads)

    def _start(self, request: EditRequest) -> tuple[np.ndarray, np.ndarray, str]:
        p = self.params_of(request)
        ref, tgt, parts, _ = self.faces.prepare(request, p)
        start = np.asarray(makeup_start(request.image, request.reference, parts, target_face=tgt, reference_face=ref,
                                        warp_weight=p.warp_weight))
        if start.shape != request.image.shape:
            raise EngineError(f"makeup start is {start.shape}, expected {request.image.shape}")
        margin = float(p.face_margin)
        crop = face_crop(request.reference, ref.face.box, margin)
        key = f"{request.reference_key or array_key(request.reference)}:face:{p.reference_face}:{margin:.4f}"
        return start.astype(np.uint8, copy=False), crop, key

    # -- jobs ----------------------------------------------------------------------------------

    def _prepare(self, index: int, request: EditRequest) -> RefJob:  # type: ignore[override]
        check_request(request, TASKS, self.name)
        if request.reference is None:
            raise EngineError("makeup needs a reference: the makeup face image (column `reference`)")
        ref = request.reference
        if ref.ndim != 3 or ref.shape[2] != 3 or ref.dtype != np.uint8:
            raise EngineError(f"the makeup reference must be H×W×3 uint8, got {ref.shape} {ref.dtype}")
        p = self.params_of(request)
        spec = self.spec_for(request)
        start, crop, crop_key = self.start(request)
        plan = plan_window(request, p, self.resolution, self.multiple)
        s = sampler_settings(request, p, DEFAULT_GUIDANCE, DEFAULT_STEPS, DEFAULT_STRENGTH)
        request = dataclasses.replace(request, prompt=request.prompt or DEFAULT_PROMPT)
        return RefJob(index, request, plan, plan.image(request.image), plan.mask(request.mask), "sampler",
                      s["steps"], s["strength"], s["guidance"], s["jumps"], s["scheduler"], s["eta"], {},
                      spec=spec, reference=crop, reference_key=crop_key, init=plan.image(start))

    def _result(self, job: Any, image: np.ndarray, nfe: int, scheduler: str) -> EditResult:
        result = super()._result(job, image, nfe, scheduler)
        if job.jumps != (1, 1):
            result.jump_length, result.jump_n_sample = job.jumps
        return result
