"""THE masked diffusion sampler: SDEdit start, RePaint known-region replacement and resampling jumps.

Every diffusion edit in editflow runs through `masked_sample`; only the denoiser changes
(see `editflow.diffusion.denoiser.Denoiser`). The loop works in the denoiser's model space
(identity for pixel models, VAE latents for latent models):

1. **Schedule.** Timesteps and alphas come from a diffusers `DDIMScheduler` or `DDPMScheduler`
   built from `SamplerConfig.schedule` (so a latent model can pass its own `scheduler.config`).
   Each denoising transition is the scheduler's own `step`.
2. **SDEdit start.** `k = min(int(steps * strength), steps)` denoising steps, counted exactly like
   `StableDiffusionImg2ImgPipeline.get_timesteps`: the chain starts at `scheduler.timesteps[steps - k]`
   from `scheduler.add_noise(start, noise, t)`, where `start` is `encode(init)` under the mask and
   `encode(images)` elsewhere. At `strength == 1` it starts from pure noise, as diffusers' inpaint
   pipeline does at full strength.
3. **RePaint.** After every denoising transition the known region (mask == 0) is replaced by the
   original forward-noised to the level just reached, with fresh noise (Lugmayr et al. 2022, Alg. 1).
4. **Resampling jumps.** The order of denoising steps and "undo" steps is the one
   `diffusers.RePaintScheduler.set_timesteps(k, jump_length, jump_n_sample)` produces, laid on the
   `k` lowest noise levels of the `steps`-level grid. An undo forward-noises the whole sample from
   its level to the next level up with q(x_t | x_s) = N(sqrt(abar_t / abar_s) x_s, 1 - abar_t / abar_s),
   i.e. all the single train steps between the two levels at once. With strength 1 the sequence is
   exactly RePaintScheduler's; with strength < 1 the jumps never climb above the SDEdit start level.
5. **Paste back.** Decode, then `out = mask * decoded + (1 - mask) * images` in pixel space, with
   pixels under mask == 0 copied bit-for-bit from the input.

Mask convention: 1 = edit (diffusers' "white = repaint"); RePaintScheduler's 1 = keep convention is
never used here, only its jump order.

Randomness: row i draws all of its noise from `generators[i]` on the CPU, so a row gives the same
result alone or inside any batch, on any device count. The noise of many steps is drawn ahead and
sent to the device in one non-blocking copy (editflow.diffusion.noise.NoiseTape), so no step waits
for the host; the step math reads its schedule scalars on the CPU for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler, RePaintScheduler

from editflow.diffusion.denoiser import Denoiser
from editflow.diffusion.noise import NoiseTape

__all__ = [
    "SamplerConfig",
    "SampleOutput",
    "Transition",
    "SamplerPlan",
    "make_scheduler",
    "plan_transitions",
    "masked_sample",
]

_SCHEDULERS: dict[str, type[DDIMScheduler] | type[DDPMScheduler]] = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
}

#: level index of the clean sample (below the lowest timestep of the grid).
CLEAN = -1


@dataclass
class SamplerConfig:
    """How to run the masked sampler. Defaults: 50 DDIM steps from pure noise, no resampling."""

    steps: int = 50
    #: SDEdit strength: `int(steps * strength)` denoising steps, as diffusers' img2img counts them.
    strength: float = 1.0
    #: "ddim" (deterministic when eta == 0) or "ddpm" (ancestral).
    scheduler: str = "ddim"
    #: DDIM eta (0 = deterministic, 1 = DDPM-like variance); ignored by "ddpm".
    eta: float = 0.0
    #: RePaint jump length j; (j, r) == (1, 1) or r == 1 means no resampling.
    jump_length: int = 1
    #: RePaint resampling count r.
    jump_n_sample: int = 1
    #: diffusers scheduler config kwargs (num_train_timesteps, beta_schedule, steps_offset, ...).
    schedule: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.scheduler not in _SCHEDULERS:
            raise ValueError(f"scheduler must be one of {sorted(_SCHEDULERS)}, got {self.scheduler!r}")
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength!r}")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta!r}")
        if int(self.jump_length) != self.jump_length or self.jump_length < 1:
            raise ValueError(f"jump_length must be a positive integer, got {self.jump_length!r}")
        if int(self.jump_n_sample) != self.jump_n_sample or self.jump_n_sample < 1:
            raise ValueError(f"jump_n_sample must be a positive integer, got {self.jump_n_sample!r}")
        if self.denoising_steps < 1:
            raise ValueError(
                f"steps={self.steps} with strength={self.strength} gives int(steps * strength) = "
                f"{self.denoising_steps} denoising steps; raise steps or strength"
            )

    @property
    def denoising_steps(self) -> int:
        """`k`: the number of noise levels the chain uses (diffusers' `get_timesteps` rule)."""
        return min(int(self.steps * self.strength), int(self.steps))


@dataclass
class SampleOutput:
    """The result of `masked_sample`."""

    #: `[B, 3, H, W]` in [-1, 1]; pixels with mask == 0 are the input's, bit for bit.
    images: torch.Tensor
    #: denoiser.predict calls (one per denoising transition, for the whole batch).
    nfe: int
    #: transition labels in `RePaintScheduler.timesteps` convention (see `Transition.label`).
    timesteps: list[int]


@dataclass(frozen=True)
class Transition:
    """One move of the chain between two noise levels (train timesteps; `CLEAN` = -1)."""

    kind: Literal["denoise", "undo"]
    t_from: int
    t_to: int
    #: RePaintScheduler's label: the denoiser's timestep for a denoising step; for an undo, the
    #: level one above the level it reaches (diffusers labels undos by `t` and noises from `t_last`).
    label: int


@dataclass(frozen=True)
class SamplerPlan:
    """The whole chain for a config: start level and the transitions, in order."""

    t_start: int
    transitions: list[Transition]

    @property
    def nfe(self) -> int:
        """Denoiser calls the plan needs."""
        return sum(tr.kind == "denoise" for tr in self.transitions)

    @property
    def labels(self) -> list[int]:
        return [tr.label for tr in self.transitions]


def make_scheduler(config: SamplerConfig, prediction: str = "epsilon") -> DDIMScheduler | DDPMScheduler:
    """A diffusers scheduler from `config.schedule`, set to `config.steps` inference steps.

    `prediction_type` is the denoiser's (`epsilon` or `sample`), so the scheduler's `step` does
    the epsilon <-> x0 conversion; extra keys (e.g. a PNDM config of an SD checkpoint) are ignored
    by diffusers with a warning.
    """
    config.validate()
    schedule = {k: v for k, v in config.schedule.items() if not k.startswith("_")}
    schedule["prediction_type"] = prediction
    scheduler = _SCHEDULERS[config.scheduler].from_config(schedule)
    scheduler.set_timesteps(int(config.steps))
    return scheduler


def plan_transitions(config: SamplerConfig, scheduler: DDIMScheduler | DDPMScheduler) -> SamplerPlan:
    """The chain for `config` on `scheduler`'s timestep grid (after `set_timesteps(config.steps)`).

    The jump order is generated by `RePaintScheduler.set_timesteps(k, j, r)` with
    `num_train_timesteps=k`, so its timesteps are plain level indices 0..k-1. Level index i maps
    to the i-th smallest timestep of the grid, so the k lowest levels are exactly the ones
    img2img's `timesteps[steps - k:]` visits.
    """
    config.validate()
    k = config.denoising_steps
    levels = [int(t) for t in scheduler.timesteps.flip(0).tolist()]  # ascending noise
    repaint = RePaintScheduler(num_train_timesteps=k)
    repaint.set_timesteps(k, jump_length=int(config.jump_length), jump_n_sample=int(config.jump_n_sample))
    indices = [int(i) for i in repaint.timesteps.tolist()]

    def level(i: int) -> int:
        return CLEAN if i < 0 else levels[i]

    # RePaintScheduler's pipeline loop: label < previous label -> denoise at label (level i -> i-1);
    # otherwise undo_step from the level reached (i -> i+1). Track the level index explicitly.
    state, last = indices[0], indices[0] + 1
    transitions: list[Transition] = []
    for e in indices:
        if e < last:
            assert state == e, (state, e)
            transitions.append(Transition("denoise", level(state), level(state - 1), level(e)))
            state -= 1
        else:
            assert state + 1 == e - 1, (state, e)
            transitions.append(Transition("undo", level(state), level(state + 1), level(e)))
            state += 1
        last = e
    assert state == CLEAN, state
    return SamplerPlan(t_start=levels[k - 1], transitions=transitions)


def _alpha_bars(scheduler: DDIMScheduler | DDPMScheduler) -> Callable[[int], torch.Tensor]:
    """t -> abar_t (CPU scalar) as the scheduler's step uses it; `CLEAN` -> DDIM's final_alpha_cumprod or 1.

    A CPU copy taken up front: diffusers' add_noise moves `scheduler.alphas_cumprod` to the device.
    """
    table = scheduler.alphas_cumprod.detach().to("cpu", torch.float32).clone()
    final = torch.as_tensor(getattr(scheduler, "final_alpha_cumprod", 1.0)).to("cpu", torch.float32)
    return lambda t: table[t] if t >= 0 else final


def _noised(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0) sample: sqrt(abar) x0 + sqrt(1 - abar) noise (diffusers' add_noise formula).

    `alpha_bar` stays a CPU scalar: the device kernels take its value without a host->device copy."""
    a = alpha_bar.to(dtype=x0.dtype)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def _noise_draws(plan: SamplerPlan, config: SamplerConfig, sample_dtype: torch.dtype) -> tuple[list[torch.dtype], int | None]:
    """The dtypes of every noise tensor the chain takes, in order (see `NoiseTape`), and the tape's
    window: None (many steps at once) unless diffusers' step draws noise from the row generators
    itself (DDPM), which fixes the draw order step by step (window 1: each tensor just in time)."""
    variance = config.scheduler == "ddim" and config.eta > 0  # drawn as diffusers' randn_tensor: sample dtype
    draws = [torch.float32]  # the start
    for tr in plan.transitions:
        if tr.kind == "denoise" and variance:
            draws.append(sample_dtype)
        draws.append(torch.float32)  # the known region's fresh noise, or the undo's
    return draws, (None if config.scheduler == "ddim" else 1)


def _as_batch(name: str, value: torch.Tensor | Sequence[torch.Tensor], channels: int) -> torch.Tensor:
    """Accept `[B, C, H, W]` or a list of `[C, H, W]` / `[1, C, H, W]` rows that share H and W."""
    if not isinstance(value, torch.Tensor):
        rows = [r if r.dim() == 4 else r.unsqueeze(0) for r in value]
        sizes = sorted({tuple(r.shape[-2:]) for r in rows})
        if len(sizes) > 1:
            raise ValueError(
                f"{name}: all rows in one masked_sample call must share height and width "
                f"(group rows by size first); got sizes {sizes}"
            )
        value = torch.cat(rows) if rows else torch.empty(0)
    if value.dim() != 4 or value.shape[1] != channels or value.shape[0] == 0 or not value.is_floating_point():
        raise ValueError(
            f"{name} must be a float [B, {channels}, H, W] with B >= 1, "
            f"got {value.dtype} {tuple(value.shape)}"
        )
    return value


@torch.no_grad()
def masked_sample(
    denoiser: Denoiser,
    images: torch.Tensor | Sequence[torch.Tensor],
    masks: torch.Tensor | Sequence[torch.Tensor],
    generators: Sequence[torch.Generator],
    config: SamplerConfig,
    condition: Any = None,
    init: torch.Tensor | Sequence[torch.Tensor] | None = None,
    callback: Callable[[int, int, int], None] | None = None,
) -> SampleOutput:
    """Repaint the masked region of a batch of same-size images with `denoiser`.

    Args:
        denoiser: implements `editflow.diffusion.denoiser.Denoiser`.
        images: `[B, 3, H, W]` in [-1, 1] (or a list of rows of one size). Device of the run.
        masks: `[B, 1, H, W]` float in [0, 1], **1 = edit**; soft values blend.
        generators: B CPU `torch.Generator`s; row i's noise comes only from `generators[i]`.
        config: steps, strength, scheduler, eta, RePaint jumps and the diffusers schedule.
        condition: passed unchanged to every `denoiser.predict` call.
        init: optional `[B, 3, H, W]` image the SDEdit start noises under the mask (default
            `images`), e.g. a classical fill or an upsampled coarse result. Unused at strength 1.
        callback: `callback(call_index, total_calls, t)` after each denoiser call.

    Returns:
        `SampleOutput` with the pasted-back images, the denoiser call count and the
        transition labels (equal to `RePaintScheduler.timesteps` at strength 1).
    """
    images = _as_batch("images", images, 3)
    masks = _as_batch("masks", masks, 1)
    batch, _, height, width = images.shape
    if masks.shape != (batch, 1, height, width):
        raise ValueError(
            f"masks must be [B, 1, H, W] = {(batch, 1, height, width)}, got {tuple(masks.shape)}"
        )
    if init is not None:
        init = _as_batch("init", init, 3)
        if init.shape != images.shape:
            raise ValueError(f"init must match images {tuple(images.shape)}, got {tuple(init.shape)}")
    if len(generators) != batch:
        raise ValueError(f"need one generator per row: {batch} rows, {len(generators)} generators")
    if any(not isinstance(g, torch.Generator) or g.device.type != "cpu" for g in generators):
        raise ValueError("generators must be CPU torch.Generator objects (noise is drawn on the CPU)")
    masks = masks.to(device=images.device, dtype=images.dtype)
    if masks.numel() and (masks.min() < 0 or masks.max() > 1):
        raise ValueError("masks must be floats in [0, 1] with 1 = edit")

    scheduler = make_scheduler(config, denoiser.prediction)
    plan = plan_transitions(config, scheduler)
    alpha_bar = _alpha_bars(scheduler)
    total = plan.nfe

    x0 = denoiser.encode(images)
    m = denoiser.mask_to_space(masks).to(device=x0.device, dtype=x0.dtype)
    if m.shape != (batch, 1, *x0.shape[2:]):
        raise ValueError(f"mask_to_space returned {tuple(m.shape)} for samples {tuple(x0.shape)}")
    # the SDEdit start matters below strength 1 only (pure noise at 1): no VAE encode of `init` there
    start = x0 if init is None or config.strength == 1.0 else m * denoiser.encode(init.to(images)) + (1 - m) * x0

    draws, window = _noise_draws(plan, config, x0.dtype)
    tape = NoiseTape(generators, x0, draws, window=window)
    noise = tape.next()
    if config.strength == 1.0:
        # diffusers' inpaint pipeline at strength 1 (is_strength_max): pure noise, not add_noise at t_max.
        x = noise * scheduler.init_noise_sigma
    else:
        x = scheduler.add_noise(start, noise, torch.tensor([plan.t_start]))

    # DDIM takes eta and its variance noise from the tape; DDPM draws its step noise per row from the
    # row generators itself (diffusers' randn_tensor).
    variance = config.scheduler == "ddim" and config.eta > 0
    step_kwargs: dict[str, Any] = {"eta": config.eta} if config.scheduler == "ddim" else {"generator": list(generators)}
    nfe = 0
    for tr in plan.transitions:
        if tr.kind == "denoise":
            t = tr.t_from
            t_batch = torch.full((batch,), t, dtype=torch.long, device=x.device)
            abar = torch.full((batch,), float(alpha_bar(t)), dtype=torch.float32, device=x.device)
            out = denoiser.predict(x, t_batch, abar, condition)
            nfe += 1
            if variance:
                step_kwargs["variance_noise"] = tape.next()
            x = scheduler.step(out.to(x.dtype), t, x, **step_kwargs).prev_sample
            # RePaint: the known region is the original at the level just reached, fresh noise each time.
            known = _noised(x0, tape.next(), alpha_bar(tr.t_to))
            x = m * x + (1 - m) * known
            if callback is not None:
                callback(nfe - 1, total, t)
        else:
            # Undo: q(x_to | x_from), the composition of every single train step between the levels.
            ratio = (alpha_bar(tr.t_to) / alpha_bar(tr.t_from)).to(x.dtype)  # a CPU scalar: no copy
            x = ratio.sqrt() * x + (1 - ratio).clamp(min=0).sqrt() * tape.next()

    decoded = denoiser.decode(x).to(device=images.device, dtype=images.dtype).clamp(-1, 1)
    if decoded.shape != images.shape:
        raise ValueError(f"denoiser.decode returned {tuple(decoded.shape)}, expected {tuple(images.shape)}")
    # Exact paste-back: where mask == 0 the input pixel is copied, never recomputed (0 * NaN is NaN).
    pasted = torch.where(masks == 0, images, masks * decoded + (1 - masks) * images)
    return SampleOutput(images=pasted, nfe=nfe, timesteps=plan.labels)
