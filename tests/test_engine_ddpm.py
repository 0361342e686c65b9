"""The `ddpm` engine: pixel-space UNet2DModel RePaint through the one sampler (tiny random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editflow.diffusion.sampler import SamplerConfig, make_scheduler, plan_transitions
from editflow.engines.base import EditRequest
from editflow.models import ModelNotAvailableError
from tests.conftest import textured_image


@pytest.fixture(scope="module")
def ddpm(tiny_models):
    from editflow.engines.ddpm import DDPMEngine

    return DDPMEngine.from_pretrained(model=str(tiny_models["ddpm"]), device="cpu")


def req(image, mask, seed=1, task="repaint", rid="r", **kw):
    kw.setdefault("steps", 4)
    kw.setdefault("jump_length", 2)
    kw.setdefault("jump_n_sample", 2)
    return EditRequest(id=rid, task=task, image=image, mask=mask, seed=seed, **kw)


def mask_for(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), np.float32)
    m[y0:y1, x0:x1] = 1
    return m


def test_repaint_shapes_nfe_and_known_region(ddpm):
    image = textured_image(30, 26, seed=4)  # smaller than the 32 px model: processed whole
    mask = mask_for(26, 30, 5, 15, 8, 20)
    (r,) = ddpm.edit_batch([req(image, mask)])
    assert r.image.shape == image.shape
    config = SamplerConfig(steps=4, jump_length=2, jump_n_sample=2)
    assert r.nfe == plan_transitions(config, make_scheduler(config)).nfe
    assert (r.proc_width, r.proc_height) == (30, 26) and (r.jump_length, r.jump_n_sample) == (2, 2)
    # mask polarity at the sampler boundary: 1 = edit, untouched elsewhere (before the stage composite)
    assert np.array_equal(r.image[mask == 0], image[mask == 0])
    assert np.any(r.image[mask > 0] != image[mask > 0])


def test_large_image_is_cropped_around_the_mask_and_returned_full_size(ddpm):
    image = textured_image(100, 72, seed=5)
    mask = mask_for(72, 100, 30, 40, 60, 70)
    (r,) = ddpm.edit_batch([req(image, mask)])
    assert r.image.shape == image.shape and (r.proc_width, r.proc_height) == (32, 32)
    assert np.array_equal(r.image[:, :40], image[:, :40])  # outside the window: the original


def test_row_alone_equals_row_in_batch_of_four(ddpm):
    mask = mask_for(72, 100, 20, 50, 30, 70)
    rows = [req(textured_image(100, 72, seed=i), mask, seed=10 + i, rid=str(i)) for i in range(4)]
    batch = ddpm.edit_batch(rows)
    for i in range(4):
        (alone,) = ddpm.edit_batch([rows[i]])
        assert np.array_equal(alone.image, batch[i].image)


def test_sdedit_and_inpaint_tasks(ddpm):
    image = textured_image(32, 32, seed=6)
    mask = mask_for(32, 32, 4, 20, 4, 20)
    a, b = ddpm.edit_batch([req(image, mask, task="sdedit", strength=0.5), req(image, mask, task="inpaint")])
    assert a.nfe == 2 and a.jump_length is None and b.nfe == 4


def test_pixel_denoiser_v_prediction_is_converted_to_epsilon():
    from editflow.diffusion.unets import PixelUNetDenoiser

    class FakeUNet(torch.nn.Module):
        config = type("C", (), {"block_out_channels": (8, 16)})()
        dtype, device = torch.float32, torch.device("cpu")

        def forward(self, x, t):
            return type("O", (), {"sample": torch.full_like(x, 0.5)})()

    d = PixelUNetDenoiser(FakeUNet(), "v_prediction")
    x = torch.ones(1, 3, 4, 4)
    abar = torch.tensor([0.36])
    eps = d.predict(x, torch.tensor([10]), abar, None)
    assert torch.allclose(eps, torch.full_like(x, 0.6 * 0.5 + 0.8 * 1.0))


def test_missing_hub_model_message(empty_hub_cache):
    from editflow.engines.ddpm import DDPMEngine

    with pytest.raises(ModelNotAvailableError, match=r"google/ddpm-ema-celebahq-256.*hf download"):
        DDPMEngine.from_pretrained(device="cpu")
