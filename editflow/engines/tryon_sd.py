"""Diffusers try-on engines, category-aware (upper, lower, dress), both through the masked sampler.

``sd-ipadapter`` (`SDIPAdapterTryOnEngine`)
    The row's model is an SD inpainting checkpoint (default SD 1.5 inpainting; a 4-channel SD
    works too, by latent RePaint). The garment photo, padded to a square on white, goes through
    the CLIP image encoder into an IP-Adapter (editflow.engines.ipadapter: ``params.ip_adapter``,
    ``ip_adapter_weight``, ``image_encoder``, ``ip_adapter_scale``). Default adapter: h94/IP-Adapter
    ``models/ip-adapter-plus_sd15.safetensors`` when that file is on this machine (hub cache or the
    given folder; never downloaded for the choice), else ``models/ip-adapter_sd15.safetensors``; the
    result's ``adapter`` column records which. The person's garment mask is repainted at strength 1
    (inpaint; a lower ``strength`` is masked SDEdit from the person) with the text prompt — the
    row's, or "a photo of a person wearing <an upper-body garment | lower-body garment | a dress>"
    — and the image prompt; classifier-free guidance uses the negative prompt and a zero image
    embedding. Default 30 DDIM steps, guidance 7.5.

``concat`` (`ConcatTryOnEngine`), CatVTON-style, implemented from the paper (arXiv 2407.15886)
    The person frame and the garment (resized to the frame and padded on white) are encoded by
    the VAE and stacked, ``[person ; garment]`` along the height as CatVTON does
    (``params.concat_axis: width`` lays them side by side). The 9-channel inpainting UNet gets the
    mask channel ``[garment mask ; 0]`` and the masked-image latents ``[person with the mask zeroed ;
    garment]``: the garment half is fully known (the sampler keeps it on the forward-noised garment
    at every step, RePaint's known region) and only the person half under the mask is denoised.
    There is no text: the text encoder is dropped, encoder states are zeros, and
    (``params.cross_attention``: ``skip``, the default) every cross-attention layer passes its
    input through, as the paper removes cross-attention; ``zeros`` runs the layers on the zero
    states instead. Only the person half is decoded. Classifier-free guidance contrasts with the
    garment zeroed in the masked-image latents.

    Trained setting by default: the person is seen in a 3:4 (width:height) frame around the mask
    (editflow.engines.frame: the largest such frame in the image over the mask, else the smallest
    around it, padded) resized to the checkpoint's resolution (default: the model's resolution by
    3/4 of it, 512x384 on SD 1.5; ``params.resolution: "1024x768"`` for the 1024 checkpoints;
    ``params.frame: false`` uses the `sd` engine's window instead); CatVTON's sampler: 50 DDIM
    steps, eta 1.0, guidance 2.5 (the row's steps / ``params.eta`` / guidance_scale override).

    Mask-free: on an 8-channel InstructPix2Pix UNet (CatVTON's mask-free checkpoints are trained
    on timbrooks/instruct-pix2pix) the UNet gets ``[x, person ; garment]`` with no mask channel and
    redraws the whole frame; the row's mask still limits what the edit stage keeps. The paper
    states the input (person and garment concatenated, no mask); what we could not check against
    released code is the scale of the condition latents: they are encoded like the noisy latents
    (VAE mode times the scaling factor), and CFG drops the garment as in the masked variant.

    The paper trains only the self-attention weights: ``params.attention`` (or the engine option)
    is a .safetensors file of the UNet's ``attn1`` parameters, applied onto the UNet (see
    `load_attention_weights`: diffusers names, or CatVTON's published ``<i>.<param>`` layout).
    ``attention: none`` runs the base UNet unchanged (for experiments; without trained attention
    weights the result is plain inpainting).

Both: the garment's encoding (IP-Adapter image embedding; garment latents per window size) is
cached per worker by the reference's content hash (``EditRequest.reference_key``), so a catalog
run encodes each garment once per actor (``EditResult.reference_cached``; engine option
``cache=False`` turns it off). Windows, padding and paste-back are the `sd` engine's
(editflow.engines.crop); every row has its own CPU generator and, on CPU, the networks run one row
at a time, so a row's bytes are the same alone or in any batch. Rows without a reference or a
category are row errors.
"""

