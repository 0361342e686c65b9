"""The contract between the masked sampler and a denoiser.

The sampler owns the loop (timesteps, SDEdit start, RePaint known-region replacement and jumps);
a denoiser only says how to move between image and model space and what it predicts at a noise
level. Pixel denoisers encode with the identity; latent denoisers go through a VAE.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import torch


@runtime_checkable
class Denoiser(Protocol):
    """A model (or closed-form estimator) that the masked sampler calls once per transition."""

    #: "pixel": the sampler works on images in [-1, 1]; "latent": on `encode(images)`.
    space: Literal["pixel", "latent"]
    #: what `predict` returns: the noise ("epsilon") or the clean sample ("sample").
    prediction: Literal["epsilon", "sample"]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images `[B, 3, H, W]` in [-1, 1] -> model-space samples `[B, C, h, w]`."""
        ...

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """Model-space samples -> images `[B, 3, H, W]` in [-1, 1]."""
        ...

    def mask_to_space(self, masks: torch.Tensor) -> torch.Tensor:
        """Masks `[B, 1, H, W]` (1 = edit) -> masks at model-space resolution `[B, 1, h, w]`."""
        ...

    def predict(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        alpha_bar_t: torch.Tensor,
        condition: Any,
    ) -> torch.Tensor:
        """Predict the noise or the clean sample for `x_t` at integer timesteps `t` `[B]`.

        `alpha_bar_t` `[B]` is the cumulative signal level at `t` (so closed-form denoisers need
        no scheduler); `condition` is whatever the engine built for this batch (text embeddings,
        the known image and mask, reference patches).
        """
        ...


class PixelSpace:
    """Base of pixel-space denoisers: the sampler works on the images themselves."""

    space: Literal["pixel", "latent"] = "pixel"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pixel space: the identity."""
        return images

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """Pixel space: the identity."""
        return samples

    def mask_to_space(self, masks: torch.Tensor) -> torch.Tensor:
        """Pixel space: masks are already at model resolution."""
        return masks
