"""The `sd` engine on tiny random-weight SD / SDXL checkpoints (9- and 4-channel), offline, CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from editflow.diffusion.sampler import SamplerConfig, make_scheduler, plan_transitions
from editflow.engines.base import EditRequest, composite_unmasked, unmasked_max_diff
from editflow.engines.crop import plan_crop
from tests.conftest import textured_image

_ENGINES: dict = {}


@pytest.fixture
def engine(tiny_models):
    """engine("sd-inpaint", micro_batch=None) -> a cached SDEngine on the tiny checkpoint."""
    from editflow.engines.sd import SDEngine

    def get(name: str, **options):
        key = (name, tuple(sorted(options.items())))
        if key not in _ENGINES:
            _ENGINES[key] = SDEngine.from_pretrained(model=str(tiny_models[name]), device="cpu", **options)
        return _ENGINES[key]

    return get


def box_mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    m[y0:y1, x0:x1] = 1
    return m


def request(task: str, image: np.ndarray, mask: np.ndarray, seed: int = 7, rid: str = "r", **kw) -> EditRequest:
    kw.setdefault("steps", 3)
    kw.setdefault("prompt", "a red cat")
    return EditRequest(id=rid, task=task, image=image, mask=mask, seed=seed, **kw)


def ok(results):
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


IMG = textured_image(100, 72, seed=3)
MASK = box_mask(72, 100, 20, 50, 30, 70)


@pytest.mark.parametrize("name,task", [
    ("sd-inpaint", "inpaint"), ("sd-inpaint", "repaint"), ("sd", "inpaint"), ("sd", "sdedit"),
    ("sd", "repaint"), ("sdxl-inpaint", "inpaint"), ("sdxl", "sdedit"),
])
def test_outputs_keep_the_input_size_and_paste_back(engine, name, task):
    """100x72 (and 61x45) in -> same size out; processing size a multiple of 8 at most the model's 64 px."""
    e = engine(name)
    for image, mask in ((IMG, MASK), (IMG[:45, :61], MASK[:45, :61])):
        (r,) = ok(e.edit_batch([request(task, image, mask, jump_length=2, jump_n_sample=2)]))
        assert r.image.shape == image.shape and r.image.dtype == np.uint8
        assert r.proc_width % 8 == 0 and r.proc_height % 8 == 0 and max(r.proc_width, r.proc_height) <= 64
        out = composite_unmasked(image, r.image, mask)
        assert unmasked_max_diff(image, out, mask) == 0
        assert np.any(out[mask > 0] != image[mask > 0])
        assert r.model == e.model and r.steps == 3


def test_nine_channel_inpaint_matches_diffusers_pipeline_called_directly(engine):
    """Same components, same seed: the engine's image is diffusers' image, up to the paste-back."""
    e = engine("sd-inpaint")
    image = textured_image(64, 64, seed=5)
    mask = box_mask(64, 64, 10, 40, 20, 56)
    (r,) = ok(e.edit_batch([request("inpaint", image, mask, seed=123, negative_prompt="blurry", guidance_scale=6.0,
                                    steps=4)]))
    direct = e.inpaint_pipe(
        prompt="a red cat", negative_prompt="blurry", image=Image.fromarray(image),
        mask_image=Image.fromarray((mask * 255).astype(np.uint8)), height=64, width=64, strength=1.0,
        num_inference_steps=4, guidance_scale=6.0, generator=torch.Generator("cpu").manual_seed(123),
    ).images[0]
    expected = composite_unmasked(image, np.asarray(direct), mask)
    got = composite_unmasked(image, r.image, mask)
    assert np.array_equal(got, expected)
    assert r.nfe == 4 and r.scheduler == "DDIMScheduler" and (r.proc_width, r.proc_height) == (64, 64)


def test_nine_channel_mask_polarity_at_the_pipeline_boundary(engine, monkeypatch):
    """editflow 1 = edit is passed as diffusers' mask_image white (1) = repaint, unchanged."""
    e = engine("sd-inpaint")
    pipe = e.inpaint_pipe
    seen = {}
    original = type(pipe).__call__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", spy)
    image = textured_image(64, 48, seed=1)
    mask = box_mask(48, 64, 8, 24, 16, 40)
    ok(e.edit_batch([request("inpaint", image, mask)]))
    assert np.array_equal(seen["mask_image"][0, ..., 0], mask)
    assert seen["strength"] == 1.0 and len(seen["generator"]) == 1


