"""Pixel-space DDPM engine (`ddpm`): RePaint with `UNet2DModel` checkpoints through the one sampler.

Models: a hub id such as ``google/ddpm-ema-celebahq-256`` (the RePaint paper's face model) or a
local folder in DDPMPipeline layout (``unet/`` + ``scheduler/``) or bare-model layout
(``config.json`` + weights, optional ``scheduler_config.json``). The schedule (betas, train steps,
clipping, prediction type) is the checkpoint's own.

Tasks (all through `masked_sample` with `PixelUNetDenoiser`, no text):

* repaint — from noise with the RePaint jump schedule (default jump_length 10, jump_n_sample 10 as
  in the paper; `steps` default 50, so about 10x the UNet calls of a plain run — set smaller jumps
  for speed);
* inpaint — the same without resampling;
* sdedit — masked SDEdit at the row's strength (default 0.6).

The sampler defaults to DDIM with eta 1.0 (ancestral, as RePaint samples) — row params
``scheduler`` (ddim, ddpm) and ``eta`` change it (`DDPMParams`). The model sees the image whole
when it is no larger than the UNet's ``sample_size``, else a window around the mask scaled to that
size (editflow.engines.crop; ``max_side`` and ``context`` params); windows are padded to the UNet's
downsampling factor. Unconditional models ignore prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from editflow.diffusion.sampler import SamplerConfig, masked_sample
from editflow.engines.base import EditRequest, EditResult, EngineError, JobEngine
from editflow.diffusion.unets import PixelUNetDenoiser
from editflow.diffusion.device import freeze
from editflow.engines.params import param
from editflow.engines.window import Job, WindowParams, check_request, generators, plan_window
from editflow.models import ModelInfo, RuntimeOptions, load_pixel_unet, select_device, select_dtype
from editflow.tasks import STRENGTH as DEFAULT_STRENGTH

TASKS = frozenset({"inpaint", "sdedit", "repaint"})
DEFAULT_STEPS = 50
DEFAULT_JUMPS = (10, 10)


@dataclass(frozen=True)
class DDPMParams(WindowParams):
    """Row params of the `ddpm` engine."""

    eta: float = param(1.0, "DDIM eta: 1 ancestral (as RePaint samples), 0 deterministic")


class DDPMEngine(JobEngine):
    """RePaint / SDEdit with a pixel-space DDPM UNet: `DDPMEngine(unet, schedule)` or `from_pretrained(model)`."""

    name = "ddpm"
    tasks = TASKS
    Params = DDPMParams
    models = (
        ModelInfo("google/ddpm-ema-celebahq-256", "DDPM pixel UNet (256 px faces)", "RePaint through the editflow sampler"),
        ModelInfo("google/ddpm-ema-church-256", "DDPM pixel UNet (256 px churches)"),
        ModelInfo("google/ddpm-ema-bedroom-256", "DDPM pixel UNet (256 px bedrooms)"),
    )
    weights = "a pixel `UNet2DModel` (e.g. `google/ddpm-ema-celebahq-256`)"
    summary = "RePaint through editflow's sampler (defaults: 50 steps, jumps 10 x 10)"

    @classmethod
    def from_pretrained(cls, model: str | None = None, device: str | None = None, **options: Any) -> DDPMEngine:
        """Load a pixel UNet and its schedule (DDPMPipeline or bare-model layout) and build the engine."""
        model = model or cls.default_model()
        device = select_device(device)
        dtype = select_dtype(device, RuntimeOptions.from_options(options).dtype)
        unet, schedule, source, revision = load_pixel_unet(model, dtype)
        return cls(unet, schedule, model=model, device=device, source=source, revision=revision, **options)

    def __init__(self, unet: Any, schedule: dict[str, Any], model: str = "in-memory", device: str | None = None,
                 source: Any = None, revision: str | None = None, **options: Any) -> None:
        super().__init__(model=model, device=select_device(device), **options)
        self.runtime = RuntimeOptions.from_options(options)
        self.dtype = select_dtype(self.device, self.runtime.dtype)
        self.schedule, self.source, self.revision = schedule, source, revision
        if int(unet.config.in_channels) != 3 or int(unet.config.out_channels) not in (3, 6):
            raise EngineError(f"model {model!r} is not a pixel-space RGB UNet2DModel "
                              f"(in_channels={unet.config.in_channels}, out_channels={unet.config.out_channels})")
        self.unet = unet.to(self.device)
        freeze(self.unet)
        self.denoiser = PixelUNetDenoiser(self.unet, self.schedule.get("prediction_type", "epsilon"),
                                          self.runtime.rows_per_call(self.device))
        size = unet.config.sample_size
        self.resolution = int(size[0] if isinstance(size, (list, tuple)) else size)

    def _prepare(self, index: int, request: EditRequest) -> Job:
        check_request(request, TASKS, self.name)
        p = self.params_of(request)
        plan = plan_window(request, p, self.resolution, self.denoiser.multiple)
        strength = float(request.strength if request.strength is not None else DEFAULT_STRENGTH[request.task])
        jumps = (1, 1)
        if request.task == "repaint":
            jumps = (int(request.jump_length or DEFAULT_JUMPS[0]), int(request.jump_n_sample or DEFAULT_JUMPS[1]))
        job = Job(index, request, plan, plan.image(request.image), plan.mask(request.mask), "sampler",
                  int(request.steps or DEFAULT_STEPS), strength, 0.0, jumps,
                  p.scheduler.lower(), float(p.eta))
        self._config(job).validate()
        return job

    def _config(self, job: Job) -> SamplerConfig:
        return SamplerConfig(steps=job.steps, strength=job.strength, scheduler=job.scheduler, eta=job.eta,
                             jump_length=job.jumps[0], jump_n_sample=job.jumps[1], schedule=dict(self.schedule))

    def edit_batch(self, requests: list[EditRequest]) -> list[EditResult | Exception]:
        with torch.inference_mode():
            return super().edit_batch(requests)

    def _run(self, jobs: list[Job]) -> list[EditResult]:
        device = torch.device(self.device)
        images = torch.cat([j.image for j in jobs]).to(device)
        masks = torch.cat([j.mask for j in jobs]).to(device)
        out = masked_sample(self.denoiser, images, masks, generators(jobs), self._config(jobs[0]))
        results = []
        for i, job in enumerate(jobs):
            h, w = job.plan.proc_size
            repaint = job.request.task == "repaint"
            results.append(EditResult(
                image=job.plan.paste(job.request.image, out.images[i]), nfe=out.nfe, scheduler=job.scheduler,
                steps=job.steps, strength=job.strength, guidance_scale=None,
                jump_length=job.jumps[0] if repaint else None, jump_n_sample=job.jumps[1] if repaint else None,
                proc_width=w, proc_height=h, model=self.model, model_revision=self.revision,
            ))
        return results
