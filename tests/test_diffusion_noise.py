"""The sampler's noise is drawn ahead and sent to the device in few non-blocking copies (issue 12,
defect 10: a blocking host->device copy at every step keeps the GPU waiting on the host), with
every number unchanged."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from editflow.diffusion.noise import NoiseTape
from editflow.diffusion.sampler import SamplerConfig, masked_sample
from tests.test_diffusion_sampler import LatentDenoiser, OracleDenoiser, _box_mask, _images


class Events(TorchDispatchMode):
    """Records, in order, every random draw and every host->device move torch dispatches."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in ("randn", "normal_", "normal"):
            self.log.append("draw")
        elif name == "_to_copy" and kwargs.get("device") is not None and kwargs["device"] != args[0].device:
            self.log.append(f"copy non_blocking={kwargs.get('non_blocking', False)}")
        return func(*args, **kwargs)


class Recording:
    """Wraps a denoiser: logs each predict call into the shared event list."""

    def __init__(self, inner, log: list[str]) -> None:
        self.inner, self.log = inner, log
        self.space, self.prediction = inner.space, inner.prediction

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, *args):
        self.log.append("predict")
        return self.inner.predict(*args)


@pytest.mark.parametrize("config", [
    SamplerConfig(steps=12, eta=0.0),
    SamplerConfig(steps=12, eta=0.6, strength=0.75),
    SamplerConfig(steps=10, jump_length=3, jump_n_sample=3, eta=1.0),
], ids=["ddim", "ddim-eta-sdedit", "repaint-jumps"])
def test_ddim_chain_draws_all_its_noise_before_the_first_step(config):
    log: list[str] = []
    images, masks = _images(3), _box_mask(3)
    denoiser = Recording(LatentDenoiser(torch.zeros(3, 3, 8, 8)), log)
    generators = [torch.Generator().manual_seed(s) for s in (4, 5, 6)]
    init = _images(3, seed=9) if config.strength < 1 else None
    with Events(log):
        masked_sample(denoiser, images, masks, generators, config, init=init)
    first_step = log.index("predict")
    assert "draw" not in log[first_step:], "noise drawn between steps: each draw is a copy the GPU waits for"
    assert log.count("draw") >= 3 * (1 + log.count("predict"))  # a start and one known-region draw per step, per row


def test_row_noise_is_the_same_numbers_drawn_ahead_or_step_by_step():
    """The tape gives each row exactly what drawing at every step from its generator gives,
    across window boundaries and mixed draw dtypes (DDIM's variance noise is drawn in the sample dtype)."""
    like = torch.zeros(2, 4, 5, 5)
    draws = [torch.float32, torch.float16, torch.float32] * 4
    tape = NoiseTape([torch.Generator().manual_seed(s) for s in (1, 2)], like, draws, window=5)
    got = [tape.next() for _ in draws]
    assert len(tape) == 0
    fresh = [torch.Generator().manual_seed(s) for s in (1, 2)]
    for dtype, tensor in zip(draws, got):
        want = torch.cat([torch.randn(1, 4, 5, 5, generator=g, dtype=dtype) for g in fresh]).float()
        assert torch.equal(tensor, want)
    with pytest.raises(ValueError, match="asked for more"):
        tape.next()


def test_tape_moves_a_window_of_steps_in_one_non_blocking_copy():
    """On another device (meta here: a device without data, so no CUDA is needed) the tape makes
    one non-blocking copy per window, not one per step."""
    like = torch.empty(3, 4, 8, 8, device="meta")
    log: list[str] = []
    tape = NoiseTape([torch.Generator().manual_seed(s) for s in (1, 2, 3)], like, [torch.float32] * 20, window=8)
    with Events(log):
        out = [tape.next() for _ in range(20)]
    assert all(t.device.type == "meta" and t.shape == like.shape for t in out)
    assert tape.copies == 3
    assert [e for e in log if e.startswith("copy")] == ["copy non_blocking=True"] * 3


def test_default_window_holds_a_whole_sd_chain():
    """SD 1.5 at 512 px, 16 rows, 50 DDIM steps with eta: the chain's noise fits one window."""
    like = torch.empty(16, 4, 64, 64, device="meta", dtype=torch.float16)
    tape = NoiseTape([torch.Generator() for _ in range(16)], like, [torch.float16] * 101)
    assert tape.window >= 101


def test_ddpm_keeps_drawing_in_step_order_and_its_bytes():
    """DDPM's step draws its own noise from the row generators inside diffusers, so its chain
    draws just in time; rows stay identical alone and in a batch."""
    images, masks = _images(2), _box_mask(2)
    config = SamplerConfig(steps=6, scheduler="ddpm", jump_length=2, jump_n_sample=2)
    both = masked_sample(OracleDenoiser(torch.zeros_like(images)), images, masks,
                         [torch.Generator().manual_seed(s) for s in (3, 4)], config).images
    alone = masked_sample(OracleDenoiser(torch.zeros_like(images[1:])), images[1:], masks[1:],
                          [torch.Generator().manual_seed(4)], config).images
    assert torch.equal(both[1:], alone)
