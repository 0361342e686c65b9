"""The classical baseline: cv2.inpaint (Telea or Navier-Stokes). No weights, no diffusion (nfe 0)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from editflow.engines.base import EditRequest, EditResult, Engine, EngineError

METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}


class OpenCVEngine(Engine):
    """Fill the mask from its border with OpenCV's fast marching (Telea) or Navier-Stokes method.

    Row params: `method` ("telea" default, or "ns") and `radius` (px, default 5). Every task is
    treated as a fill of the masked region; prompts and references are ignored.
    """

    name = "opencv"
    tasks = frozenset({"inpaint", "sdedit", "repaint"})

    def __init__(self, model: str | None = None, device: str | None = None, **options: Any) -> None:
        super().__init__(model=model, device="cpu", **options)

    def edit_batch(self, requests: list[EditRequest]) -> list[EditResult | Exception]:
        results: list[EditResult | Exception] = []
        for request in requests:
            try:
                results.append(self._edit(request))
            except Exception as exc:
                results.append(exc)
        return results

    def _edit(self, request: EditRequest) -> EditResult:
        if request.task not in self.tasks:
            raise EngineError(f"engine opencv cannot run task {request.task}; use engine builtin")
        method = str(request.params.get("method", "telea")).lower()
        if method not in METHODS:
            raise EngineError(f"opencv method must be one of {', '.join(METHODS)}, got {method!r}")
        radius = float(request.params.get("radius", 5))
        hole = (request.mask > 0).astype(np.uint8) * 255
        bgr = cv2.cvtColor(request.image, cv2.COLOR_RGB2BGR)
        filled = cv2.cvtColor(cv2.inpaint(bgr, hole, radius, METHODS[method]), cv2.COLOR_BGR2RGB)
        height, width = request.image.shape[:2]
        return EditResult(image=filled, nfe=0, scheduler=f"cv2.inpaint:{method}", proc_width=width, proc_height=height,
                          model=f"cv2-{method}")
