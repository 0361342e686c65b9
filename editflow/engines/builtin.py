"""The weight-free default engine: the masked sampler driven by the closed-form patch prior.

Every task is `masked_sample` with `PatchPriorDenoiser` on a small image pyramid (fixed 7×7
patches; a coarse level at high noise plays the role of ELS's large patches):

* the coarsest level (short side ≈ 32 px) runs the task's full trajectory (from noise at
  strength 1, SDEdit at strength < 1, RePaint jumps for `repaint`);
* each finer level is an SDEdit restart: the upsampled coarser result is the `init`, noised to a
  low level (`restart` strength, a few steps) and re-denoised with that level's own patches, which
  puts the detail back.

Tasks and what the patch data set is:

* inpaint — the image's own patches lying fully in the known region; strength 1 (from noise).
* sdedit — the same data; the masked region's own content is the init; strength = the row's
  (default 0.6).
* repaint — as inpaint, plus RePaint resampling jumps (default jump_length 3, jump_n_sample 2) on
  every level but the finest: the coarse levels are cheap and decide the layout, the finest level
  (most of the cost) runs plain. About 1.5× inpaint's time at 256 px.
* tryon, makeup — the reference image's patches (only those inside `params["reference_mask"]`, an
  H'×W' float array, when given), rescaled so the reference's (masked) box matches the target mask's
  box; the target's masked content is the init. Rows reach this path through the try-on and
  makeup engines (engines/tryon.py, engines/makeup.py), subclasses whose `before` hook builds the
  start image and the reference data and sets their own default strength (0.2 try-on, 0.25
  makeup); this class alone falls back to 0.8 / 0.5.

Large images: the engine works on a crop around the mask's bounding box (plus a context margin of
`context` × the box's long side, at least 32 px), downscaled so its long side is at most
`max_side` (default 256) px. The fill is upsampled back to the crop and the edit stage's
composite pastes it over the original, so unmasked pixels stay exact; a small mask in a big photo
keeps full resolution, a big mask comes back softer.

Row params: `BuiltinParams` (below) says each one, its type and default.
Defaults keep a 256 px image with a 25 % hole under 1 s on 2 CPU cores (bench/bench_patch_prior.py).

Schedule: DDIM (eta 0) on the cosine (`squaredcos_cap_v2`) schedule with `linspace` spacing, so
strength 1 starts at t = 999 and the last estimate is made at t = 0 (almost no noise: sharp).
The result reports the coarsest level's steps, strength and jumps; `nfe` is the sum of the
denoiser calls over all levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from editflow.diffusion.patch_prior import PatchPriorDenoiser, build_condition
from editflow.diffusion.sampler import SamplerConfig, masked_sample
from editflow.engines.base import EditRequest, EditResult, EngineError, JobEngine
from editflow.engines.params import EngineParams, param

TASKS = frozenset({"inpaint", "sdedit", "repaint", "tryon", "makeup"})
DEFAULT_STRENGTH = {"inpaint": 1.0, "repaint": 1.0, "sdedit": 0.6, "tryon": 0.8, "makeup": 0.5}
DEFAULT_STEPS = 20
DEFAULT_JUMPS = (3, 2)  # RePaint (jump_length, jump_n_sample) for the weight-free case


@dataclass(frozen=True)
class BuiltinParams(EngineParams):
    """Row params of the builtin engine (defaults keep a 256 px image with a 25 % hole under 1 s on
    2 CPU cores, bench/bench_patch_prior.py)."""

    init: str = param("noise", "noise, or telea: start the coarsest level from an OpenCV Telea fill "
                               "(strength 0.8 unless the row sets one)")
    max_side: int | None = param(None, "long side of the processed crop in px (default: the engine option, else 256)")
    context: float = param(1.0, "context margin around the mask box, × its long side (at least 32 px)")
    restart: float = param(0.4, "SDEdit strength of each finer pyramid level")
    fine_steps: int = param(10, "sampler steps of each finer level")
    min_side: int = param(32, "short side of the coarsest level")
    patch_size: int = param(7, "patch size of the prior")
    max_data: int = param(4096, "data patches per row and level")
    max_queries: int = param(4096, "query patches before striding")
    #: short, so the fill continues its border
    locality: float = param(0.04, "layout prior length, fraction of the level's long side; 0 turns it off")
    #: narrow fold window: close to ELS's centre-pixel rule, keeps texture sharp
    window_rho: float = param(0.1, "fold window std / patch size")
    reference_mask: Any = param(None, "tryon/makeup: H'×W' array or nested list, > 0 = reference pixels to use")

    def knobs(self) -> tuple:
        """The prior's settings (rows that share them run together)."""
        return (self.patch_size, self.max_data, self.max_queries, self.locality, self.window_rho)

