"""Tests of the one masked sampler (editflow.diffusion.sampler) with tiny fake denoisers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, RePaintScheduler

from editflow.diffusion.denoiser import Denoiser, PixelSpace
from editflow.diffusion.sampler import SamplerConfig, make_scheduler, masked_sample, plan_transitions


class OracleDenoiser(PixelSpace):
    """Pixel-space denoiser that knows the clean answer `target` and records every call.

    It predicts the exact epsilon (or sample) that would take x_t to `target`, so a deterministic
    DDIM run lands on `target` in the masked region. Purely elementwise: rows are independent.
    """

    def __init__(self, target: torch.Tensor, prediction: str = "epsilon") -> None:
        self.target = target
        self.prediction = prediction
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (t, x_t, alpha_bar)

    def predict(self, x_t, t, alpha_bar_t, condition):
        assert t.shape == (x_t.shape[0],) and t.dtype == torch.long
        assert torch.all(t == t[0])
        self.calls.append((int(t[0]), x_t.clone(), alpha_bar_t.clone()))
        target = self.target if condition is None else condition
        if self.prediction == "sample":
            return target.expand_as(x_t)
        a = alpha_bar_t.view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * target) / (1 - a).sqrt()


class LatentDenoiser(OracleDenoiser):
    """Latent-space fake: 2x average-pool encoder, nearest upsampling decoder, max-pool masks."""

    space = "latent"

    def encode(self, images):
        return F.avg_pool2d(images, 2)

    def decode(self, samples):
        return F.interpolate(samples, scale_factor=2, mode="nearest")

    def mask_to_space(self, masks):
        return F.max_pool2d(masks, 2)


def _images(batch: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g) * 2 - 1


def _box_mask(batch: int, size: int = 16) -> torch.Tensor:
    m = torch.zeros(batch, 1, size, size)
    m[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    return m


def _gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def _repaint_labels(steps: int, j: int, r: int, train: int = 1000) -> list[int]:
    s = RePaintScheduler(num_train_timesteps=train)
    s.set_timesteps(steps, jump_length=j, jump_n_sample=r)
    return s.timesteps.tolist()


def _denoise_labels(labels: list[int]) -> list[int]:
    """The labels at which RePaintPipeline calls the UNet (t < t_last), in order."""
    out, last = [], labels[0] + 1
    for t in labels:
        if t < last:
            out.append(t)
        last = t
    return out


def test_fake_denoisers_satisfy_protocol():
    assert isinstance(OracleDenoiser(torch.zeros(1)), Denoiser)
    assert isinstance(LatentDenoiser(torch.zeros(1)), Denoiser)


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
@pytest.mark.parametrize("steps,strength", [(1, 1.0), (7, 1.0), (10, 0.5), (50, 0.3), (20, 0.75), (9, 0.34)])
def test_strength_gives_int_steps_times_strength_calls(scheduler, steps, strength):
    images, masks = _images(2), _box_mask(2)
    den = OracleDenoiser(torch.zeros_like(images))
    cfg = SamplerConfig(steps=steps, strength=strength, scheduler=scheduler)
    out = masked_sample(den, images, masks, _gens(1, 2), cfg)
    k = int(steps * strength)
    assert out.nfe == len(den.calls) == k
    # Same timesteps as diffusers' img2img: scheduler.timesteps[t_start:], t_start = steps - k.
    ref = (DDIMScheduler if scheduler == "ddim" else DDPMScheduler)()
    ref.set_timesteps(steps)
    expected = ref.timesteps[steps - k :].tolist()
    assert [t for t, _, _ in den.calls] == expected == out.timesteps


def test_strength_below_one_step_raises():
    with pytest.raises(ValueError, match="denoising steps"):
        cfg = SamplerConfig(steps=4, strength=0.2)
        masked_sample(OracleDenoiser(torch.zeros(1)), _images(1), _box_mask(1), _gens(0), cfg)


def test_repaint_paper_schedule_call_count():
    images, masks = _images(1, size=4), _box_mask(1, size=4)
    den = OracleDenoiser(torch.zeros_like(images))
    cfg = SamplerConfig(steps=250, jump_length=10, jump_n_sample=10)
    out = masked_sample(den, images, masks, _gens(0), cfg)
    labels = _repaint_labels(250, 10, 10)
    assert len(labels) == 4570
    assert out.timesteps == labels
    assert out.nfe == len(den.calls) == 2410
    assert [t for t, _, _ in den.calls] == _denoise_labels(labels)


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_repaint_small_schedule_in_full(scheduler):
    images, masks = _images(1), _box_mask(1)
    den = OracleDenoiser(torch.zeros_like(images))
    cfg = SamplerConfig(steps=5, jump_length=2, jump_n_sample=2, scheduler=scheduler)
    out = masked_sample(den, images, masks, _gens(0), cfg)
    labels = [800, 600, 400, 600, 800, 600, 400, 200, 0, 200, 400, 200, 0]
    assert _repaint_labels(5, 2, 2) == labels
    assert out.timesteps == labels
    assert [t for t, _, _ in den.calls] == [800, 600, 400, 600, 400, 200, 0, 200, 0]
    assert out.nfe == 9


def test_strength_with_jumps_uses_repaint_order_on_lowest_levels():
    # steps=10, strength=0.5 -> k=5 levels 0..400; the jump order is RePaint's for 5 steps on them.
    cfg = SamplerConfig(steps=10, strength=0.5, jump_length=2, jump_n_sample=2)
    plan = plan_transitions(cfg, make_scheduler(cfg))
    assert plan.t_start == 400
    assert plan.labels == _repaint_labels(5, 2, 2, train=500)
    assert max(max(tr.t_from, tr.t_to) for tr in plan.transitions) == 400  # never above the start
    images = _images(1)
    den = OracleDenoiser(torch.zeros_like(images))
    out = masked_sample(den, images, _box_mask(1), _gens(0), cfg)
    assert out.nfe == len(den.calls) == 9


def test_jump_n_sample_one_means_no_resampling():
    for j in (1, 3, 10):
        cfg = SamplerConfig(steps=12, jump_length=j, jump_n_sample=1)
        plan = plan_transitions(cfg, make_scheduler(cfg))
        assert all(tr.kind == "denoise" for tr in plan.transitions) and plan.nfe == 12


@pytest.mark.parametrize(
    "cfg",
    [
        SamplerConfig(steps=20, jump_length=3, jump_n_sample=3),
        SamplerConfig(steps=20, strength=0.6, jump_length=2, jump_n_sample=4, scheduler="ddpm"),
        SamplerConfig(steps=5, jump_length=2, jump_n_sample=3, eta=1.0),  # coarse: undo spans 200 train steps
    ],
)
def test_known_region_is_forward_noised_original_at_every_call(cfg):
    size = 64
    images = _images(1, size=size, seed=3)
    masks = torch.zeros(1, 1, size, size)
    masks[..., :, : size // 4] = 1.0  # 3/4 of the pixels are known: 9216 samples per call
    den = OracleDenoiser(torch.zeros_like(images))
    masked_sample(den, images, masks, _gens(7), cfg)
    known = (masks == 0).expand_as(images)
    first = True
    for t, x_t, abar in den.calls:
        if first and cfg.strength == 1.0:
            first = False  # the pure-noise start is not the forward-noised original
            continue
        first = False
        a = abar[0]
        z = ((x_t - a.sqrt() * images) / (1 - a).sqrt())[known]
        assert abs(z.mean().item()) < 0.06, (t, z.mean().item())
        assert abs(z.std().item() - 1) < 0.06, (t, z.std().item())


def test_sdedit_start_is_add_noise_of_init_under_mask_and_image_elsewhere():
    images, masks = _images(2), _box_mask(2)
    init = _images(2, seed=9)
    den = OracleDenoiser(torch.zeros_like(images))
    cfg = SamplerConfig(steps=10, strength=0.5)
    masked_sample(den, images, masks, _gens(4, 5), cfg, init=init)
    t0, x_t, abar = den.calls[0]
    ref = DDIMScheduler()
    ref.set_timesteps(10)
    assert t0 == ref.timesteps[5] == 400
    assert torch.allclose(abar, ref.alphas_cumprod[400].expand(2))
    noise = torch.cat([torch.randn(1, 3, 16, 16, generator=g) for g in _gens(4, 5)])
    start = masks * init + (1 - masks) * images
    assert torch.allclose(x_t, ref.add_noise(start, noise, torch.tensor([400])), atol=1e-6)


def test_full_strength_starts_from_pure_noise():
    images, masks = _images(1), _box_mask(1)
    den = OracleDenoiser(torch.zeros_like(images))
    masked_sample(den, images, masks, _gens(11), SamplerConfig(steps=4), init=_images(1, seed=5))
    assert torch.equal(den.calls[0][1], torch.randn(1, 3, 16, 16, generator=_gens(11)[0]))


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
def test_oracle_denoiser_reaches_its_target(prediction):
    images, masks = _images(2), _box_mask(2)
    target = _images(2, seed=1) * 0.5
    den = OracleDenoiser(target, prediction=prediction)
    jumps = SamplerConfig(steps=10, strength=0.5, jump_length=2, jump_n_sample=2)
    for cfg in (SamplerConfig(steps=10), jumps):
        out = masked_sample(den, images, masks, _gens(0, 1), cfg)
        inside = masks.bool().expand_as(images)
        assert torch.allclose(out.images[inside], target[inside], atol=1e-4)


@pytest.mark.parametrize(
    "cfg",
    [
        SamplerConfig(steps=8),
        SamplerConfig(steps=8, strength=0.5, scheduler="ddpm", jump_length=2, jump_n_sample=2),
        SamplerConfig(steps=8, eta=0.7, jump_length=3, jump_n_sample=2),
    ],
)
def test_unmasked_pixels_equal_input_exactly(cfg):
    images = _images(3)
    masks = _box_mask(3)
    masks[:, :, 2:4, :] = 0.5  # soft edge: blends, but mask == 0 pixels stay exact
    den = OracleDenoiser(_images(3, seed=2))
    out = masked_sample(den, images, masks, _gens(1, 2, 3), cfg)
    keep = (masks == 0).expand_as(images)
    assert torch.equal(out.images[keep], images[keep])
    assert out.images.shape == images.shape
    assert out.images.min() >= -1 and out.images.max() <= 1


@pytest.mark.parametrize("denoiser_cls", [OracleDenoiser, LatentDenoiser])
@pytest.mark.parametrize(
    "cfg",
    [
        SamplerConfig(steps=6, eta=1.0, jump_length=2, jump_n_sample=2),
        SamplerConfig(steps=6, strength=0.7, scheduler="ddpm", jump_length=2, jump_n_sample=3),
    ],
)
def test_row_is_bitwise_identical_alone_and_in_batch(denoiser_cls, cfg):
    images, masks, init = _images(4), _box_mask(4), _images(4, seed=8)
    masks[1:, :, :4] = 1.0  # other rows have other masks too
    seeds = (42, 1, 2, 3)
    # Target depends on the image, so each row of the batch gets its own answer.
    target = denoiser_cls(None).encode(images.flip(-1) * 0.5)
    batch = masked_sample(denoiser_cls(target), images, masks, _gens(*seeds), cfg, init=init)
    alone = masked_sample(denoiser_cls(target[:1]), images[:1], masks[:1], _gens(42), cfg, init=init[:1])
    assert torch.equal(alone.images[0], batch.images[0])
    assert not torch.equal(batch.images[0], batch.images[1])
    again = masked_sample(denoiser_cls(target[:1]), images[:1], masks[:1], _gens(43), cfg, init=init[:1])
    assert not torch.equal(alone.images, again.images)  # the seed matters


def test_mask_polarity():
    images = _images(2)
    den = OracleDenoiser(torch.zeros_like(images))
    cfg = SamplerConfig(steps=5, jump_length=2, jump_n_sample=2)
    none = masked_sample(den, images, torch.zeros(2, 1, 16, 16), _gens(0, 1), cfg)
    assert torch.equal(none.images, images)
    masks = _box_mask(2)
    out = masked_sample(den, images, masks, _gens(0, 1), cfg)
    edit = masks.bool().expand_as(images)
    assert (out.images[edit] - images[edit]).abs().min() > 0  # every masked pixel changed
    assert torch.allclose(out.images[edit], torch.zeros_like(images)[edit], atol=1e-4)  # towards target


def test_latent_space_path_pastes_back_exactly():
    images, masks = _images(2, size=16), torch.zeros(2, 1, 16, 16)
    masks[:, :, 3:9, 5:12] = 1.0  # odd edges: the latent mask (max-pool) covers more than the pixel mask
    target = torch.full((2, 3, 8, 8), 0.25)
    den = LatentDenoiser(target)
    calls = []
    cfg = SamplerConfig(steps=6, strength=0.8, jump_length=2, jump_n_sample=2)
    progress = lambda i, n, t: calls.append((i, n, t))  # noqa: E731
    out = masked_sample(den, images, masks, _gens(0, 1), cfg, callback=progress)
    assert out.images.shape == images.shape
    assert all(x.shape == (2, 3, 8, 8) for _, x, _ in den.calls)
    keep = (masks == 0).expand_as(images)
    assert torch.equal(out.images[keep], images[keep])
    edit = ~keep
    assert torch.allclose(out.images[edit], torch.full_like(images[edit], 0.25), atol=1e-4)
    assert [i for i, _, _ in calls] == list(range(out.nfe)) and {n for _, n, _ in calls} == {out.nfe}


def test_validation_errors():
    den = OracleDenoiser(torch.zeros(1))
    cfg = SamplerConfig(steps=2)
    with pytest.raises(ValueError, match="share height and width"):
        masked_sample(den, [_images(1, 16)[0], _images(1, 8)[0]], _box_mask(2), _gens(0, 1), cfg)
    with pytest.raises(ValueError, match="one generator per row"):
        masked_sample(den, _images(2), _box_mask(2), _gens(0), cfg)
    with pytest.raises(ValueError, match="masks must be"):
        masked_sample(den, _images(1), _box_mask(1, 8), _gens(0), cfg)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        masked_sample(den, _images(1), _box_mask(1) * 255, _gens(0), cfg)
    with pytest.raises(ValueError, match="scheduler"):
        masked_sample(den, _images(1), _box_mask(1), _gens(0), SamplerConfig(scheduler="euler"))
    with pytest.raises(ValueError, match="strength"):
        masked_sample(den, _images(1), _box_mask(1), _gens(0), SamplerConfig(strength=1.5))


def test_list_of_rows_is_accepted():
    images, masks = _images(2), _box_mask(2)
    den = OracleDenoiser(torch.zeros_like(images))
    cfg = SamplerConfig(steps=3)
    a = masked_sample(den, list(images), list(masks), _gens(0, 1), cfg)
    b = masked_sample(den, images, masks, _gens(0, 1), cfg)
    assert torch.equal(a.images, b.images)


def test_latent_model_scheduler_config_is_honoured():
    # A Stable Diffusion 1.x scheduler.config (PNDM keys and private keys are ignored by diffusers).
    sd = {
        "_class_name": "PNDMScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "clip_sample": False,
        "prediction_type": "epsilon",
    }
    images, masks = _images(1), _box_mask(1)
    den = LatentDenoiser(torch.zeros(1, 3, 8, 8))
    cfg = SamplerConfig(steps=10, strength=0.6, schedule=sd, jump_length=2, jump_n_sample=2)
    out = masked_sample(den, images, masks, _gens(0), cfg)
    ref = DDIMScheduler.from_config(sd)
    ref.set_timesteps(10)
    levels = sorted(ref.timesteps.tolist())[:6]  # 1, 101, ..., 501
    assert [t for t, _, _ in den.calls][:3] == [501, 401, 301]
    assert set(out.timesteps) <= set(levels)
    for t, _, abar in den.calls:
        assert torch.equal(abar, ref.alphas_cumprod[t].expand(1))