from __future__ import annotations

import bisect
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
from editflow.diffusion.unets import LatentUNetDenoiser, chunks, guided_epsilon
from editflow.engines.base import EditRequest, EditResult, EngineError
from editflow.engines.crop import CropPlan
from editflow.diffusion.device import execution_device, uncompiled
from editflow.engines.frame import FramePlan, parse_resolution, plan_frame
from editflow.engines.ipadapter import (
    DEFAULT_IP_ADAPTER_WEIGHT, PLUS_IP_ADAPTER_WEIGHT, IPAdapterSDEngine, IPAdapterSpec, RefJob, array_key,
    pad_to_square, sampler_settings, weight_present,
)
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
#: CatVTON's sampler: 50 DDIM steps, eta 1.0, guidance 2.5 (the paper's best range 2.5-3.5)
CONCAT_GUIDANCE = 2.5
CONCAT_STEPS = 50
CONCAT_ETA = 1.0
#: concatenation axis -> latent dim (CatVTON concatenates along height)
CONCAT_AXES = {"height": -2, "width": -1}


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
    weights = ("SD inpainting + IP-Adapter (`params`: `ip_adapter`, `ip_adapter_weight`, `image_encoder`, "
               "`ip_adapter_scale`; default `h94/IP-Adapter` `models/ip-adapter-plus_sd15.safetensors` when that "
               "file is on this machine, else `models/ip-adapter_sd15.safetensors`; the `adapter` column says which)")
    models = (
        ModelInfo("stable-diffusion-v1-5/stable-diffusion-inpainting", "SD 1.5 inpaint + IP-Adapter (try-on)",
                  "any SD model `sd` takes; the adapter comes from params ip_adapter"),
        ModelInfo("h94/IP-Adapter", "IP-Adapter weights + CLIP image encoder",
                  "models/ip-adapter-plus_sd15.safetensors (the try-on default when present), else "
                  "models/ip-adapter_sd15.safetensors; and models/image_encoder"),
    )
    summary = ("SD inpainting conditioned on the garment image through diffusers' `load_ip_adapter` (plus: 16 tokens"
               " from CLIP's patch features, which keeps prints, logos and stripes), prompt optional (default from "
               "the category), through editflow's sampler")

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

    def spec_for(self, request: EditRequest) -> IPAdapterSpec:
        """IP-Adapter-plus (``models/ip-adapter-plus_sd15.safetensors``) when its weights are on this
        machine, else the plain adapter, unless the row or the engine names a weight file."""
        return IPAdapterSpec.from_params(self.params_of(request).given(), self.options,
                                         default_weight=self._default_weight)

    def _default_weight(self, location: str) -> str:
        choices = self.__dict__.setdefault("_weight_choice", {})
        if location not in choices:  # one file-system look-up per adapter location and worker
            plus = weight_present(location, PLUS_IP_ADAPTER_WEIGHT)
            choices[location] = PLUS_IP_ADAPTER_WEIGHT if plus else DEFAULT_IP_ADAPTER_WEIGHT
        return choices[location]

    def _result(self, job: Any, image: np.ndarray, nfe: int, scheduler: str) -> EditResult:
        result = super()._result(job, image, nfe, scheduler)
        if job.jumps != (1, 1):
            result.jump_length, result.jump_n_sample = job.jumps
        return result


# ---------------------------------------------------------------------------------------------
# concat (CatVTON-style)


def attention_parameters(unet: Any) -> dict[str, torch.nn.Parameter]:
    """Every self-attention (attn1) parameter of the UNet by its diffusers name, also when the
    `compile` switch wrapped it (the wrapper's own names carry an ``_orig_mod.`` prefix)."""
    return {name: p for name, p in uncompiled(unet).named_parameters() if ".attn1." in name}


