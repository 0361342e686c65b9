"""Denoisers for diffusers UNets, for the one masked sampler (editflow.diffusion.sampler).

* `LatentUNetDenoiser` — a Stable Diffusion (1.x/2.x) or SDXL `UNet2DConditionModel` in VAE
  latent space, with text conditioning and classifier-free guidance. 4-channel UNets take the
  noisy latents; 9-channel inpainting UNets take ``[latents, mask, masked-image latents]``, exactly
  the layout diffusers' inpaint pipelines build (mask 1 = repaint, the masked image is the input
  with the repaint region set to 0 in [-1, 1]), so RePaint resampling runs on inpainting
  checkpoints too.
* `PixelUNetDenoiser` — a pixel-space `UNet2DModel` (DDPM checkpoints), unconditional.

Both return the noise (epsilon) to the sampler; v-prediction models are converted with
eps = sqrt(abar) v + sqrt(1 - abar) x_t. Both run their networks `rows_per_call` rows at a time
(None = the whole batch): with 1, a row's arithmetic never depends on its batch mates, so its
output bytes are the same alone or in any batch (CPU float kernels change with the batch size).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from editflow.diffusion.denoiser import PixelSpace
from editflow.diffusion.device import execution_device

__all__ = ["LatentCondition", "LatentUNetDenoiser", "PixelUNetDenoiser", "chunks", "VAE_ROWS"]

#: rows per VAE call when the networks take the whole group (GPU): a VAE decode at 512 px holds
#: ~2.5 GB of activations per row in fp16, many times a UNet step's, so it never takes a whole group.
VAE_ROWS = 4


def chunks(n: int, size: int | None) -> Iterator[slice]:
    """Slices of [0, n) of at most `size` (all of it when size is None)."""
    step = n if not size else max(1, int(size))
    for start in range(0, n, max(1, step)):
        yield slice(start, min(n, start + step))


@dataclass
class LatentCondition:
    """Per-row conditioning for `LatentUNetDenoiser.predict` (row i of every tensor is row i)."""

    prompt_embeds: torch.Tensor  # [B, L, D]
    negative_embeds: torch.Tensor | None  # [B, L, D]; None = no classifier-free guidance
    guidance_scale: float = 1.0
    #: SDXL added conditioning: pooled text embeddings [B, P] and time ids [B, n]
    text_embeds: torch.Tensor | None = None
    negative_text_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None
    negative_time_ids: torch.Tensor | None = None
    #: 9-channel inpainting UNets: mask at latent size [B, 1, h, w] (1 = repaint), masked-image latents
    mask: torch.Tensor | None = None
    masked_latents: torch.Tensor | None = None
    #: IP-Adapter image embeddings per row ([B, D] or [B, S, D]); None = no image prompt
    image_embeds: torch.Tensor | None = None
    negative_image_embeds: torch.Tensor | None = None


class LatentUNetDenoiser:
    """SD / SDXL UNet + VAE as a `Denoiser` (latent space)."""

    space = "latent"
    #: UNet input channels this denoiser builds inputs for
    channels: tuple[int, ...] = (4, 9)

    def __init__(self, unet: Any, vae: Any, prediction_type: str = "epsilon", rows_per_call: int | None = None) -> None:
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")
        self.unet = unet
        self.vae = vae
        self.model_prediction = prediction_type
        self.prediction = "sample" if prediction_type == "sample" else "epsilon"
        self.rows_per_call = rows_per_call
        self.in_channels = int(unet.config.in_channels)
        if self.in_channels not in self.channels:
            raise ValueError(f"UNet has {self.in_channels} input channels; expected 4 (SD) or 9 (SD inpaint)")
        self.scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling = float(vae.config.scaling_factor)

    # -- spaces -----------------------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> scaled latents (the posterior mode: deterministic, no generator)."""
        out = []
        device, dtype = execution_device(self.vae), self.vae.dtype
        for sl in chunks(images.shape[0], self.rows_per_call or VAE_ROWS):
            x = images[sl].to(device=device, dtype=dtype, non_blocking=True)
            out.append(self.vae.encode(x).latent_dist.mode().float() * self.scaling)
        return torch.cat(out).to(images.device)

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        out = []
        device, dtype = execution_device(self.vae), self.vae.dtype
        for sl in chunks(samples.shape[0], self.rows_per_call or VAE_ROWS):
            z = (samples[sl] / self.scaling).to(device=device, dtype=dtype, non_blocking=True)
            out.append(self.vae.decode(z).sample.float())
        return torch.cat(out).to(samples.device)

    def mask_to_space(self, masks: torch.Tensor) -> torch.Tensor:
        """A latent pixel is as edited as the most edited image pixel it covers (max pool), so the
        known region the sampler re-imposes never overlaps an edited pixel."""
        s = self.scale_factor
        return F.max_pool2d(masks, kernel_size=s, stride=s)

    def inpaint_inputs(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The 9-channel UNet's extra inputs, as diffusers' inpaint pipeline builds them:
        mask nearest-resized to the latent size (1 = repaint), latents of the image with the
        repaint region zeroed. Any mask value > 0 counts as repaint (the edit stage blends soft edges)."""
        binary = (masks > 0).to(images.dtype)
        masked = images * (1 - binary)
        h, w = images.shape[-2] // self.scale_factor, images.shape[-1] // self.scale_factor
        return F.interpolate(binary, size=(h, w)), self.encode(masked)

    # -- prediction -------------------------------------------------------------------------

    def control_residuals(self, x: torch.Tensor, ts: torch.Tensor, states: torch.Tensor, condition: Any,
                          sl: slice, cfg: bool) -> dict[str, Any]:
        """Extra UNet inputs of this call (a ControlNet's residuals); none here."""
        return {}

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, alpha_bar_t: torch.Tensor, condition: LatentCondition) -> torch.Tensor:
        c = condition
        cfg = c.negative_embeds is not None
        outs = []
        dtype, device = self.unet.dtype, execution_device(self.unet)
        for sl in chunks(x_t.shape[0], self.rows_per_call):
            x = x_t[sl]
            if self.in_channels == 9:
                if c.mask is None or c.masked_latents is None:
                    raise ValueError("a 9-channel UNet needs condition.mask and condition.masked_latents")
                x = torch.cat([x, c.mask[sl].to(x), c.masked_latents[sl].to(x)], dim=1)
            emb, ts = c.prompt_embeds[sl], t[sl]
            added = None
            if c.text_embeds is not None:
                added = {"text_embeds": c.text_embeds[sl], "time_ids": c.time_ids[sl]}
            if cfg:  # diffusers' order: [unconditional, conditional]
                x = torch.cat([x, x])
                emb = torch.cat([c.negative_embeds[sl], emb])
                ts = torch.cat([ts, ts])
                if added is not None:
                    added = {"text_embeds": torch.cat([c.negative_text_embeds[sl], added["text_embeds"]]),
                             "time_ids": torch.cat([c.negative_time_ids[sl], added["time_ids"]])}
            kwargs: dict[str, Any] = {"encoder_hidden_states": emb.to(device=device, dtype=dtype)}
            cond = {} if added is None else {k: v.to(device=device, dtype=dtype) for k, v in added.items()}
            if c.image_embeds is not None:  # IP-Adapter: one image per row, zeros as its negative
                img = c.image_embeds[sl]
                if cfg:
                    img = torch.cat([c.negative_image_embeds[sl], img])
                cond["image_embeds"] = [img.unsqueeze(1).to(device=device, dtype=dtype)]
            if cond:
                kwargs["added_cond_kwargs"] = cond
            kwargs.update(self.control_residuals(x, ts, emb, c, sl, cfg))
            out = self.unet(x.to(device=device, dtype=dtype), ts.to(device), **kwargs).sample.float()
            outs.append(guided_epsilon(out, cfg, c.guidance_scale, self.model_prediction, alpha_bar_t[sl], x_t[sl]))
        return torch.cat(outs).to(x_t.device)


def guided_epsilon(out: torch.Tensor, cfg: bool, guidance_scale: float, prediction: str,
                   alpha_bar: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """UNet output -> the noise estimate: classifier-free guidance over a [uncond, cond] batch,
    then v-prediction converted to epsilon (eps = sqrt(abar) v + sqrt(1 - abar) x_t)."""
    if cfg:
        uncond, cond = out.chunk(2)
        out = uncond + guidance_scale * (cond - uncond)
    if prediction == "v_prediction":
        a = alpha_bar.view(-1, 1, 1, 1).to(out)
        out = a.sqrt() * out + (1 - a).sqrt() * x_t.to(out)
    return out


class PixelUNetDenoiser(PixelSpace):
    """A pixel-space `UNet2DModel` (e.g. google/ddpm-ema-celebahq-256) as a `Denoiser`."""

    def __init__(self, unet: Any, prediction_type: str = "epsilon", rows_per_call: int | None = None) -> None:
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")
        self.unet = unet
        self.model_prediction = prediction_type
        self.prediction = "sample" if prediction_type == "sample" else "epsilon"
        self.rows_per_call = rows_per_call
        self.multiple = 2 ** (len(unet.config.block_out_channels) - 1)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, alpha_bar_t: torch.Tensor, condition: Any = None) -> torch.Tensor:
        outs = []
        for sl in chunks(x_t.shape[0], self.rows_per_call):
            device = execution_device(self.unet)
            out = self.unet(x_t[sl].to(device=device, dtype=self.unet.dtype), t[sl].to(device)).sample
            out = out[:, :3].float()  # learned-variance models output 6 channels: keep the mean part
            if self.model_prediction == "v_prediction":
                a = alpha_bar_t[sl].view(-1, 1, 1, 1).to(out)
                out = a.sqrt() * out + (1 - a).sqrt() * x_t[sl].to(out)
            outs.append(out)
        return torch.cat(outs).to(x_t.device)
