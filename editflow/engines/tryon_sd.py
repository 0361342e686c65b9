"""Diffusers try-on engines, category-aware (upper, lower, dress), both through the masked sampler.

``sd-ipadapter`` (`SDIPAdapterTryOnEngine`)
    The row's model is an SD inpainting checkpoint (default SD 1.5 inpainting; a 4-channel SD
    works too, by latent RePaint). The garment photo, padded to a square on white, goes through
    the CLIP image encoder into an IP-Adapter (editflow.engines.ipadapter: ``params.ip_adapter``,
    ``ip_adapter_weight``, ``image_encoder``, ``ip_adapter_scale``; default h94/IP-Adapter
    ``models/ip-adapter_sd15.safetensors``). The person's garment mask is repainted at strength 1
    (inpaint; a lower ``strength`` is masked SDEdit from the person) with the text prompt — the
    row's, or "a photo of a person wearing <an upper-body garment | lower-body garment | a dress>"
    — and the image prompt; classifier-free guidance uses the negative prompt and a zero image
    embedding. Default 30 DDIM steps, guidance 7.5.

``concat`` (`ConcatTryOnEngine`), CatVTON-style, implemented from the paper (arXiv 2407.15886)
    The person window and the garment (resized to the window and padded on white) are encoded by
    the VAE and laid side by side, ``[person | garment]`` along the width. The 9-channel inpainting
    UNet gets the mask channel ``[garment mask | 0]`` and the masked-image latents ``[person with
    the mask zeroed | garment]``: the garment half is fully known (the sampler keeps it on the
    forward-noised garment at every step, RePaint's known region) and only the person half under
    the mask is denoised. There is no text: the text encoder is dropped, encoder states are zeros,
    and (``params.cross_attention``: ``skip``, the default) every cross-attention layer passes its
    input through, as the paper removes cross-attention; ``zeros`` runs the layers on the zero
    states instead. Only the person half is decoded. Classifier-free guidance (default 2.5, the
    paper's best range 2.5-3.5) contrasts with the garment zeroed in the masked-image latents.
    The paper trains only the self-attention weights: ``params.attention`` (or the engine option)
    is a .safetensors file of the UNet's ``attn1`` parameters, applied onto the UNet, every key
    checked to be a self-attention parameter of the right shape. Keys are diffusers parameter names
    (``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight``, an optional ``unet.``
    prefix), or ``<i>.<param>`` indexing the UNet's modules whose name contains ``attn1`` in
    ``named_modules`` order. ``attention: none`` runs the base inpainting UNet unchanged
    (for experiments; without trained attention weights the result is plain inpainting).

Both: the garment's encoding (IP-Adapter image embedding; garment latents per window size) is
cached per worker by the reference's content hash (``EditRequest.reference_key``), so a catalog
run encodes each garment once per actor (``EditResult.reference_cached``; engine option
``cache=False`` turns it off). Windows, padding and paste-back are the `sd` engine's
(editflow.engines.crop); every row has its own CPU generator and, on CPU, the networks run one row
at a time, so a row's bytes are the same alone or in any batch. Rows without a reference or a
category are row errors.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from editflow.diffusion.sampler import SamplerConfig, masked_sample
from editflow.engines.base import EditRequest, EditResult, EngineError
from editflow.engines.crop import CropPlan
from editflow.engines.ipadapter import IPAdapterSDEngine, RefJob, array_key, pad_to_square, sampler_settings
from editflow.diffusion.unets import LatentUNetDenoiser, chunks, guided_epsilon
from editflow.engines.params import param
from editflow.engines.sd import SDEngine
from editflow.engines.window import WindowParams, check_request, generators, plan_window
from editflow.lru import LRUCache
from editflow.models import ModelInfo, ModelNotAvailableError
from editflow.tasks import CATEGORIES

__all__ = [
    "CATEGORIES", "default_prompt", "check_tryon", "SDIPAdapterTryOnEngine", "ConcatTryOnEngine",
    "attention_parameters", "load_attention_weights", "garment_window",
]

TASKS = frozenset({"tryon"})
_GARMENT_WORDS = {"upper": "an upper-body garment", "lower": "a lower-body garment", "dress": "a dress"}
DEFAULT_STEPS = 30
IPADAPTER_GUIDANCE = 7.5
CONCAT_GUIDANCE = 2.5


def default_prompt(category: str) -> str:
    return f"a photo of a person wearing {_GARMENT_WORDS[category]}"


def check_tryon(request: EditRequest, engine: str) -> str:
    """Task, image, mask, reference and category of a try-on row; returns the category."""
    check_request(request, TASKS, engine)
    if request.reference is None:
        raise EngineError("tryon needs a reference: the garment image (column `reference`)")
    ref = request.reference
    if ref.ndim != 3 or ref.shape[2] != 3 or ref.dtype != np.uint8 or min(ref.shape[:2]) < 1:
        raise EngineError(f"the garment reference must be H×W×3 uint8, got {ref.shape} {ref.dtype}")
    category = (request.category or "").strip().lower()
    if not category:
        raise EngineError(f"tryon needs a category ({', '.join(CATEGORIES)})")
    if category not in CATEGORIES:
        raise EngineError(f"unknown try-on category {request.category!r}; expected one of {', '.join(CATEGORIES)}")
    return category


# ---------------------------------------------------------------------------------------------
# sd-ipadapter


class SDIPAdapterTryOnEngine(IPAdapterSDEngine):
    """SD inpainting + IP-Adapter on the garment image, through the masked sampler."""

    name = "sd-ipadapter"
    tasks = TASKS
    models = (
        ModelInfo("stable-diffusion-v1-5/stable-diffusion-inpainting", "SD 1.5 inpaint + IP-Adapter (try-on)",
                  "any SD model `sd` takes; the adapter comes from params ip_adapter"),
        ModelInfo("h94/IP-Adapter", "IP-Adapter weights + CLIP image encoder",
                  "models/ip-adapter_sd15.safetensors and models/image_encoder (the params' default)"),
    )
    summary = ("SD inpainting conditioned on the garment image through diffusers' `load_ip_adapter`, prompt optional "
               "(default from the category), through editflow's sampler")

    def _prepare(self, index: int, request: EditRequest) -> RefJob:  # type: ignore[override]
        category = check_tryon(request, self.name)
        p = self.params_of(request)
        spec = self.spec_for(request)
        plan = plan_window(request, p, self.resolution, self.multiple)
        s = sampler_settings(request, p, IPADAPTER_GUIDANCE, DEFAULT_STEPS)
        request = dataclasses.replace(request, prompt=request.prompt or default_prompt(category))
        return RefJob(index, request, plan, plan.image(request.image), plan.mask(request.mask), "sampler",
                      s["steps"], s["strength"], s["guidance"], s["jumps"], s["scheduler"], s["eta"], {},
                      spec=spec, reference=pad_to_square(request.reference), reference_key=request.reference_key)

    def _result(self, job: Any, image: np.ndarray, nfe: int, scheduler: str) -> EditResult:
        result = super()._result(job, image, nfe, scheduler)
        if job.jumps != (1, 1):
            result.jump_length, result.jump_n_sample = job.jumps
        return result


# ---------------------------------------------------------------------------------------------
# concat (CatVTON-style)


def attention_parameters(unet: Any) -> dict[str, torch.nn.Parameter]:
    """Every self-attention (attn1) parameter of the UNet by its diffusers name."""
    return {name: p for name, p in unet.named_parameters() if ".attn1." in name}


def _indexed_attention(unet: Any) -> list[tuple[str, torch.nn.Module]]:
    return [(name, m) for name, m in unet.named_modules() if "attn1" in name]


def load_attention_weights(unet: Any, path: str | os.PathLike) -> int:
    """Copy a .safetensors state dict of self-attention weights onto `unet`; return the count.

    Every key must name a self-attention parameter of the same shape (diffusers names, optionally
    prefixed ``unet.``, or ``<i>.<param>`` over the UNet's modules whose name contains ``attn1``);
    otherwise EngineError lists the keys that did not match and nothing is changed.
    """
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise ModelNotAvailableError(f"attention weights {str(path)!r} not found: params.attention must be a local "
                                     ".safetensors file of the UNet's self-attention (attn1) parameters")
    if path.suffix.lower() != ".safetensors":
        raise EngineError(f"attention weights must be a .safetensors file, got {path.name}")
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:
        raise EngineError(f"cannot read attention weights {str(path)!r}: {exc}") from exc
    if not state:
        raise EngineError(f"attention weights {str(path)!r} are empty")
    params = attention_parameters(unet)
    indexed = _indexed_attention(unet)
    plan: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    bad: list[str] = []
    for key, value in state.items():
        name = key[len("unet."):] if key.startswith("unet.") else key
        target = params.get(name)
        if target is None:
            m = re.fullmatch(r"(\d+)\.(.+)", name)
            if m and int(m.group(1)) < len(indexed):
                module_name, module = indexed[int(m.group(1))]
                target = dict(module.named_parameters()).get(m.group(2))
                name = f"{module_name}.{m.group(2)}"
        if target is None:
            bad.append(f"{key} (not a self-attention parameter of this UNet)")
        elif tuple(target.shape) != tuple(value.shape):
            bad.append(f"{key} ({tuple(value.shape)}, the UNet's {name} is {tuple(target.shape)})")
        else:
            plan.append((target, value))
    if bad:
        raise EngineError(f"attention weights {path.name}: {len(bad)} of {len(state)} keys do not match the UNet's "
                          f"self-attention parameters, e.g. {'; '.join(bad[:4])}. They must come from a checkpoint "
                          "trained on this base model's attn1 layers")
    with torch.no_grad():
        for target, value in plan:
            target.copy_(value.to(device=target.device, dtype=target.dtype))
    return len(plan)


class PassThroughAttnProcessor:
    """A cross-attention layer removed: the layer returns its (normalised) input unchanged."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Any = None,
                 attention_mask: Any = None, temb: Any = None, **kwargs: Any) -> torch.Tensor:
        return hidden_states