#: diffusers scheduler kwargs: cosine schedule; linspace spacing visits both t = 999 (strength 1
#: starts from pure noise) and t = 0 (the last estimate is made at almost no noise, so it is sharp).
SCHEDULE: dict[str, Any] = {
    "beta_schedule": "squaredcos_cap_v2",
    "timestep_spacing": "linspace",
    "clip_sample": False,
}


@dataclass
class _Job:
    """One request prepared for the pyramid (tensors at processing resolution)."""

    index: int
    request: EditRequest
    box: tuple[int, int, int, int]  # crop y0, y1, x0, x1 in the original
    image: torch.Tensor  # [1, 3, h, w] in [-1, 1]
    mask: torch.Tensor  # [1, 1, h, w] binary
    init: torch.Tensor | None
    reference: torch.Tensor | None  # [3, H', W'] in [-1, 1], cropped to its mask box
    reference_mask: torch.Tensor | None  # [1, H', W']
    levels: list[tuple[int, int]]  # coarsest first
    configs: list[SamplerConfig]
    params: BuiltinParams = field(default_factory=BuiltinParams)

    def key(self) -> tuple:
        """Rows sharing this key run through masked_sample together."""
        return (self.request.task, tuple(self.levels), tuple(repr(c) for c in self.configs),
                self.params.knobs(), self.init is None)


