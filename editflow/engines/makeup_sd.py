"""Diffusers makeup engine (`sd`, task `makeup`): an aligned face crop at the model's resolution,
a colour-transfer start, then masked latent SDEdit with an IP-Adapter image prompt of the
reference's makeup regions and, optionally, a face-landmark ControlNet.

Per row (steps 1-2 and step 5's crop are the engine's host step, engines/makeup_sd_start.py: the mask stage runs
them on CPU, on Ray in CPU actors apart from the GPU edit actors, and the row carries the result;
the engine runs them itself only for a row that comes without it):

1. **Faces**: the reference's and the image's face meshes (MediaPipe, cached per worker by
   `reference_key` / `image_key`); no face in either is a row error.
2. **Start**: the builtin makeup's region-wise colour transfer from the reference face
   (`editflow.engines.makeup_start.makeup_start`), parts from ``params.parts`` (``"lips+eyes"`` or a
   list) or else every part of the image's face lying mostly inside the row's mask.
3. **Mask**: the row's mask minus the eye openings and irises (face mesh: `eye_opening`), so the
   eyeballs keep their exact pixels whatever the mask (``params.protect_eyes: false`` to allow).
4. **Aligned crop** (editflow.engines.aligned): the image's face rotated so the eye line is level,
   cropped square around the face (``params.face_margin``, default 0.25 of the face box on each
   side) and resized to ``params.face_size`` (default: the model's resolution, 512 on SD 1.5) —
   upscaled for a small face, so the lips span many latent rows. The result is mapped back and
   written only where the mask is set: every other pixel keeps its exact value.
5. **Reference**: the IP-Adapter's image prompt is an aligned crop of the reference around its
   makeup regions only (brows, eyes, lips; ``params.reference_margin``, default 0.15), not the
   whole face, so less of the reference's identity, skin tone and lighting leaks in. Its
   embedding is cached per worker.
6. **ControlNet** (optional, ``params.controlnet``: hub id or folder of a diffusers
   `ControlNetModel`, e.g. one trained on MediaPipe face-mesh drawings; ``controlnet_scale``
   default 1.0): its condition is the image's own face mesh drawn in the crop
   (editflow.engines.controlnet.draw_face_mesh), its residuals go into every UNet call, so the
   target's shapes and identity hold.
7. **Sampler**: the masked sampler from the noised start under the mask (SDEdit, ``strength``
   default 0.5, 30 DDIM steps, guidance 5), with the prompt (the row's, or "a close-up photo of a
   face wearing makeup") and the IP-Adapter embedding (editflow.engines.ipadapter; ``params.ip_adapter``,
   ``ip_adapter_scale``, ...). The model is the row's SD checkpoint (9-channel inpainting or
   4-channel; default SD 1.5 inpainting).

The result column ``adapter`` records the IP-Adapter (and ControlNet) used. Seeds and batching are
the `sd` engine's: per-row CPU generators, one row per network call on CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from editflow.engines.aligned import plan_aligned_crop
from editflow.engines.base import EditRequest, EditResult, EngineError
from editflow.engines.ipadapter import IPAdapterParams, IPAdapterSDEngine, RefJob, array_key, sampler_settings
from editflow.engines.makeup_sd_start import (  # noqa: F401  (the crop stays importable from here)
    SDMakeupStartParams, makeup_region_crop,
)
from editflow.engines.params import param
from editflow.engines.window import check_request

__all__ = ["SDMakeupEngine", "makeup_region_crop", "DEFAULT_PROMPT"]

TASKS = frozenset({"makeup"})
DEFAULT_PROMPT = "a close-up photo of a face wearing makeup"
DEFAULT_STEPS = 30
DEFAULT_STRENGTH = 0.5
DEFAULT_GUIDANCE = 5.0
DEFAULT_FACE_MARGIN = 0.25  # of the face box, each side, around the target face
DEFAULT_CONTROLNET_SCALE = 1.0


@dataclass
class MakeupJob(RefJob):
    """A RefJob with the ControlNet it asks for and its condition drawing (crop pixels)."""

    controlnet: str | None = None
    control: torch.Tensor | None = None  # [1, 3, s, s] in [0, 1]
    control_scale: float = DEFAULT_CONTROLNET_SCALE

    def key(self) -> tuple:
        return (*super().key(), self.controlnet, self.control_scale)

    def memory_key(self) -> tuple:
        return (*super().memory_key(), self.controlnet is not None)  # the ControlNet's activations


@dataclass(frozen=True)
class SDMakeupParams(IPAdapterParams, SDMakeupStartParams):
    """Row params of the `sd` makeup: the IP-Adapter's and sampler's, the start's, the face crop's, the ControlNet's."""

    face_size: int | None = param(None, "side of the eye-level face crop the model sees (default: the model's resolution)")
    face_margin: float = param(DEFAULT_FACE_MARGIN, "margin around the target face box, each side, fraction of the box")
    protect_eyes: bool = param(True, "never repaint the eye openings")
    controlnet: str | None = param(None, "a face-landmark ControlNet (hub id or folder; or the engine option)")
    controlnet_scale: float = param(DEFAULT_CONTROLNET_SCALE, "ControlNet residual scale")