def garment_window(reference: np.ndarray, height: int, width: int, fill: int = 255) -> torch.Tensor:
    """The garment resized to fit height×width (aspect kept, never cropped), centred on `fill`;
    [1, 3, height, width] in [-1, 1]."""
    from PIL import Image

    h, w = reference.shape[:2]
    scale = min(height / h, width / w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    resized = np.asarray(Image.fromarray(reference).resize((nw, nh), Image.BICUBIC))
    canvas = np.full((height, width, 3), fill, dtype=np.uint8)
    y, x = (height - nh) // 2, (width - nw) // 2
    canvas[y:y + nh, x:x + nw] = resized
    return torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 127.5 - 1.0


@dataclass
class ConcatCondition:
    """Per-row inputs of the side-by-side UNet (latent size, person and garment halves)."""

    mask: torch.Tensor  # [B, 1, h, w + wg]: person mask | 0
    masked_latents: torch.Tensor  # [B, 4, h, w + wg]: masked person | garment
    uncond_latents: torch.Tensor | None  # garment half zeroed; None = no guidance
    guidance_scale: float = 1.0


class ConcatDenoiser(LatentUNetDenoiser):
    """The inpainting UNet over ``[person | garment]`` latents; the sampler sees the person image only."""

    def __init__(self, base: LatentUNetDenoiser, garments: torch.Tensor, cross_attention_dim: int) -> None:
        super().__init__(base.unet, base.vae, base.model_prediction, base.rows_per_call)
        self.garments = garments  # [B, 4, h, wg]
        self.cross_attention_dim = int(cross_attention_dim)

    @property
    def garment_width(self) -> int:
        return int(self.garments.shape[-1])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        person = super().encode(images)
        return torch.cat([person, self.garments.to(person)], dim=-1)

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        return super().decode(samples[..., : samples.shape[-1] - self.garment_width])

    def mask_to_space(self, masks: torch.Tensor) -> torch.Tensor:
        m = super().mask_to_space(masks)
        return torch.cat([m, m.new_zeros(*m.shape[:-1], self.garment_width)], dim=-1)

    def condition(self, images: torch.Tensor, masks: torch.Tensor, guidance: float) -> ConcatCondition:
        binary = (masks > 0).to(images.dtype)  # as LatentUNetDenoiser.inpaint_inputs, person half only
        h, w = images.shape[-2] // self.scale_factor, images.shape[-1] // self.scale_factor
        mask = F.interpolate(binary, size=(h, w))
        masked = LatentUNetDenoiser.encode(self, images * (1 - binary))
        garments = self.garments.to(masked)
        full_mask = torch.cat([mask, mask.new_zeros(*mask.shape[:-1], self.garment_width)], dim=-1)
        cond = torch.cat([masked, garments], dim=-1)
        uncond = torch.cat([masked, torch.zeros_like(garments)], dim=-1) if guidance > 1.0 else None
        return ConcatCondition(full_mask, cond, uncond, guidance)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, alpha_bar_t: torch.Tensor, condition: ConcatCondition) -> torch.Tensor:
        c = condition
        cfg = c.uncond_latents is not None
        dtype, device = self.unet.dtype, self.unet.device
        outs = []
        for sl in chunks(x_t.shape[0], self.rows_per_call):
            x, m, ts = x_t[sl], c.mask[sl].to(x_t), t[sl]
            inp = torch.cat([x, m, c.masked_latents[sl].to(x)], dim=1)
            if cfg:  # [unconditional (garment zeroed), conditional]
                inp = torch.cat([torch.cat([x, m, c.uncond_latents[sl].to(x)], dim=1), inp])
                ts = torch.cat([ts, ts])
            states = torch.zeros(inp.shape[0], 1, self.cross_attention_dim, device=device, dtype=dtype)
            out = self.unet(inp.to(device=device, dtype=dtype), ts.to(device), encoder_hidden_states=states).sample.float()
            outs.append(guided_epsilon(out, cfg, c.guidance_scale, self.model_prediction, alpha_bar_t[sl], x_t[sl]))
        return torch.cat(outs).to(x_t.device)