def test_nine_channel_denoiser_inputs_polarity(engine):
    """The 9-channel UNet's mask channel is 1 where editflow edits; the masked image is zero there."""
    e = engine("sd-inpaint")
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    masks = torch.zeros(1, 1, 64, 64)
    masks[..., :32, :] = 1
    m, latents = e.denoiser.inpaint_inputs(images, masks)
    s = e.denoiser.scale_factor
    assert m.shape == (1, 1, 64 // s, 64 // s) and m[..., : 32 // s, :].eq(1).all() and m[..., 32 // s:, :].eq(0).all()
    blank = e.denoiser.encode(images * (1 - masks))
    assert torch.equal(latents, blank)
    assert e.denoiser.mask_to_space(masks)[..., : 32 // s, :].eq(1).all()


def test_sampler_known_region_polarity_before_composite(engine):
    """The sampler path pastes back itself: at native scale the engine's output already equals the input
    outside the mask, and differs inside (so 1 = edit reached the sampler unchanged)."""
    e = engine("sd")
    image = textured_image(64, 48, seed=2)
    mask = box_mask(48, 64, 8, 24, 16, 40)
    for task in ("inpaint", "repaint", "sdedit"):
        (r,) = ok(e.edit_batch([request(task, image, mask, jump_length=2, jump_n_sample=2)]))
        assert np.array_equal(r.image[mask == 0], image[mask == 0])
        assert np.any(r.image[mask > 0] != image[mask > 0])


@pytest.mark.parametrize("name,task", [("sd-inpaint", "inpaint"), ("sd", "repaint"), ("sd-inpaint", "repaint")])
def test_row_is_byte_identical_alone_and_in_a_batch_of_four(engine, name, task):
    e = engine(name)
    rows = [request(task, textured_image(100, 72, seed=i), MASK, seed=100 + i, rid=f"r{i}", prompt=f"cat {i}",
                    jump_length=2, jump_n_sample=2) for i in range(4)]
    batch = ok(e.edit_batch(rows))
    for i in (0, 3):
        (alone,) = ok(e.edit_batch([rows[i]]))
        assert np.array_equal(alone.image, batch[i].image)
    assert not np.array_equal(batch[0].image, batch[1].image)
    again = ok(e.edit_batch(rows))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(again, batch))


def test_whole_batch_network_calls_keep_per_row_generators(engine):
    """micro_batch=None (the GPU default): one network call for all rows; row i still uses its own noise,
    so it matches the row alone up to float rounding."""
    e = engine("sd-inpaint", micro_batch=4)
    rows = [request("inpaint", textured_image(64, 64, seed=i), box_mask(64, 64, 8, 40, 8, 40), seed=50 + i, rid=f"r{i}")
            for i in range(4)]
    batch = ok(e.edit_batch(rows))
    (alone,) = ok(e.edit_batch([rows[2]]))
    diff = np.abs(alone.image.astype(int) - batch[2].image.astype(int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.01


def test_nfe_is_the_sampler_count(engine):
    e = engine("sd")
    (r,) = ok(e.edit_batch([request("repaint", IMG, MASK, steps=4, jump_length=2, jump_n_sample=2)]))
    config = SamplerConfig(steps=4, jump_length=2, jump_n_sample=2)
    assert r.nfe == plan_transitions(config, make_scheduler(config)).nfe == 6
    assert (r.jump_length, r.jump_n_sample, r.scheduler) == (2, 2, "ddim")
    (r,) = ok(e.edit_batch([request("sdedit", IMG, MASK, steps=5, strength=0.4)]))
    assert r.nfe == 2 and r.strength == 0.4 and r.jump_length is None


def test_bad_rows_fail_alone(engine):
    e = engine("sd")
    results = e.edit_batch([
        request("tryon", IMG, MASK), request("inpaint", IMG, np.zeros_like(MASK)),
        request("sdedit", IMG, MASK, steps=2, strength=0.2), request("inpaint", IMG, MASK),
    ])
    assert "cannot run task 'tryon'" in str(results[0])
    assert "empty" in str(results[1])
    assert isinstance(results[2], ValueError)
    assert results[3].image.shape == IMG.shape


def test_sdxl_pipeline_and_sampler_paths_run(engine):
    e = engine("sdxl-inpaint")
    assert e.kind == "sdxl-inpaint"
    (a,) = ok(e.edit_batch([request("inpaint", IMG, MASK)]))
    assert a.strength == 0.9999 and a.scheduler == "DDIMScheduler"
    (b,) = ok(e.edit_batch([request("repaint", IMG, MASK, negative_prompt="ugly", jump_length=2, jump_n_sample=2)]))
    config = SamplerConfig(steps=3, jump_length=2, jump_n_sample=2)
    assert b.scheduler == "ddim" and b.nfe == plan_transitions(config, make_scheduler(config)).nfe
    assert engine("sdxl").kind == "sdxl-base"


def test_crop_plan_windows_and_scaling():
    small = plan_crop(box_mask(60, 50, 10, 20, 10, 20), max_side=64, multiple=8)
    assert (small.y0, small.y1, small.x0, small.x1) == (0, 60, 0, 50) and small.proc_size == (64, 56)
    assert not small.scaled
    big = plan_crop(box_mask(1000, 1500, 400, 440, 700, 760), max_side=512, multiple=8)
    assert (big.y1 - big.y0, big.x1 - big.x0) == (512, 512) and not big.scaled  # native-resolution window
    assert big.y0 <= 400 and big.y1 >= 440 and big.x0 <= 700 and big.x1 >= 760
    huge = plan_crop(box_mask(1000, 1500, 100, 900, 100, 1400), max_side=512, multiple=8)
    assert huge.scaled and max(huge.height, huge.width) == 512
    image = textured_image(50, 60, seed=1)
    x = small.image(image)
    assert x.shape == (1, 3, 64, 56)
    assert np.array_equal(small.paste(image, x[0]), image)


def test_bf16_and_memory_switches_run(engine):
    """The GPU settings (bf16, attention slicing, VAE tiling, whole-batch calls) on the CPU: same code path."""
    e = engine("sd-inpaint", dtype="bf16", attention_slicing=True, sdpa=False, vae_tiling=True, micro_batch=2)
    assert e.dtype == torch.bfloat16 and e.pipe.unet.dtype == torch.bfloat16
    assert e.switches == ["classic_attention", "attention_slicing", "vae_tiling"] and e.rows_per_call == 2
    rows = [request(task, IMG, MASK, jump_length=2, jump_n_sample=2) for task in ("inpaint", "repaint")]
    for r in ok(e.edit_batch(rows)):
        assert r.image.shape == IMG.shape
