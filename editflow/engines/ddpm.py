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
``scheduler`` (ddim, ddpm) and ``eta`` change it. The model sees the image whole when it is no
larger than the UNet's ``sample_size``, else a window around the mask scaled to that size
(editflow.engines.crop; ``max_side`` and ``context`` params); windows are padded to the UNet's
downsampling factor. Unconditional models ignore prompts.
"""

from __future__ import annotations

from typing import Any

import torch

from editflow.diffusion.sampler import SamplerConfig, masked_sample
from editflow.engines.base import EditRequest, EditResult, EngineError, JobEngine
from editflow.engines.crop import plan_crop
from editflow.engines.device import freeze
from editflow.engines.latent import PixelUNetDenoiser
from editflow.engines.sd import Job, check_request, generators
from editflow.models import DEFAULT_MODELS, RuntimeOptions, load_pixel_unet, select_device, select_dtype

TASKS = frozenset({"inpaint", "sdedit", "repaint"})
DEFAULT_STEPS = 50
DEFAULT_STRENGTH = {"inpaint": 1.0, "sdedit": 0.6, "repaint": 1.0}
DEFAULT_JUMPS = (10, 10)


class DDPMEngine(JobEngine):
    """RePaint / SDEdit with a pixel-space DDPM UNet."""

    name = "ddpm"
    tasks = TASKS

    def __init__(self, model: str | None = None, device: str | None = None, **options: Any) -> None:
        model = model or DEFAULT_MODELS["ddpm"]
        super().__init__(model=model, device=select_device(device), **options)
        self.runtime = RuntimeOptions.from_options(options)
        self.dtype = select_dtype(self.device, self.runtime.dtype)
        unet, self.schedule, self.source, self.revision = load_pixel_unet(model, self.dtype)
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
        p = request.params or {}
        plan = plan_crop(request.mask, int(p.get("max_side", self.resolution)), self.denoiser.multiple,
                         float(p.get("context", 0.5)))
        strength = float(request.strength if request.strength is not None else DEFAULT_STRENGTH[request.task])
        jumps = (1, 1)
        if request.task == "repaint":
            jumps = (int(request.jump_length or DEFAULT_JUMPS[0]), int(request.jump_n_sample or DEFAULT_JUMPS[1]))
        job = Job(index, request, plan, plan.image(request.image), plan.mask(request.mask), "sampler",
                  int(request.steps or DEFAULT_STEPS), strength, 0.0, jumps,
                  str(p.get("scheduler", "ddim")).lower(), float(p.get("eta", 1.0)))
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