class SDMakeupEngine(IPAdapterSDEngine):
    """Makeup transfer on an aligned, upscaled face crop: colour-transfer start + masked SDEdit with
    an IP-Adapter on the reference's makeup regions and an optional face-landmark ControlNet."""

    name = "sd"
    tasks = TASKS
    Params = SDMakeupParams
    weights = ("SD + IP-Adapter, optionally a face-landmark ControlNet (`params.controlnet`: a diffusers "
               "`ControlNetModel` hub id or folder, e.g. one trained on MediaPipe face-mesh drawings; "
               "`controlnet_scale`)")
    summary = ("on the face rotated level and cropped square at the model's resolution (upscaled for small faces; "
               "`params.face_size`, `face_margin`): the builtin makeup start, then masked latent SDEdit (strength "
               "0.5) with IP-Adapter on the reference's makeup regions only (brows, eyes, lips; not the whole face) "
               "and, with a ControlNet, our face mesh drawn as its condition; eye openings and irises are never "
               "repainted whatever the mask (`params.protect_eyes: false` to allow); mapped back where the mask is "
               "set")

    def __init__(self, pipe: Any, model: str = "in-memory", device: str | None = None, **options: Any) -> None:
        super().__init__(pipe, model=model, device=device, **options)
        self.controlnets: dict[str, Any] = {}

    def start(self, request: EditRequest) -> tuple[np.ndarray, np.ndarray, str]:
        """(start image, reference makeup-regions crop, crop cache key) for a makeup row.

        The start is the builtin makeup's region-wise colour transfer (`makeup_start`) with the same
        faces and parts, made by the host step (engines/makeup_sd_start.py): in the mask stage, or
        here when the row carries none; no face in the reference (or the image) is a row error
        (NoFaceError)."""
        host = self.with_host(request).host
        p = self.params_of(request)
        key = f"{request.reference_key or array_key(request.reference)}:regions:{p.reference_face}:{float(p.reference_margin):.4f}"
        return host["start"], host["reference_crop"], key

    def controlnet(self, spec: str) -> Any:
        if spec not in self.controlnets:
            from editflow.engines.controlnet import load_controlnet

            self.controlnets.clear()  # one resident ControlNet per worker
            self.controlnets[spec] = load_controlnet(spec, self.dtype, self.device)
        return self.controlnets[spec]

    # -- jobs ----------------------------------------------------------------------------------

    def _prepare(self, index: int, request: EditRequest) -> MakeupJob:  # type: ignore[override]
        check_request(request, TASKS, self.name)
        if request.reference is None:
            raise EngineError("makeup needs a reference: the makeup face image (column `reference`)")
        ref = request.reference
        if ref.ndim != 3 or ref.shape[2] != 3 or ref.dtype != np.uint8:
            raise EngineError(f"the makeup reference must be H×W×3 uint8, got {ref.shape} {ref.dtype}")
        p = self.params_of(request)
        spec = self.spec_for(request)
        request = self.with_host(request)  # the CPU start work, unless the mask stage did it
        start, crop, crop_key = self.start(request)
        face = request.host["face"]
        mask = request.mask
        if p.protect_eyes:
            mask = np.where(request.host["eye_opening"], 0, mask).astype(mask.dtype, copy=False)
            if not (mask > 0).any():
                raise EngineError("the mask covers only the eye openings, which makeup leaves alone")
        size = int(p.face_size if p.face_size is not None else self.resolution)
        if size < self.multiple or size % self.multiple:
            raise EngineError(f"params.face_size must be a positive multiple of {self.multiple}, got {size}")
        plan = plan_aligned_crop(face, size, float(p.face_margin),
                                 region=mask > 0)
        s = sampler_settings(request, p, DEFAULT_GUIDANCE, DEFAULT_STEPS, DEFAULT_STRENGTH)
        request = dataclasses.replace(request, prompt=request.prompt or DEFAULT_PROMPT)
        job = MakeupJob(index, request, plan, plan.image(request.image), plan.mask(mask), "sampler",  # type: ignore[arg-type]
                        s["steps"], s["strength"], s["guidance"], s["jumps"], s["scheduler"], s["eta"], {},
                        spec=spec, reference=crop, reference_key=crop_key, init=plan.image(start))
        controlnet = p.controlnet or self.options.get("controlnet")
        if controlnet:
            from editflow.engines.controlnet import condition_tensor, draw_face_mesh

            job.controlnet = str(controlnet)
            job.control_scale = float(p.controlnet_scale)
            job.control = condition_tensor(draw_face_mesh(plan.points(face), size))
        return job

    def _run(self, jobs: list[Any]) -> list[EditResult]:
        first = jobs[0]
        self.denoiser.controlnet = self.controlnet(first.controlnet) if first.controlnet else None
        return self._run_sampler(jobs)

    def adapter_description(self, job: Any) -> str:
        text = super().adapter_description(job)
        if getattr(job, "controlnet", None):
            text += f"; controlnet {job.controlnet} scale={job.control_scale:g}"
        return text

    def _result(self, job: Any, image: np.ndarray, nfe: int, scheduler: str) -> EditResult:
        result = super()._result(job, image, nfe, scheduler)
        if job.jumps != (1, 1):
            result.jump_length, result.jump_n_sample = job.jumps
        return result
