"""What the window-based diffusers engines (sd, ddpm, the try-on and makeup ones) share: row params
for the window and the sampler, the prepared job, and the request checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from editflow.diffusion.generators import row_generators
from editflow.engines.base import EditRequest, EngineError
from editflow.engines.crop import CropPlan, plan_crop
from editflow.engines.params import EngineParams, param

__all__ = ["WindowParams", "Job", "check_request", "generators", "plan_window"]


@dataclass(frozen=True)
class WindowParams(EngineParams):
    """Row params of every window-based diffusers engine."""

    max_side: int | None = param(None, "long side of the processed window in px (default: the model's resolution)")
    context: float = param(0.5, "context margin around the mask box, fraction of the box")
    scheduler: str = param("ddim", "the editflow sampler's scheduler: ddim or ddpm")
    eta: float = param(0.0, "DDIM eta: 0 deterministic, 1 ancestral")


def plan_window(request: EditRequest, params: WindowParams, resolution: int, multiple: int) -> CropPlan:
    """The window around the row's mask the model sees (editflow.engines.crop)."""
    max_side = params.max_side if params.max_side is not None else resolution
    return plan_crop(request.mask, int(max_side), multiple, float(params.context))


@dataclass
class Job:
    """One request, prepared: its window, tensors at processing size and its settings."""

    index: int
    request: EditRequest
    plan: CropPlan
    image: torch.Tensor  # [1, 3, h, w] in [-1, 1], padded
    mask: torch.Tensor  # [1, 1, h, w] in [0, 1], padded with 0
    path: str  # "pipeline" | "sampler"
    steps: int
    strength: float
    guidance: float
    jumps: tuple[int, int]
    scheduler: str
    eta: float
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self) -> tuple:
        """Rows with the same key run through one call."""
        r = self.request
        return (self.path, self.plan.proc_size, self.steps, self.strength, self.guidance, self.jumps,
                self.scheduler, self.eta, r.negative_prompt is None,
                tuple(sorted((k, repr(v)) for k, v in self.extra.items())))

    def memory_key(self) -> tuple:
        """What a call's memory depends on: the path, the processing size and classifier-free
        guidance (a second UNet row per row); not steps, strength or the scheduler."""
        return (self.path, self.plan.proc_size, self.guidance > 1.0)


def check_request(request: EditRequest, tasks: frozenset[str], engine: str) -> None:
    if request.task not in tasks:
        raise EngineError(f"engine {engine} cannot run task {request.task!r}; tasks: {', '.join(sorted(tasks))}")
    image, mask = request.image, request.mask
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or mask.shape != image.shape[:2]:
        raise EngineError(f"image must be H×W×3 uint8 and mask H×W, got {image.shape} {image.dtype} and {mask.shape}")
    if not (mask > 0).any():
        raise EngineError("mask is empty: nothing to edit")


def generators(jobs: list[Job]) -> list[torch.Generator]:
    """One fresh CPU generator per row (editflow.diffusion.generators)."""
    return row_generators(j.request.seed for j in jobs)
