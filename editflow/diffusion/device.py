"""One device and dtype policy for every diffusers-backed engine.

* **Inputs go to the execution device** (`execution_device`): under accelerate's offload hooks
  (`enable_model_cpu_offload`, `enable_sequential_cpu_offload`) a module's ``.device`` reads
  ``cpu`` (or ``meta``) while its forward runs on the hook's execution device; the hooks move
  weights, never inputs.
* **Inference only**: every network is frozen (`freeze`: ``eval()``, ``requires_grad_(False)``)
  and engines run their batches under ``torch.inference_mode()``, so nothing an engine caches
  (garment latents, image embeddings) keeps an autograd graph alive.
* **VAE upcast only where the model needs it** (`vae_dtype`, `vae_in`): in fp16 a VAE whose
  config sets ``force_upcast`` (every SDXL VAE; SD 1.x/2.x configs too) runs in fp32 on the
  editflow sampler path. diffusers' pipelines manage their own VAE (the SD inpaint pipeline has no
  upcast logic and needs the VAE in the UNet's dtype; the SDXL one upcasts and then casts back to
  fp16), so for a pipeline call the VAE is put in the UNet's dtype and restored afterwards.
* **Attention slicing after adapter loads** (`slice_attention`, `plain_attention`): diffusers
  rebuilds attention processors with ``processor.__class__()`` when it loads or unloads an
  IP-Adapter, which `SlicedAttnProcessor` (it needs ``slice_size``) cannot survive; the engine
  puts plain processors back before, and slices every non-adapter layer again after.
* **Out of memory**: a group that does not fit is split and retried, and the engine remembers
  the row count that fitted for later groups of that size (editflow.engines.base.run_grouped,
  RowLimits).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = [
    "execution_device", "freeze", "freeze_pipeline", "has_offload_hooks", "vae_dtype", "vae_in",
    "pipeline_vae", "slice_attention", "plain_attention", "uncompiled",
]

PIPELINE_MODULES = ("unet", "vae", "text_encoder", "text_encoder_2", "image_encoder", "safety_checker")


def execution_device(module: Any, default: torch.device | str | None = None) -> torch.device:
    """Where `module`'s forward runs: an accelerate hook's ``execution_device`` when the module
    (or a submodule) carries one, else where its weights are (as diffusers' ``_execution_device``)."""
    for m in module.modules():
        hook = getattr(m, "_hf_hook", None)
        for h in (hook, *getattr(hook, "hooks", ())):  # accelerate's SequentialHook holds several
            device = getattr(h, "execution_device", None)
            if device is not None:
                return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    if default is not None:
        return torch.device(default)
    weight = next(iter(module.parameters()), None)
    return weight.device if weight is not None else torch.device(getattr(module, "device", "cpu"))


def uncompiled(module: Any) -> Any:
    """The module under torch.compile's wrapper (the `compile` switch), else `module`: its parameter
    and module names then read as diffusers writes them, without the wrapper's ``_orig_mod.``."""
    from diffusers.utils.torch_utils import unwrap_module

    return unwrap_module(module)


def has_offload_hooks(module: Any) -> bool:
    return any(getattr(m, "_hf_hook", None) is not None for m in module.modules())


def freeze(*modules: Any) -> None:
    """Inference only: eval mode, no gradients on any parameter."""
    for module in modules:
        if isinstance(module, torch.nn.Module):
            module.eval()
            module.requires_grad_(False)


def freeze_pipeline(pipe: Any) -> None:
    freeze(*(getattr(pipe, name, None) for name in PIPELINE_MODULES))


def vae_dtype(vae: Any, model_dtype: torch.dtype) -> torch.dtype:
    """The VAE's dtype on the sampler path: fp32 when fp16 would overflow (config ``force_upcast``)."""
    if model_dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        return torch.float32
    return model_dtype


def vae_in(vae: Any, dtype: torch.dtype) -> None:
    """Put the VAE in `dtype` (no-op when it already is)."""
    if vae.dtype != dtype:
        vae.to(dtype=dtype)


@contextmanager
def pipeline_vae(vae: Any, pipeline_dtype: torch.dtype, own_dtype: torch.dtype) -> Iterator[None]:
    """The VAE in the pipeline's dtype for a diffusers pipeline call, back in `own_dtype` after
    (also when the pipeline changed it, as the SDXL inpaint pipeline's fp16 cast-back does)."""
    vae_in(vae, pipeline_dtype)
    try:
        yield
    finally:
        vae_in(vae, own_dtype)


def _is_ip_processor(processor: Any) -> bool:
    return "IPAdapter" in type(processor).__name__


def plain_attention(unet: Any, sdpa: bool = True) -> None:
    """Every non-adapter attention layer back on diffusers' default processor (SDPA, or the
    classic one when `sdpa` is off); adapter layers are kept."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    procs = {name: (p if _is_ip_processor(p) else (AttnProcessor2_0() if sdpa else AttnProcessor()))
             for name, p in unet.attn_processors.items()}
    unet.set_attn_processor(procs)


def slice_attention(unet: Any) -> None:
    """diffusers' ``enable_attention_slicing("auto")`` (half the head dimension per slice) on every
    non-adapter attention layer; IP-Adapter layers keep their processor (and the image prompt)."""
    from diffusers.models.attention_processor import Attention, SlicedAttnProcessor

    for module in unet.modules():
        if isinstance(module, Attention) and not _is_ip_processor(module.processor):
            module.set_processor(SlicedAttnProcessor(max(1, int(module.sliceable_head_dim) // 2)))
