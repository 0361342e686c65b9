"""Tests of the closed-form patch denoiser (editflow.diffusion.patch_prior)."""

from __future__ import annotations

import pytest
import torch

from editflow.diffusion.denoiser import Denoiser
from editflow.diffusion.patch_prior import PatchPriorDenoiser, build_condition, extract_patches
from editflow.diffusion.sampler import SamplerConfig, masked_sample

SCHEDULE = {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace", "clip_sample": False}


def _box_mask(size: int, lo: int, hi: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., lo:hi, lo:hi] = 1.0
    return mask


def _stripes(size: int, period: int) -> torch.Tensor:
    """Vertical two-colour stripes, [1, 3, size, size] in [-1, 1]."""
    x = torch.arange(size)
    on = ((x // (period // 2)) % 2).float()  # period px: half one colour, half the other
    row = torch.stack([0.8 * on - 0.4, -0.6 * on + 0.2, 0.5 * on - 0.1])  # [3, W]
    return row[:, None, :].expand(3, size, size)[None].clone()


def _checker(size: int, period: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    on = (((y // (period // 2)) + (x // (period // 2))) % 2).float()
    return torch.stack([0.9 * on - 0.45, 0.7 * on - 0.35, -0.8 * on + 0.4])[None]


def _grad_energy(img: torch.Tensor, region: torch.Tensor) -> float:
    """Mean squared finite difference (x and y) over the region's interior."""
    gx = img[..., :, 1:] - img[..., :, :-1]
    gy = img[..., 1:, :] - img[..., :-1, :]
    rx = region[..., :, 1:] * region[..., :, :-1]
    ry = region[..., 1:, :] * region[..., :-1, :]
    return float(((gx**2) * rx).sum() / (3 * rx.sum()) + ((gy**2) * ry).sum() / (3 * ry.sum())) / 2


def _period_x(img: torch.Tensor, lo: int, hi: int) -> int:
    """Dominant horizontal period in the hole (FFT peak of the row-averaged luminance)."""
    signal = img[0, :, lo:hi, lo:hi].mean(dim=(0, 1))
    spectrum = torch.fft.rfft(signal - signal.mean()).abs()
    k = int(spectrum[1:].argmax()) + 1
    return round((hi - lo) / k)


def _shift_corr(img: torch.Tensor, lo: int, hi: int, dy: int, dx: int) -> float:
    """Pearson correlation of the hole's luminance with itself shifted by (dy, dx); 0 if flat."""
    patch = img[0, :, lo:hi, lo:hi].mean(dim=0)
    n = patch.shape[0]
    a, b = patch[: n - dy, : n - dx].flatten(), patch[dy:, dx:].flatten()
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 1e-9 else 0.0


def test_implements_denoiser_protocol():
    den = PatchPriorDenoiser()
    assert isinstance(den, Denoiser)
    assert den.space == "pixel" and den.prediction == "sample"
    x = torch.randn(1, 3, 8, 8)
    assert den.encode(x) is x and den.decode(x) is x


def test_near_zero_noise_returns_input():
    """At alpha_bar ~ 1 every query patch is in the data set, so the posterior mean is the query."""
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 24, 24, generator=gen) * 2 - 1
    mask = _box_mask(24, 6, 18)
    cond = build_condition(image, mask, [gen], references=[image[0]], include_known=False,
                           max_data=10_000, locality=None)
    assert cond.data[0].shape[0] == 18 * 18  # every 7x7 patch of the reference
    abar = torch.tensor([1.0 - 1e-6])
    x_t = abar.sqrt() * image
    out = PatchPriorDenoiser().predict(x_t, torch.tensor([0]), abar, cond)
    torch.testing.assert_close(out, image, atol=1e-3, rtol=0)
    # The known region of the estimate is the known image, bit for bit.
    assert torch.equal(out[mask.expand_as(out) == 0], image[mask.expand_as(image) == 0])


def test_chunked_matching_equals_one_block_and_sdpa():
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    mask = _box_mask(32, 8, 24).expand(2, 1, 32, 32)
    cond = build_condition(image, mask, [gen, gen], max_data=500, locality=0.1)
    x_t = torch.randn(2, 3, 32, 32, generator=gen)
    abar = torch.tensor([0.3, 0.8])
    whole = PatchPriorDenoiser(chunk_elems=1 << 30).predict(x_t, torch.tensor([5, 5]), abar, cond)
    small = PatchPriorDenoiser(chunk_elems=1000).predict(x_t, torch.tensor([5, 5]), abar, cond)
    fused = PatchPriorDenoiser(backend="sdpa").predict(x_t, torch.tensor([5, 5]), abar, cond)
    torch.testing.assert_close(small, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, whole, atol=1e-4, rtol=1e-4)


def test_data_set_is_known_patches_capped():
    image = torch.rand(1, 3, 40, 40) * 2 - 1
    mask = _box_mask(40, 10, 30)
    full = build_condition(image, mask, None, max_data=100_000)
    patches, _ = extract_patches(image[0], 7, 1, valid=mask[0, 0] == 0)
    assert full.data[0].shape == patches.shape
    # Every data patch lies fully outside the hole: it equals some patch of the known region.
    capped = build_condition(image, mask, [torch.Generator().manual_seed(3)], max_data=200)
    assert capped.data[0].shape[0] == 200
    d = torch.cdist(capped.data[0], patches, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert float(d.max()) < 1e-4


def _fill(image: torch.Tensor, mask: torch.Tensor, seed: int) -> torch.Tensor:
    """One-level inpainting from pure noise with the patch prior through the masked sampler."""
    gen = torch.Generator().manual_seed(seed)
    cond = build_condition(image, mask, [gen], window_rho=0.1, locality=None)
    config = SamplerConfig(steps=20, strength=1.0, schedule=dict(SCHEDULE))
    out = masked_sample(PatchPriorDenoiser(), image, mask, [gen], config, condition=cond)
    assert out.nfe == 20
    return out.images


@pytest.mark.parametrize("kind", ["stripes", "checker"])
def test_periodic_texture_hole_is_refilled(kind):
    size, lo, hi, period = 64, 20, 44, 8
    truth = _stripes(size, period) if kind == "stripes" else _checker(size, period)
    mask = _box_mask(size, lo, hi)
    filled = _fill(truth, mask, seed=0)
    region = mask[0, 0] > 0
    flat = truth.clone()
    flat[..., region] = truth[..., ~region].mean(dim=-1, keepdim=True)  # the mean fill

    e_true = _grad_energy(truth, region)
    e_fill, e_flat = _grad_energy(filled, region), _grad_energy(flat, region)
    err_fill, err_flat = abs(e_fill - e_true) / e_true, abs(e_flat - e_true) / e_true
    assert err_fill < 0.35, (e_fill, e_true)
    assert err_flat > 0.9 and err_fill < 0.4 * err_flat
    # Colour variance in the hole is close to the truth's (a flat fill has none).
    var_true, var_fill = truth[..., region].var(dim=-1).mean(), filled[..., region].var(dim=-1).mean()
    assert 0.6 < float(var_fill / var_true) < 1.4
    # Same period.
    if kind == "stripes":
        assert _period_x(filled, lo, hi) == period == _period_x(truth, lo, hi)
        assert _shift_corr(filled, lo, hi, 0, period // 2) < -0.4
    else:
        # Checkerboard: the opposite colour half a period away along both axes (a flat fill has
        # no correlation at all) and positively correlated a whole period away.
        for dy, dx in ((0, period // 2), (period // 2, 0)):
            assert _shift_corr(filled, lo, hi, dy, dx) < -0.4
        for dy, dx in ((0, period), (period, 0)):
            assert _shift_corr(filled, lo, hi, dy, dx) > 0.0
        assert _shift_corr(flat, lo, hi, 0, period // 2) == 0.0