def attention_layers(unet: Any) -> list[tuple[str, list[tuple[str, torch.nn.Module]]]]:
    """Each self-attention layer (module named ``...attn1``) in ``named_modules`` order, with its own
    submodules in that order (offset 0 is the layer itself)."""
    layers: list[tuple[str, list[tuple[str, torch.nn.Module]]]] = []
    for name, module in uncompiled(unet).named_modules():
        if name.split(".")[-1] == "attn1":
            layers.append((name, [(f"{name}.{sub}" if sub else name, m) for sub, m in module.named_modules()]))
    return layers


def _indexed_targets(keys: list[str], layers: list[tuple[str, list[tuple[str, torch.nn.Module]]]],
                     params: dict[str, torch.nn.Parameter]) -> tuple[dict[str, str], list[str]]:
    """Map ``<i>.<param>`` keys (CatVTON's layout) to diffusers parameter names.

    The checkpoint indexes a list of the modules whose name contains ``attn1``; how many entries one
    layer takes depends on the code that made it (diffusers: 7; CatVTON, whose attention processors are
    modules: 8, so its keys run 0.*, 8.*, 16.*). So the stride is not assumed: the k-th distinct index
    carrying ``to_q.weight`` is the k-th self-attention layer, and a key ``<i+d>.<param>`` after it is
    that layer's d-th submodule (``named_modules`` order)."""
    parsed = {}
    for key in keys:
        index, _, rest = key.partition(".")
        parsed[key] = (int(index), rest)
    anchors = sorted({i for i, rest in parsed.values() if rest == "to_q.weight"})
    names: dict[str, str] = {}
    bad: list[str] = []
    if len(anchors) != len(layers):
        bad.append(f"the checkpoint has {len(anchors)} self-attention layers (indices carrying to_q.weight: "
                   f"{_short(anchors)}), the UNet {len(layers)}")
        return names, bad
    for key, (index, rest) in parsed.items():
        k = bisect.bisect_right(anchors, index) - 1
        if k < 0:
            bad.append(f"{key} (before the first self-attention layer)")
            continue
        layer, submodules = layers[k]
        offset = index - anchors[k]
        if offset >= len(submodules):
            bad.append(f"{key} (index {index} is past layer {k}'s {len(submodules)} modules)")
            continue
        prefix = submodules[offset][0]
        name = f"{prefix}.{rest}"
        if name not in params:
            bad.append(f"{key} ({name} is not a parameter of this UNet)")
            continue
        names[key] = name
    return names, bad


def _short(values: list[Any], n: int = 6) -> str:
    return ", ".join(map(str, values[:n])) + (", ..." if len(values) > n else "")