@dataclass
class ConcatJob:
    index: int
    request: EditRequest
    plan: CropPlan
    image: torch.Tensor
    mask: torch.Tensor
    settings: dict[str, Any]
    attention: str
    fill: int
    reference_cached: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self) -> tuple:
        s = self.settings
        return (self.plan.proc_size, s["steps"], s["strength"], s["guidance"], s["jumps"], s["scheduler"], s["eta"],
                self.attention, self.extra.get("cross"))


@dataclass(frozen=True)
class ConcatParams(WindowParams):
    """Row params of the `concat` try-on (row first, then the engine option of the same name)."""

    attention: str | None = param(None, "the self-attention (attn1) .safetensors checkpoint, or none for the base UNet")
    cross_attention: str | None = param(None, "skip (default: the layers pass their input through) or zeros")
    garment_fill: int = param(255, "grey level the garment is padded with to the window's shape")


class ConcatTryOnEngine(SDEngine):
    """CatVTON-style try-on: person and garment latents side by side in one inpainting UNet
    (the `sd` engine's loading and setup, then no text and the attention layers swapped)."""

    name = "concat"
    tasks = TASKS
    Params = ConcatParams
    models = (
        ModelInfo("stable-diffusion-v1-5/stable-diffusion-inpainting", "SD 1.5 inpaint (9-channel) for concat try-on",
                  "plus your self-attention checkpoint (.safetensors) in params attention"),
    )
    weights = ("a 9-channel SD inpainting model + your self-attention checkpoint (`params.attention`, `.safetensors` "
               "of `attn1` weights)")
    summary = ("CatVTON-style, implemented from the paper: person and garment latents side by side in one UNet, the "
               "person half denoised under the mask, no text encoder, through editflow's sampler")

    def _setup(self, pipe: Any) -> None:
        model, unet = self.model, getattr(pipe, "unet", None)
        if unet is not None and int(unet.config.in_channels) != 9:
            raise EngineError(f"engine concat needs an SD inpainting checkpoint (9-channel UNet); {model!r} has "
                              f"{unet.config.in_channels} input channels")
        if unet is not None and (getattr(pipe, "text_encoder_2", None) is not None
                                 or unet.config.addition_embed_type is not None):
            raise EngineError("engine concat runs SD 1.x/2.x inpainting UNets, not SDXL")
        for name in ("text_encoder", "text_encoder_2", "safety_checker"):  # no text: free the memory
            if getattr(pipe, name, None) is not None:
                setattr(pipe, name, None)
        super()._setup(pipe)
        self.unet, self.vae, self.schedule = pipe.unet.eval(), pipe.vae.eval(), dict(pipe.scheduler.config)
        self.base = self.denoiser
        cross = self.unet.config.cross_attention_dim
        self.cross_attention_dim = int(cross[0] if isinstance(cross, (list, tuple)) else cross)
        self._processors = dict(self.unet.attn_processors)
        self._cross_mode: str | None = None
        self._original = {k: v.detach().clone() for k, v in attention_parameters(self.unet).items()}
        self.attention: str | None = None
        self.cache: LRUCache = LRUCache(int(self.options.get("cache_size", 256)),
                                        enabled=bool(self.options.get("cache", True)))

    # -- per-row settings ------------------------------------------------------------------

    def _attention_spec(self, request: EditRequest) -> str:
        spec = self.params_of(request).attention or self.options.get("attention")
        if not spec:
            raise EngineError(
                "engine concat needs self-attention weights: params.attention (or the engine option `attention`) = "
                "a .safetensors file of the inpainting UNet's attn1 parameters trained for side-by-side try-on; "
                "`none` runs the base UNet unchanged")
        return str(spec)

    def set_attention(self, spec: str) -> None:
        """Apply the attention checkpoint `spec` (restoring the base weights first); 'none' = base."""
        if spec == self.attention:
            return
        with torch.no_grad():
            params = attention_parameters(self.unet)
            for name, value in self._original.items():
                params[name].copy_(value)
        self.attention = None
        if spec.lower() != "none":
            load_attention_weights(self.unet, spec)
        self.attention = spec

    def set_cross_attention(self, mode: str) -> None:
        if mode == self._cross_mode:
            return
        if mode == "skip":
            procs = {k: (PassThroughAttnProcessor() if k.endswith("attn2.processor") else v)
                     for k, v in self._processors.items()}
        else:
            procs = dict(self._processors)
        self.unet.set_attn_processor(procs)
        self._cross_mode = mode

    # -- batch -----------------------------------------------------------------------------

    def _prepare(self, index: int, request: EditRequest) -> ConcatJob:
        check_tryon(request, self.name)
        p = self.params_of(request)
        cross = str(p.cross_attention or self.options.get("cross_attention", "skip")).lower()
        if cross not in ("skip", "zeros"):
            raise EngineError(f"params.cross_attention must be skip or zeros, got {cross!r}")
        plan = plan_window(request, p, self.resolution, self.multiple)
        settings = sampler_settings(request, p, CONCAT_GUIDANCE, DEFAULT_STEPS)
        fill = int(p.garment_fill)
        job = ConcatJob(index, request, plan, plan.image(request.image), plan.mask(request.mask), settings,
                        self._attention_spec(request), fill)
        job.extra["cross"] = cross
        return job

    def garment_latents(self, job: ConcatJob) -> torch.Tensor:
        h, w = job.plan.proc_size
        key = (job.request.reference_key or array_key(job.request.reference), h, w, job.fill)

        def make() -> torch.Tensor:
            window = garment_window(job.request.reference, h, w, job.fill).to(torch.device(self.device))
            return self.base.encode(window).cpu()

        latents, cached = self.cache.get_or_make(key, make)
        job.reference_cached = cached
        return latents

    def _run(self, jobs: list[ConcatJob]) -> list[EditResult]:
        first = jobs[0]
        self.set_attention(first.attention)
        self.set_cross_attention(first.extra["cross"])
        device = torch.device(self.device)
        s = first.settings
        images = torch.cat([j.image for j in jobs]).to(device)
        masks = torch.cat([j.mask for j in jobs]).to(device)
        garments = torch.cat([self.garment_latents(j) for j in jobs]).to(device)
        denoiser = ConcatDenoiser(self.base, garments, self.cross_attention_dim)
        with torch.no_grad():
            condition = denoiser.condition(images, masks, s["guidance"])
        config = SamplerConfig(steps=s["steps"], strength=s["strength"], scheduler=s["scheduler"], eta=s["eta"],
                               jump_length=s["jumps"][0], jump_n_sample=s["jumps"][1], schedule=self.schedule)
        out = masked_sample(denoiser, images, masks, generators(jobs), config, condition=condition)  # type: ignore[arg-type]
        results = []
        for i, job in enumerate(jobs):
            h, w = job.plan.proc_size
            results.append(EditResult(
                image=job.plan.paste(job.request.image, out.images[i]), nfe=out.nfe, scheduler=s["scheduler"],
                steps=s["steps"], strength=s["strength"], guidance_scale=s["guidance"],
                jump_length=s["jumps"][0] if s["jumps"] != (1, 1) else None,
                jump_n_sample=s["jumps"][1] if s["jumps"] != (1, 1) else None,
                proc_width=w, proc_height=h, model=self.model, model_revision=self.revision,
                reference_cached=job.reference_cached,
            ))
        return results