class BuiltinEngine(JobEngine):
    """Weight-free editing with the closed-form patch prior (see the module docstring)."""

    name = "builtin"
    tasks = TASKS
    Params = BuiltinParams
    summary = ("the masked sampler with a closed-form patch denoiser whose data set is the image's own unmasked "
               "patches")

    def __init__(self, model: str | None = None, device: str | None = None, **options: Any) -> None:
        super().__init__(model=model, device=device or "cpu", **options)
        self.denoiser = PatchPriorDenoiser()

    # ----------------------------------------------------------------------------------------
    # Preparation

    def _prepare(self, index: int, request: EditRequest) -> _Job:
        task = request.task
        if task not in TASKS:
            raise EngineError(f"engine builtin cannot run task {task!r}; tasks: {', '.join(sorted(TASKS))}")
        if task in ("tryon", "makeup") and request.reference is None:
            raise EngineError(f"task {task} needs a reference image")
        image, mask = request.image, request.mask
        if image.ndim != 3 or image.shape[2] != 3 or mask.shape != image.shape[:2]:
            raise EngineError(f"image must be H×W×3 and mask H×W, got {image.shape} and {mask.shape}")
        p = self.params_of(request)
        max_side = int(p.max_side if p.max_side is not None else self.options.get("max_side", 256))
        context = float(p.context)
        init_mode = p.init.lower()
        if init_mode not in ("noise", "telea"):
            raise EngineError(f"params.init must be 'noise' or 'telea', got {init_mode!r}")

        box = _crop_box(mask > 0, context)
        y0, y1, x0, x1 = box
        crop_h, crop_w = y1 - y0, x1 - x0
        scale = min(1.0, max_side / max(crop_h, crop_w))
        h, w = max(8, round(crop_h * scale)), max(8, round(crop_w * scale))
        img = _to_tensor(image[y0:y1, x0:x1])
        img = F.interpolate(img, size=(h, w), mode="bilinear", antialias=True, align_corners=False) if (h, w) != (crop_h, crop_w) else img
        msk = torch.from_numpy(np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.float32))[None, None]
        msk = (F.interpolate(msk, size=(h, w), mode="area") > 0).float()
        if not bool(msk.any()):
            raise EngineError("mask is empty: nothing to edit")

        strength = request.strength if request.strength is not None else DEFAULT_STRENGTH[task]
        init = None
        if init_mode == "telea" and task in ("inpaint", "repaint"):
            init = _telea(img, msk)
            if request.strength is None:
                strength = 0.8
        steps = int(request.steps or DEFAULT_STEPS)
        jumps = (1, 1)
        if task == "repaint":
            jumps = (int(request.jump_length or DEFAULT_JUMPS[0]), int(request.jump_n_sample or DEFAULT_JUMPS[1]))
        restart = float(p.restart)
        fine_steps = int(p.fine_steps)

        levels = _pyramid(h, w, int(p.min_side))
        configs = []
        for li in range(len(levels)):
            coarse = li == 0
            cfg = SamplerConfig(
                steps=steps if coarse else fine_steps,
                strength=float(strength) if coarse else min(restart, float(strength)),
                scheduler="ddim",
                jump_length=jumps[0] if li < len(levels) - 1 or len(levels) == 1 else 1,
                jump_n_sample=jumps[1] if li < len(levels) - 1 or len(levels) == 1 else 1,
                schedule=dict(SCHEDULE),
            )
            cfg.validate()
            configs.append(cfg)

        reference = reference_mask = None
        if task in ("tryon", "makeup"):
            reference, reference_mask = _reference(request.reference, p.reference_mask)
        return _Job(index, request, box, img, msk, init, reference, reference_mask, levels, configs, p)

    # ----------------------------------------------------------------------------------------
    # The pyramid: one masked_sample call per level for the whole group

    def _run(self, jobs: list[_Job]) -> list[EditResult]:
        device = torch.device(self.device)
        first = jobs[0]
        task = first.request.task
        use_reference = task in ("tryon", "makeup")
        generators = [torch.Generator(device="cpu").manual_seed(int(j.request.seed)) for j in jobs]
        full_img = torch.cat([j.image for j in jobs]).to(device)
        full_mask = torch.cat([j.mask for j in jobs]).to(device)
        patch = int(first.params.patch_size)
        max_data = int(first.params.max_data)
        max_queries = int(first.params.max_queries)
        locality = float(first.params.locality) or None
        result: torch.Tensor | None = None
        nfe = 0
        n_levels = len(first.levels)
        for li, (size, cfg) in enumerate(zip(first.levels, first.configs)):
            img = _resize(full_img, size, antialias=True)
            msk = (F.interpolate(full_mask, size=size, mode="area") > 0).float()
            if result is not None:
                init = _resize(result, size)
            elif first.init is not None:
                init = _resize(torch.cat([j.init for j in jobs]).to(device), size, antialias=True)
            else:
                init = None
            refs = ref_masks = None
            if use_reference:
                refs, ref_masks = zip(*[_reference_at(j, msk[i, 0]) for i, j in enumerate(jobs)])
            stride = _query_stride(msk, patch, max_queries)
            cond = build_condition(
                img, msk, generators,
                references=list(refs) if refs else None,
                reference_masks=list(ref_masks) if ref_masks else None,
                include_known=not use_reference,
                patch_size=patch, query_stride=stride, max_data=max_data, locality=locality,
                window_rho=float(first.params.window_rho),
                level=n_levels - 1 - li, levels=n_levels,
            )
            out = masked_sample(self.denoiser, img, msk, generators, cfg, condition=cond, init=init)
            result, nfe = out.images, nfe + out.nfe

        assert result is not None
        coarse = first.configs[0]
        results = []
        for i, job in enumerate(jobs):
            image = _paste(job, result[i : i + 1].cpu())
            results.append(EditResult(
                image=image, nfe=nfe, scheduler=coarse.scheduler, steps=coarse.steps, strength=coarse.strength,
                jump_length=coarse.jump_length, jump_n_sample=coarse.jump_n_sample,
                proc_width=int(job.image.shape[-1]), proc_height=int(job.image.shape[-2]),
                model="patch-prior",
            ))
        return results