def load_attention_weights(unet: Any, path: str | os.PathLike) -> int:
    """Copy a .safetensors state dict of self-attention weights onto `unet`; return the count.

    Keys are diffusers parameter names (optionally prefixed ``unet.``), or CatVTON's published
    layout ``<i>.<param>`` (see `_indexed_targets`). Every key must land on a self-attention
    parameter of the same shape and every self-attention parameter must be set; otherwise
    EngineError lists the keys that did not match and nothing is changed. Shapes are checked from
    the file's header before any tensor is read.
    """
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise ModelNotAvailableError(f"attention weights {str(path)!r} not found: params.attention must be a local "
                                     ".safetensors file of the UNet's self-attention (attn1) parameters")
    if path.suffix.lower() != ".safetensors":
        raise EngineError(f"attention weights must be a .safetensors file, got {path.name}")
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:
        raise EngineError(f"cannot read attention weights {str(path)!r}: {exc}") from exc
    with handle as fh:
        keys = list(fh.keys())
        if not keys:
            raise EngineError(f"attention weights {str(path)!r} are empty")
        params = attention_parameters(unet)
        indexed = [k for k in keys if re.fullmatch(r"\d+\..+", k)]
        names, bad = _indexed_targets(indexed, attention_layers(unet), params) if indexed else ({}, [])
        for key in keys:
            if key in names or key in indexed:
                continue
            name = key[len("unet."):] if key.startswith("unet.") else key
            if name in params:
                names[key] = name
            else:
                bad.append(f"{key} (not a self-attention parameter of this UNet)")
        for key, name in names.items():
            shape = tuple(fh.get_slice(key).get_shape())
            if shape != tuple(params[name].shape):
                bad.append(f"{key} ({shape}, the UNet's {name} is {tuple(params[name].shape)})")
        if not bad:
            unset = sorted(set(params) - set(names.values()))
            if unset:
                bad.append(f"the UNet's {len(unset)} self-attention parameters not set by the checkpoint, "
                           f"e.g. {_short(unset, 3)}")
        if bad:
            raise EngineError(f"attention weights {path.name} do not match the UNet's self-attention "
                              f"({len(bad)} problem(s) with its {len(keys)} keys), e.g. {'; '.join(bad[:4])}. The file must come from a checkpoint trained on this "
                              "base model's self-attention (attn1) layers: diffusers names or CatVTON's "
                              "<index>.<param> layout")
        with torch.no_grad():
            for key, name in names.items():
                target = params[name]
                target.copy_(fh.get_tensor(key).to(device=target.device, dtype=target.dtype))
    return len(names)


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
    """Per-row inputs of the concatenated UNet (latent size: person and garment halves along `dim`)."""

    mask: torch.Tensor | None  # [B, 1, ...]: person mask | 0; None = mask-free (8-channel UNet)
    cond_latents: torch.Tensor  # [B, 4, ...]: masked person (mask-free: the person) | garment
    uncond_latents: torch.Tensor | None  # garment half zeroed; None = no guidance
    guidance_scale: float = 1.0


