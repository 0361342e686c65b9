"""Stable Diffusion engine (`sd`): SD 1.x/2.x and SDXL checkpoints, inpainting or plain.

The row's model (or `--model`) is a hub id (``id@revision``), a local diffusers folder or a
single ``.safetensors`` file (editflow.models). Whether the checkpoint is an inpainting one is
read from the loaded UNet (``in_channels``: 9 = inpaint, 4 = plain). What runs:

| UNet | task | how |
|---|---|---|
| 9-channel | inpaint, sdedit | diffusers' own inpaint pipeline (SD or SDXL), strength = SDEdit |
| 9-channel | repaint | editflow's masked sampler with the 9-channel denoiser + RePaint jumps |
| 4-channel | inpaint | the sampler at strength 1 (latent RePaint known-region, no jumps) |
| 4-channel | sdedit | the sampler at the row's strength (latent SDEdit, masked) |
| 4-channel | repaint | the sampler with the RePaint jump schedule |

Rows set `params.sampler: true` to run a 9-channel inpaint/sdedit through the sampler as well.

Every row has its own CPU generator (a list is passed to the pipeline; the sampler draws each
row's noise from its own), its own prompt / negative prompt, and the group's guidance, strength,
steps. Rows are grouped by processing size and settings; within a group the networks run
`micro_batch` rows at a time (1 on CPU: a row's bytes are the same alone or in any batch; the
whole group on GPU: fastest, equal up to float rounding).

Sizes: images no larger than the model's native resolution (``unet.sample_size x
vae_scale_factor``, e.g. 512 for SD 1.5, 1024 for SDXL) are processed whole; larger ones as a
window around the mask with a context margin (editflow.engines.crop), scaled down only when
the window itself exceeds the resolution; every window is reflect-padded to a multiple of 8.
The result comes back at the input's size and the edit stage pastes unmasked pixels back exactly.

Row params: `SDParams` (below).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from editflow.diffusion.pipeline_encode import batch_vae_encode
from editflow.diffusion.sampler import SamplerConfig, masked_sample
from editflow.diffusion.unets import LatentCondition, LatentUNetDenoiser, chunks
from editflow.engines.base import EditRequest, EditResult, EngineError, JobEngine
from editflow.diffusion.device import execution_device, freeze, freeze_pipeline, pipeline_vae, vae_dtype, vae_in
from editflow.engines.params import param
from editflow.engines.window import Job, WindowParams, check_request, generators, plan_window
from editflow.models import (
    ModelInfo, RuntimeOptions, apply_switches, load_sd_pipeline, select_device, select_dtype,
)
from editflow.tasks import STRENGTH as DEFAULT_STRENGTH

TASKS = frozenset({"inpaint", "sdedit", "repaint"})
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE = 7.5
DEFAULT_JUMPS = (5, 2)  # RePaint (jump_length, jump_n_sample): a light resampling for latent models


@dataclass(frozen=True)
class SDParams(WindowParams):
    """Row params of the `sd` engine."""

    sampler: bool = param(False, "run a 9-channel inpaint/sdedit through the editflow sampler, not diffusers' pipeline")
    prompt_2: str | None = param(None, "SDXL's second prompt")
    negative_prompt_2: str | None = param(None, "SDXL's second negative prompt")


def jumps_for(request: EditRequest) -> tuple[int, int]:
    if request.task != "repaint":
        return (1, 1)
    return (int(request.jump_length or DEFAULT_JUMPS[0]), int(request.jump_n_sample or DEFAULT_JUMPS[1]))


def open_sd_model(model: str, device: str, options: dict[str, Any], share: bool = True) -> tuple[Any, Any, str | None]:
    """Load `model` for an SD-based engine's `from_pretrained`: (pipeline, source, revision).

    With a ``shared_models`` dict in `options` (the edit stage passes one per worker), engines of
    one model, device, dtype and switches (`sd`, `sd` makeup, `sd-ipadapter`) share one loaded
    pipeline instead of holding a copy each; `share=False` for engines that change the weights."""
    runtime = RuntimeOptions.from_options(options)
    dtype = select_dtype(device, runtime.dtype)
    shared = options.get("shared_models") if share else None
    key = (model, str(device), str(dtype), repr(runtime.switch_key()))
    if shared is not None and key in shared:
        return shared[key]
    loaded = load_sd_pipeline(model, dtype)
    if shared is not None:
        shared[key] = loaded
    return loaded


def release_adapter(pipe: Any) -> None:
    """Unload the IP-Adapter an engine sharing `pipe` left in its UNet (the plain UNet takes no image prompt)."""
    adapter = getattr(pipe, "_editflow_adapter", None)
    if adapter is not None:
        adapter.unload()
        pipe._editflow_adapter = None


class SDEngine(JobEngine):
    """Stable Diffusion / SDXL, inpainting (9-channel) or plain (4-channel) checkpoints.

    Built from a loaded diffusers pipeline (`SDEngine(pipe)`: benchmarks, notebooks) or by
    `from_pretrained(model)` (hub id, folder or single file; editflow.models)."""

    name = "sd"
    tasks = TASKS
    Params = SDParams
    #: engines that leave the weights as loaded share one pipeline per worker (`open_sd_model`)
    shares_pipeline = True
    models = (
        ModelInfo("stable-diffusion-v1-5/stable-diffusion-inpainting", "SD 1.5 inpaint (9-channel)",
                  "inpaint via diffusers' pipeline; repaint/sdedit via the editflow sampler"),
        ModelInfo("stabilityai/stable-diffusion-2-inpainting", "SD 2 inpaint (9-channel)"),
        ModelInfo("diffusers/stable-diffusion-xl-1.0-inpainting-0.1", "SDXL inpaint (9-channel)"),
        ModelInfo("stable-diffusion-v1-5/stable-diffusion-v1-5", "SD 1.5 (4-channel)",
                  "latent SDEdit / RePaint / masked inpaint through the editflow sampler"),
        ModelInfo("stabilityai/stable-diffusion-2-1-base", "SD 2.1 base (4-channel)"),
        ModelInfo("stabilityai/stable-diffusion-xl-base-1.0", "SDXL base (4-channel)"),
    )
    weights = "SD 1.x/2.x/SDXL (`--model` hub id[@revision], diffusers folder or `.safetensors`)"
    summary = ("9-channel inpainting checkpoints through diffusers' inpaint pipeline (per-row generators, prompts, "
               "guidance, strength); 4-channel checkpoints — and RePaint on 9-channel ones — through editflow's "
               "sampler in latent space (CFG, the jump schedule). Images larger than the model's resolution are "
               "edited in a window around the mask and returned at full size")

    def __init__(self, pipe: Any, model: str = "in-memory", device: str | None = None, source: Any = None,
                 revision: str | None = None, **options: Any) -> None:
        super().__init__(model=model, device=select_device(device), **options)
        self.runtime = RuntimeOptions.from_options(options)
        self.dtype = select_dtype(self.device, self.runtime.dtype)
        self.source, self.revision = source, revision
        unet = getattr(pipe, "unet", None)
        self._setup(pipe if unet is None or unet.dtype == self.dtype else pipe.to(dtype=self.dtype))

    @classmethod
    def from_pretrained(cls, model: str | None = None, device: str | None = None, **options: Any) -> SDEngine:
        """Load `model` (default: the first of `models`) in the device's dtype and build the engine."""
        model = model or cls.default_model()
        device = select_device(device)
        pipe, source, revision = open_sd_model(model, device, options, share=cls.shares_pipeline)
        return cls(pipe, model=model, device=device, source=source, revision=revision, **options)

    def _setup(self, pipe: Any) -> None:
        model = self.model
        if getattr(pipe, "unet", None) is None or getattr(pipe, "vae", None) is None:
            raise EngineError(f"model {model!r} ({type(pipe).__name__}) has no unet/vae: not a Stable Diffusion checkpoint")
        vae = pipe.vae
        self.vae_dtype = vae_dtype(vae, self.dtype)  # fp32 where fp16 overflows (the SDXL VAE)
        self._take_safety_checker(pipe)
        if getattr(pipe, "_editflow_switches", None) is None:  # a shared pipeline is set up once
            vae_in(vae, self.vae_dtype)
            pipe._editflow_switches = apply_switches(pipe, self.runtime, self.device)
            freeze_pipeline(pipe)
        self.switches = list(pipe._editflow_switches)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.xl = getattr(pipe, "text_encoder_2", None) is not None or getattr(pipe, "tokenizer_2", None) is not None
        self.in_channels = int(pipe.unet.config.in_channels)
        self.rows_per_call = self.runtime.rows_per_call(self.device)
        self.denoiser = self._denoiser(pipe)
        sample_size = pipe.unet.config.sample_size
        sample_size = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
        self.resolution = int(sample_size) * self.denoiser.scale_factor
        self.multiple = max(8, self.denoiser.scale_factor)  # VAE needs its factor; 8 keeps every SD happy
        self._inpaint_pipe = None

    def _denoiser(self, pipe: Any) -> LatentUNetDenoiser:
        """The sampler's view of the pipeline's UNet and VAE."""
        return LatentUNetDenoiser(pipe.unet, pipe.vae, pipe.scheduler.config.get("prediction_type", "epsilon"),
                                  self.rows_per_call)

    def _take_safety_checker(self, pipe: Any) -> None:
        """Hub SD 1.x/2.x pipelines come with a safety checker that blackens flagged images and
        reports nothing; editflow takes it out of the pipeline. Off by default; with the
        ``safety_checker`` switch it runs on every output (pipeline and sampler paths alike) and
        sets `EditResult.nsfw` (the edit stage turns a flagged row into an error row)."""
        if getattr(pipe, "_editflow_safety", None) is None:  # kept aside once, for every engine sharing pipe
            pipe._editflow_safety = (getattr(pipe, "safety_checker", None), getattr(pipe, "feature_extractor", None))
            if pipe._editflow_safety[0] is not None:
                pipe.register_modules(safety_checker=None)
        checker, self.safety_extractor = pipe._editflow_safety
        self.safety = None
        if not self.runtime.safety_checker:
            return
        if checker is None or self.safety_extractor is None:
            raise EngineError(f"model {self.model!r} has no safety checker (safety_checker + feature_extractor) "
                              "to run; turn the safety_checker switch off for it")
        self.safety = checker.to(self.device)
        freeze(self.safety)

    def flag_unsafe(self, images: list[np.ndarray]) -> list[bool]:
        """The safety checker's verdict on each output image (H×W×3 uint8)."""
        from PIL import Image

        pixels = self.safety_extractor([Image.fromarray(a) for a in images], return_tensors="pt").pixel_values
        dtype = next(self.safety.parameters()).dtype
        device = execution_device(self.safety, self.device)
        _, flags = self.safety(images=[a.astype(np.float32) / 255.0 for a in images],
                               clip_input=pixels.to(device=device, dtype=dtype))
        return [bool(f) for f in flags]

    def edit_batch(self, requests: list[EditRequest]) -> list[EditResult | Exception]:
        with torch.inference_mode():
            results = super().edit_batch(requests)
            if self.safety is not None:
                done = [i for i, r in enumerate(results) if isinstance(r, EditResult)]
                try:
                    flags = self.flag_unsafe([results[i].image for i in done]) if done else []
                except Exception as exc:  # unchecked output never passes as checked
                    flags = [exc] * len(done)
                for i, flag in zip(done, flags):
                    if isinstance(flag, Exception):
                        results[i] = flag
                    else:
                        results[i].nsfw = flag
        return results

    @property
    def inpaint_pipe(self) -> Any:
        """diffusers' inpaint pipeline sharing this engine's components (9-channel models)."""
        if self._inpaint_pipe is None:
            from diffusers import AutoPipelineForInpainting

            pipe = self.pipe
            if "Inpaint" not in type(pipe).__name__:
                pipe = AutoPipelineForInpainting.from_pipe(pipe)
                pipe.set_progress_bar_config(disable=True)
            # diffusers encodes the init and masked images row by row when given a generator per
            # row; one VAE call per micro-batch, each row's latent still drawn from its generator
            batch_vae_encode(pipe)
            self._inpaint_pipe = pipe
        return self._inpaint_pipe

    @property
    def kind(self) -> str:
        return f"{'sdxl' if self.xl else 'sd'}-{'inpaint' if self.in_channels == 9 else 'base'}"

    # -------------------------------------------------------------------------------------

    def _prepare(self, index: int, request: EditRequest) -> Job:
        check_request(request, TASKS, self.name)
        p = self.params_of(request)
        plan = plan_window(request, p, self.resolution, self.multiple)
        use_pipeline = self.in_channels == 9 and request.task in ("inpaint", "sdedit") and not p.sampler
        strength = request.strength if request.strength is not None else DEFAULT_STRENGTH[request.task]
        if use_pipeline and self.xl and request.strength is None and request.task == "inpaint":
            strength = 0.9999  # diffusers' SDXL inpaint default: init latents keep image information
        steps = int(request.steps or DEFAULT_STEPS)
        guidance = float(request.guidance_scale if request.guidance_scale is not None else DEFAULT_GUIDANCE)
        scheduler = p.scheduler.lower()
        eta = float(p.eta)
        if not use_pipeline:
            SamplerConfig(steps=steps, strength=float(strength), scheduler=scheduler, eta=eta,
                          jump_length=jumps_for(request)[0], jump_n_sample=jumps_for(request)[1]).validate()
        elif int(steps * strength) < 1:
            raise EngineError(f"steps={steps} with strength={strength} gives no denoising step")
        extra = {k: getattr(p, k) for k in ("prompt_2", "negative_prompt_2") if getattr(p, k) is not None}
        return Job(index, request, plan, plan.image(request.image), plan.mask(request.mask),
                   "pipeline" if use_pipeline else "sampler", steps, float(strength), guidance,
                   jumps_for(request), "pipeline" if use_pipeline else scheduler, eta, extra)

    def _run(self, jobs: list[Job]) -> list[EditResult]:
        release_adapter(self.pipe)
        return self._run_pipeline(jobs) if jobs[0].path == "pipeline" else self._run_sampler(jobs)

    def _result(self, job: Job, image: np.ndarray, nfe: int, scheduler: str) -> EditResult:
        h, w = job.plan.proc_size
        return EditResult(
            image=image, nfe=nfe, scheduler=scheduler, steps=job.steps, strength=job.strength,
            guidance_scale=job.guidance, jump_length=job.jumps[0] if job.request.task == "repaint" else None,
            jump_n_sample=job.jumps[1] if job.request.task == "repaint" else None,
            proc_width=w, proc_height=h, model=self.model, model_revision=self.revision,
        )

    # -- diffusers' inpaint pipeline (9-channel inpaint / sdedit) ----------------------------

    def _run_pipeline(self, jobs: list[Job]) -> list[EditResult]:
        pipe = self.inpaint_pipe
        h, w = jobs[0].plan.proc_size
        first = jobs[0]
        results = []
        for sl in chunks(len(jobs), self.rows_per_call):
            part = jobs[sl]
            images = np.stack([j.plan.image01(j.request.image) for j in part])
            # editflow mask 1 = edit == diffusers mask_image white = repaint; any edit pixel is repainted.
            masks = np.stack([(j.mask[0, 0] > 0).float().numpy()[..., None] for j in part])
            calls = [0]

            def count(_pipe, _i, _t, kwargs):
                calls[0] += 1
                return kwargs

            kwargs: dict[str, Any] = dict(
                prompt=[j.request.prompt or "" for j in part],
                negative_prompt=None if first.request.negative_prompt is None else
                [j.request.negative_prompt or "" for j in part],
                image=images, mask_image=masks, height=h, width=w, strength=first.strength,
                num_inference_steps=first.steps, guidance_scale=first.guidance,
                generator=generators(part), output_type="np", callback_on_step_end=count,
            )
            if self.xl:
                for key in ("prompt_2", "negative_prompt_2"):
                    if key in first.extra:
                        kwargs[key] = [j.extra.get(key) or "" for j in part]
            with pipeline_vae(pipe.vae, pipe.unet.dtype, self.vae_dtype):
                out = pipe(**kwargs).images
            for job, array in zip(part, out):
                results.append(self._result(job, job.plan.paste(job.request.image, array), calls[0],
                                            type(pipe.scheduler).__name__))
        return results

    # -- the editflow sampler (4-channel, and 9-channel RePaint) ------------------------------

    def _run_sampler(self, jobs: list[Job]) -> list[EditResult]:
        first = jobs[0]
        device = torch.device(self.device)
        images = torch.cat([j.image for j in jobs]).to(device)
        masks = torch.cat([j.mask for j in jobs]).to(device)
        condition = self.condition(jobs, images, masks)
        config = SamplerConfig(
            steps=first.steps, strength=first.strength, scheduler=first.scheduler, eta=first.eta,
            jump_length=first.jumps[0], jump_n_sample=first.jumps[1], schedule=dict(self.pipe.scheduler.config),
        )
        out = masked_sample(self.denoiser, images, masks, generators(jobs), config, condition=condition)
        return [self._result(job, job.plan.paste(job.request.image, out.images[i]), out.nfe, first.scheduler)
                for i, job in enumerate(jobs)]

    @torch.no_grad()
    def condition(self, jobs: list[Job], images: torch.Tensor, masks: torch.Tensor) -> LatentCondition:
        """Text embeddings (and SDXL pooled embeddings + time ids, 9-channel mask inputs) per row."""
        first = jobs[0]
        cfg = first.guidance > 1.0
        pos, neg, pooled, neg_pooled = [], [], [], []
        for sl in chunks(len(jobs), self.rows_per_call):
            part = jobs[sl]
            prompts = [j.request.prompt or "" for j in part]
            negatives = None if first.request.negative_prompt is None else [j.request.negative_prompt or "" for j in part]
            if self.xl:
                p2 = [j.extra.get("prompt_2") or j.request.prompt or "" for j in part] if "prompt_2" in first.extra else None
                n2 = ([j.extra.get("negative_prompt_2") or "" for j in part]
                      if "negative_prompt_2" in first.extra else None)
                e, ne, pe, npe = self.pipe.encode_prompt(
                    prompts, prompt_2=p2, device=self.device, num_images_per_prompt=1,
                    do_classifier_free_guidance=cfg, negative_prompt=negatives, negative_prompt_2=n2,
                )
                pooled.append(pe)
                neg_pooled.append(npe)
            else:
                e, ne = self.pipe.encode_prompt(prompts, self.device, 1, cfg, negative_prompt=negatives)
            pos.append(e)
            neg.append(ne)
        c = LatentCondition(
            prompt_embeds=torch.cat(pos), negative_embeds=torch.cat(neg) if cfg else None,
            guidance_scale=first.guidance,
        )
        if self.xl:
            c.text_embeds = torch.cat(pooled)
            c.negative_text_embeds = torch.cat(neg_pooled) if cfg else None
            c.time_ids, c.negative_time_ids = self._time_ids(len(jobs), images.shape[-2:])
        if self.in_channels == 9:
            c.mask, c.masked_latents = self.denoiser.inpaint_inputs(images, masks)
        return c

    def _time_ids(self, batch: int, size: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL micro-conditioning: (original size, crop top-left, target size), or with an aesthetic
        score instead of the target size when the UNet was trained that way (inpaint-0.1 refiners)."""
        h, w = int(size[0]), int(size[1])
        unet = self.pipe.unet
        time_dim = int(unet.config.addition_time_embed_dim)
        expected = int(unet.add_embedding.linear_1.in_features)
        proj = expected - 6 * time_dim
        n = 6
        te2 = getattr(self.pipe, "text_encoder_2", None)
        if te2 is not None:
            proj = int(te2.config.projection_dim)
            n = (expected - proj) // time_dim
        if n == 5:
            ids, neg = [h, w, 0, 0, 6.0], [h, w, 0, 0, 2.5]
        elif n == 6:
            ids = neg = [h, w, 0, 0, h, w]
        else:
            raise EngineError(f"cannot build SDXL time ids for an added embedding of {expected} features")
        make = lambda v: torch.tensor([v] * batch, dtype=torch.float32, device=self.device)  # noqa: E731
        return make(ids), make(neg)
