"""The classical baseline: cv2.inpaint (Telea or Navier-Stokes). No weights, no diffusion (nfe 0)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from editflow.engines.base import EditRequest, EditResult, EngineError, JobEngine, RowJob
from editflow.engines.params import EngineParams, param

METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}


@dataclass(frozen=True)
class OpenCVParams(EngineParams):
    method: str = param("telea", "telea (fast marching) or ns (Navier-Stokes)")
    radius: float = param(5.0, "neighbourhood radius in px")


class OpenCVEngine(JobEngine):
    """Fill the mask from its border with OpenCV's fast marching (Telea) or Navier-Stokes method.

    Every task is treated as a fill of the masked region; prompts and references are ignored.
    """

    name = "opencv"
    tasks = frozenset({"inpaint", "sdedit", "repaint"})
    Params = OpenCVParams
    summary = ("`cv2.inpaint` Telea or Navier-Stokes (`params: {\"method\": \"ns\"}`): the classical baseline, "
               "`nfe` 0")

    def __init__(self, model: str | None = None, device: str | None = None, **options: Any) -> None:
        super().__init__(model=model, device="cpu", **options)

    def _run(self, jobs: list[RowJob]) -> list[EditResult]:  # cv2.inpaint runs one image at a time
        return [self._edit(job.request) for job in jobs]

    def _edit(self, request: EditRequest) -> EditResult:
        if request.task not in self.tasks:
            raise EngineError(f"engine opencv cannot run task {request.task}; use engine builtin")
        p = self.params_of(request)
        method = p.method.lower()
        if method not in METHODS:
            raise EngineError(f"opencv method must be one of {', '.join(METHODS)}, got {method!r}")
        radius = float(p.radius)
        hole = (request.mask > 0).astype(np.uint8) * 255
        bgr = cv2.cvtColor(request.image, cv2.COLOR_RGB2BGR)
        filled = cv2.cvtColor(cv2.inpaint(bgr, hole, radius, METHODS[method]), cv2.COLOR_BGR2RGB)
        height, width = request.image.shape[:2]
        return EditResult(image=filled, nfe=0, scheduler=f"cv2.inpaint:{method}", proc_width=width, proc_height=height,
                          model=f"cv2-{method}")