class ConcatDenoiser(LatentUNetDenoiser):
    """The UNet over person and garment latents concatenated along height (``dim=-2``, CatVTON's
    layout) or width (``dim=-1``); the sampler sees the person image only.

    9-channel inpainting UNets take ``[x, mask | 0, masked person | garment]``; 8-channel
    (InstructPix2Pix-based, CatVTON's mask-free variant) take ``[x, person | garment]``.
    """

    channels = (8, 9)

    def __init__(self, unet: Any, vae: Any, prediction_type: str = "epsilon", rows_per_call: int | None = None,
                 garments: torch.Tensor | None = None, cross_attention_dim: int = 768, dim: int = -2) -> None:
        super().__init__(unet, vae, prediction_type, rows_per_call)
        if dim not in (-2, -1):
            raise ValueError(f"dim must be -2 (height) or -1 (width), got {dim}")
        self.garments = garments  # [B, 4, h, w] latents of the garment windows
        self.cross_attention_dim = int(cross_attention_dim)
        self.dim = dim

    def with_garments(self, garments: torch.Tensor, dim: int) -> ConcatDenoiser:
        return ConcatDenoiser(self.unet, self.vae, self.model_prediction, self.rows_per_call, garments,
                              self.cross_attention_dim, dim)

    @property
    def mask_free(self) -> bool:
        return self.in_channels == 8

    @property
    def garment_extent(self) -> int:
        return int(self.garments.shape[self.dim])

    def _join(self, person: torch.Tensor, garment: torch.Tensor) -> torch.Tensor:
        return torch.cat([person, garment.to(person)], dim=self.dim)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self._join(super().encode(images), self.garments)

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        return super().decode(samples.narrow(self.dim, 0, samples.shape[self.dim] - self.garment_extent))

    def mask_to_space(self, masks: torch.Tensor) -> torch.Tensor:
        m = super().mask_to_space(masks)
        shape = list(m.shape)
        shape[self.dim] = self.garment_extent
        return self._join(m, m.new_zeros(shape))

    def condition(self, images: torch.Tensor, masks: torch.Tensor, guidance: float) -> ConcatCondition:
        garments = self.garments.to(images)
        if self.mask_free:  # no mask channel: the whole person is the condition
            mask, person = None, LatentUNetDenoiser.encode(self, images)
        else:  # as LatentUNetDenoiser.inpaint_inputs, person half only
            binary = (masks > 0).to(images.dtype)
            h, w = images.shape[-2] // self.scale_factor, images.shape[-1] // self.scale_factor
            mask, person = F.interpolate(binary, size=(h, w)), LatentUNetDenoiser.encode(self, images * (1 - binary))
            shape = list(mask.shape)
            shape[self.dim] = self.garment_extent
            mask = self._join(mask, mask.new_zeros(shape))
        cond = self._join(person, garments)
        uncond = self._join(person, torch.zeros_like(garments)) if guidance > 1.0 else None
        return ConcatCondition(mask, cond, uncond, guidance)

    def unet_inputs(self, x: torch.Tensor, mask: torch.Tensor | None, latents: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, latents.to(x)] if mask is None else [x, mask.to(x), latents.to(x)], dim=1)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, alpha_bar_t: torch.Tensor, condition: ConcatCondition) -> torch.Tensor:
        c = condition
        cfg = c.uncond_latents is not None
        dtype, device = self.unet.dtype, execution_device(self.unet)
        outs = []
        for sl in chunks(x_t.shape[0], self.rows_per_call):
            x, ts = x_t[sl], t[sl]
            m = None if c.mask is None else c.mask[sl]
            inp = self.unet_inputs(x, m, c.cond_latents[sl])
            if cfg:  # [unconditional (garment zeroed), conditional]
                inp = torch.cat([self.unet_inputs(x, m, c.uncond_latents[sl]), inp])
                ts = torch.cat([ts, ts])
            states = torch.zeros(inp.shape[0], 1, self.cross_attention_dim, device=device, dtype=dtype)
            out = self.unet(inp.to(device=device, dtype=dtype), ts.to(device), encoder_hidden_states=states).sample.float()
            outs.append(guided_epsilon(out, cfg, c.guidance_scale, self.model_prediction, alpha_bar_t[sl], x_t[sl]))
        return torch.cat(outs).to(x_t.device)


@dataclass
class ConcatJob:
    index: int
    request: EditRequest
    plan: CropPlan | FramePlan
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
                self.attention, self.extra.get("cross"), self.extra.get("axis"))


@dataclass(frozen=True)
class ConcatParams(WindowParams):
    """Row params of the `concat` try-on (row first, then the engine option of the same name, then the default)."""

    eta: float = param(CONCAT_ETA, "DDIM eta (CatVTON samples with 1.0)")
    context: float | None = param(None, "margin around the mask: default 0.1 of the frame, 0.5 of the box without it")
    attention: str | None = param(None, "the self-attention (attn1) .safetensors checkpoint, or none for the base UNet")
    cross_attention: str | None = param(None, "skip (default: the layers pass their input through) or zeros")
    concat_axis: str | None = param(None, "height (default, CatVTON's layout) or width")
    frame: bool | None = param(None, "CatVTON's 3:4 person frame (default true) or, false, the sd engine's window")
    resolution: str | int | list[int] | None = param(None, "the frame's size, e.g. 512x384 (default: 3:4 at the model's)")
    mask_free: bool | None = param(None, "true: the mask-free variant (needs an 8-channel InstructPix2Pix UNet)")
    garment_fill: int = param(255, "grey level the garment is padded with to the window's shape")


