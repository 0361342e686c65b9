"""One VAE encode call per micro-batch inside diffusers' inpaint pipelines.

Given a list of per-row generators (editflow always passes one per row), diffusers 0.42's
``StableDiffusionInpaintPipeline._encode_vae_image`` and ``StableDiffusionXLInpaintPipeline``'s
loop ``vae.encode(image[i:i+1])`` row by row, for the init image and again for the masked image:
on a GPU a micro-batch of 8 rows makes 16 small VAE calls. `batch_vae_encode` gives the pipeline
instance a version that encodes the whole micro-batch in one call and then samples each row's
latent from its own generator: ``DiagonalGaussianDistribution.sample`` with a generator list draws
row i from generator i (diffusers' ``randn_tensor``), exactly the numbers the loop draws, so only
the VAE's batch size changes (one row per call on CPU, where bytes are unchanged anyway).
Everything else is diffusers' own: the SDXL pipeline's fp32 upcast of a ``force_upcast`` VAE and
its cast back, the scaling factor.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["batch_vae_encode"]


def _is_xl(pipe: Any) -> bool | None:
    """Which of diffusers' two encodes `pipe` has: SDXL's (upcasts a ``force_upcast`` VAE to fp32,
    returns latents in the input's dtype: True) or SD's (neither: False); None for another kind."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    own = type(pipe)._encode_vae_image
    if own is StableDiffusionXLInpaintPipeline._encode_vae_image:
        return True
    if own is StableDiffusionInpaintPipeline._encode_vae_image:
        return False
    return None


def _encode_vae_image(pipe: Any, image: torch.Tensor, generator: Any, xl: bool) -> torch.Tensor:
    """diffusers' ``_encode_vae_image`` (SD or SDXL semantics by `xl`) with one VAE call."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import retrieve_latents

    if not (isinstance(generator, list) and len(generator) == image.shape[0]):
        return type(pipe)._encode_vae_image(pipe, image, generator)  # one generator (or a mismatch): diffusers as is
    vae = pipe.vae
    dtype = image.dtype
    upcast = xl and bool(vae.config.force_upcast)
    if upcast:
        image = image.float()
        vae.to(dtype=torch.float32)
    latents = retrieve_latents(vae.encode(image), generator=generator)  # row i sampled from generator[i]
    if upcast:
        vae.to(dtype=dtype)
    if xl:
        latents = latents.to(dtype)
    return vae.config.scaling_factor * latents


def batch_vae_encode(pipe: Any) -> bool:
    """Make `pipe` (an SD or SDXL inpaint pipeline instance) VAE-encode a micro-batch in one call;
    False (and `pipe` untouched) for a pipeline of another kind."""
    xl = _is_xl(pipe)
    if xl is None:
        return False
    pipe._encode_vae_image = functools.partial(_encode_vae_image, pipe, xl=xl)
    return True