# --------------------------------------------------------------------------------------------
# Helpers


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 -> [1, 3, H, W] float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] in [-1, 1] -> H×W×3 uint8."""
    return x[0].clamp(-1, 1).add(1).mul(127.5).round().byte().permute(1, 2, 0).numpy()


def _resize(x: torch.Tensor, size: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=antialias, align_corners=False)


def _crop_box(hole: np.ndarray, context: float) -> tuple[int, int, int, int]:
    """Mask bounding box grown by `context` × its long side (≥ 32 px), clipped to the image."""
    ys, xs = np.nonzero(hole)
    if ys.size == 0:
        raise EngineError("mask is empty: nothing to edit")
    height, width = hole.shape
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    margin = max(32, int(math.ceil(context * max(y1 - y0, x1 - x0))))
    return max(0, y0 - margin), min(height, y1 + margin), max(0, x0 - margin), min(width, x1 + margin)


def _pyramid(h: int, w: int, min_side: int) -> list[tuple[int, int]]:
    """Level sizes, coarsest first, halving until the short side would drop below `min_side`."""
    sizes = [(h, w)]
    while min(sizes[-1]) // 2 >= min_side:
        ph, pw = sizes[-1]
        sizes.append(((ph + 1) // 2, (pw + 1) // 2))
    return sizes[::-1]


def _query_stride(mask: torch.Tensor, patch: int, max_queries: int) -> int:
    """Smallest query stride (≤ patch // 2, so patches still overlap) keeping queries ≤ max_queries."""
    touched = F.max_pool2d(mask, patch, stride=1).sum(dim=(1, 2, 3)).max()
    stride = 1
    while float(touched) / (stride * stride) > max_queries and stride < max(1, patch // 2):
        stride += 1
    return stride


def _telea(img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """OpenCV Telea fill of the masked region (the classical init)."""
    rgb = _to_uint8(img)
    hole = (mask[0, 0].numpy() > 0).astype(np.uint8) * 255
    return _to_tensor(cv2.inpaint(rgb, hole, 5, cv2.INPAINT_TELEA))


def _reference(reference: np.ndarray, reference_mask: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference image (and optional mask) cropped to the mask's bounding box."""
    ref = np.asarray(reference)
    if ref.ndim != 3 or ref.shape[2] != 3:
        raise EngineError(f"reference must be H×W×3, got {ref.shape}")
    if reference_mask is None:
        return _to_tensor(ref)[0], None
    rmask = np.asarray(reference_mask, dtype=np.float32)
    if rmask.shape != ref.shape[:2]:
        raise EngineError(f"params.reference_mask must be {ref.shape[:2]}, got {rmask.shape}")
    ys, xs = np.nonzero(rmask > 0)
    if ys.size == 0:
        return _to_tensor(ref)[0], None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return _to_tensor(ref[y0:y1, x0:x1])[0], torch.from_numpy(rmask[y0:y1, x0:x1] > 0).float()[None]


def _reference_at(job: _Job, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The job's reference rescaled so its box matches the target mask's box at this level."""
    assert job.reference is not None
    ys, xs = torch.nonzero(mask > 0, as_tuple=True)
    box_h = int(ys.max() - ys.min() + 1) if ys.numel() else mask.shape[0]
    box_w = int(xs.max() - xs.min() + 1) if xs.numel() else mask.shape[1]
    rh, rw = job.reference.shape[-2:]
    scale = math.sqrt(box_h * box_w / float(rh * rw))
    size = (max(8, round(rh * scale)), max(8, round(rw * scale)))
    ref = _resize(job.reference[None].to(mask.device), size, antialias=True)[0]
    rmask = None
    if job.reference_mask is not None:
        rmask = (F.interpolate(job.reference_mask[None].to(mask.device), size=size, mode="area") > 0.5).float()[0]
    return ref, rmask


def _paste(job: _Job, result: torch.Tensor) -> np.ndarray:
    """Upsample the processed crop back and place it over the original under the mask."""
    y0, y1, x0, x1 = job.box
    crop = _resize(result, (y1 - y0, x1 - x0)) if tuple(result.shape[-2:]) != (y1 - y0, x1 - x0) else result
    out = job.request.image.copy()
    region = out[y0:y1, x0:x1]
    edit = job.request.mask[y0:y1, x0:x1] > 0
    region[edit] = _to_uint8(crop)[edit]
    return out