class ConcatTryOnEngine(SDEngine):
    """CatVTON-style try-on: person and garment latents concatenated in one UNet (inpainting, or
    InstructPix2Pix-based for the mask-free variant). Loading and setup are the `sd` engine's; then
    the text encoders go and the attention layers are swapped per row."""

    name = "concat"
    tasks = TASKS
    Params = ConcatParams
    shares_pipeline = False  # its attention weights change per row
    models = (
        ModelInfo("stable-diffusion-v1-5/stable-diffusion-inpainting", "SD 1.5 inpaint (9-channel) for concat try-on",
                  "plus a self-attention checkpoint (.safetensors, e.g. CatVTON's) in params attention"),
        ModelInfo("timbrooks/instruct-pix2pix", "InstructPix2Pix (8-channel): the mask-free concat variant's base",
                  "with a mask-free self-attention checkpoint in params attention"),
    )
    weights = ("a 9-channel SD inpainting model + a self-attention checkpoint (`params.attention`: `.safetensors` of"
               " `attn1` weights, diffusers names or CatVTON's published `<index>.<param>` layout, e.g. "
               "`mix-48k-1024/attention/model.safetensors`); mask-free: an 8-channel InstructPix2Pix model + the "
               "mask-free attention")
    summary = ("CatVTON-style, implemented from the paper: `[person ; garment]` latents stacked along height "
               "(`params.concat_axis: width` for side by side) in one UNet, the person half denoised under the mask,"
               " no text encoder; the person seen in a 3:4 frame around the mask resized to the checkpoint's "
               "resolution (model resolution x 3/4, 512x384 on SD 1.5; `params.resolution: \"1024x768\"`; "
               "`params.frame: false` for the plain window); CatVTON's sampler by default (50 DDIM steps, eta 1, "
               "guidance 2.5); on an 8-channel model the mask-free variant (no mask channel, the whole frame "
               "redrawn, the row's mask still limits what changes)")

    def _setup(self, pipe: Any) -> None:
        model, unet = self.model, getattr(pipe, "unet", None)
        if unet is not None and int(unet.config.in_channels) not in (8, 9):
            raise EngineError(f"engine concat needs an SD inpainting checkpoint (9-channel UNet), or for the mask-free "
                              f"variant an InstructPix2Pix one (8-channel); {model!r} has {unet.config.in_channels} "
                              "input channels")
        if unet is not None and (getattr(pipe, "text_encoder_2", None) is not None
                                 or unet.config.addition_embed_type is not None):
            raise EngineError("engine concat runs SD 1.x/2.x inpainting UNets, not SDXL")
        for name in ("text_encoder", "text_encoder_2", "safety_checker"):  # no text: free the memory
            if getattr(pipe, name, None) is not None:
                setattr(pipe, name, None)
        super()._setup(pipe)
        self.unet, self.vae, self.schedule = pipe.unet.eval(), pipe.vae.eval(), dict(pipe.scheduler.config)
        self.base = self.denoiser
        #: CatVTON's frame: 3:4 (width:height) at the model's resolution, e.g. 512x384 on SD 1.5
        self.frame_size = (self.resolution, self.resolution * 3 // 4 // self.multiple * self.multiple)
        self.mask_free = self.base.mask_free
        self._processors = dict(self.unet.attn_processors)
        self._cross_mode: str | None = None
        self._original = {k: v.detach().clone() for k, v in attention_parameters(self.unet).items()}
        self.attention: str | None = None
        self.cache: LRUCache = LRUCache(int(self.options.get("cache_size", 256)),
                                        enabled=bool(self.options.get("cache", True)))

    def _denoiser(self, pipe: Any) -> ConcatDenoiser:
        cross = pipe.unet.config.cross_attention_dim
        self.cross_attention_dim = int(cross[0] if isinstance(cross, (list, tuple)) else cross)
        return ConcatDenoiser(pipe.unet, pipe.vae, pipe.scheduler.config.get("prediction_type", "epsilon"),
                              self.rows_per_call, cross_attention_dim=self.cross_attention_dim)

    # -- per-row settings ------------------------------------------------------------------

    def _attention_spec(self, request: EditRequest) -> str:
        spec = self.params_of(request).attention or self.options.get("attention")
        if not spec:
            raise EngineError(
                "engine concat needs self-attention weights: params.attention (or the engine option `attention`) = "
                "a .safetensors file of the inpainting UNet's attn1 parameters trained for concatenated try-on "
                "(e.g. CatVTON's mix-48k-1024/attention/model.safetensors); `none` runs the base UNet unchanged")
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

    def _option(self, params: ConcatParams, key: str, default: Any) -> Any:
        value = getattr(params, key)
        value = self.options.get(key) if value is None else value
        return default if value is None else value

    def plan(self, request: EditRequest) -> CropPlan | FramePlan:
        """CatVTON's frame (``params.frame`` true, the default) or the `sd` engine's window around the mask."""
        p = self.params_of(request)
        if not _flag(self._option(p, "frame", True), "frame"):
            return plan_window(request, dataclasses.replace(p, context=0.5 if p.context is None else p.context),
                               self.resolution, self.multiple)
        try:
            size = parse_resolution(self._option(p, "resolution", self.frame_size), self.multiple)
        except ValueError as exc:
            raise EngineError(f"params.resolution: {exc}") from None
        return plan_frame(request.mask, *size, context=float(0.1 if p.context is None else p.context))

    # -- batch -----------------------------------------------------------------------------

    def _prepare(self, index: int, request: EditRequest) -> ConcatJob:
        check_tryon(request, self.name)
        p = self.params_of(request)
        cross = str(self._option(p, "cross_attention", "skip")).lower()
        if cross not in ("skip", "zeros"):
            raise EngineError(f"params.cross_attention must be skip or zeros, got {cross!r}")
        axis = str(self._option(p, "concat_axis", "height")).lower()
        if axis not in CONCAT_AXES:
            raise EngineError(f"params.concat_axis must be height or width, got {axis!r}")
        mask_free = p.mask_free
        if mask_free is not None and _flag(mask_free, "mask_free") != self.mask_free:
            raise EngineError(
                "params.mask_free: true needs the mask-free checkpoint's base, an InstructPix2Pix model (8-channel UNet, "
                "e.g. timbrooks/instruct-pix2pix with CatVTON-MaskFree attention)" if not self.mask_free else
                f"model {self.model!r} is an InstructPix2Pix (8-channel) UNet: it runs mask-free only")
        plan = self.plan(request)
        settings = sampler_settings(request, p, CONCAT_GUIDANCE, CONCAT_STEPS)
        fill = int(p.garment_fill)
        mask = plan.mask(request.mask)
        if self.mask_free:  # the model redraws the whole frame; the edit stage keeps only the row's mask
            mask = torch.ones_like(mask)
        job = ConcatJob(index, request, plan, plan.image(request.image), mask, settings,
                        self._attention_spec(request), fill)
        job.extra.update(cross=cross, axis=axis)
        return job

    def garment_latents(self, job: ConcatJob) -> torch.Tensor:
        h, w = job.plan.proc_size
        key = (job.request.reference_key or array_key(job.request.reference), h, w, job.fill)

        def make() -> torch.Tensor:
            window = garment_window(job.request.reference, h, w, job.fill).to(torch.device(self.device))
            return LatentUNetDenoiser.encode(self.base, window).cpu()

        latents, cached = self.cache.get_or_make(key, make)
        job.reference_cached = cached
        return latents

    def edit_batch(self, requests: list[EditRequest]) -> list[EditResult | Exception]:
        with torch.inference_mode():  # cached garment latents keep no autograd graph
            return super().edit_batch(requests)

    def _run(self, jobs: list[ConcatJob]) -> list[EditResult]:
        first = jobs[0]
        self.set_attention(first.attention)
        self.set_cross_attention(first.extra["cross"])
        device = torch.device(self.device)
        s = first.settings
        images = torch.cat([j.image for j in jobs]).to(device)
        masks = torch.cat([j.mask for j in jobs]).to(device)
        garments = torch.cat([self.garment_latents(j) for j in jobs]).to(device)
        denoiser = self.base.with_garments(garments, CONCAT_AXES[first.extra["axis"]])
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


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise EngineError(f"params.{name} must be true or false, got {value!r}")

