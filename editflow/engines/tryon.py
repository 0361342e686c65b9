"""Weight-free virtual try-on: the builtin patch-prior sampler with the garment as its data set,
plus the person's shading put back (engine `builtin`, task `tryon`).

This is a *weight-free approximation* of try-on, not a try-on model. It knows nothing of folds or
3-D shape: it lays the garment's own silhouette onto the person's pose (neckline, shoulders,
sleeves, hem) inside the garment mask (made by the mask stage, e.g. `garment:upper`), refills the
rest of the mask from the person's picture, and keeps the person's shading. The conditioned
diffusers engines are the real thing; this one runs anywhere, offline.

Per row:

1. **Garment** (cached per worker by `reference_key`): the garment photo's foreground — garment
   photos are usually shot on a plain background, so pixels far (CIE ΔE) from the border's median
   colour, cleaned up (open/close, largest parts, holes filled, eroded 1 px so no patch straddles
   the background), or `params["reference_mask"]` when the row gives one (an H'×W' array or nested
   list, > 0 = garment). A photo with a busy border counts as all garment. The crop to the
   foreground box, its mask, its mean colour and its keypoints (`garment_fit.garment_keypoints`:
   collar top centre, shoulder corners, sleeve ends, hem corners; waistband, crotch and hems for
   `lower`) are kept. The category picks what to sample:
   `upper` on a tall photo (height > 1.6 × width: a dress or a full outfit) samples its top part,
   `lower` on such a photo its bottom part; otherwise (and for `dress`) all of it; override with
   `params["garment_region"]` = "all" | "top" | "bottom".
2. **Fit** (`params["fit"]` "pose", the default): the person's MediaPipe pose (`masks/body.py`,
   cached per worker by `image_key`) places the same keypoints on the body (`person_keypoints`:
   sleeve ends at the garment's own sleeve length along the arm, hem at the hips, knees or ankles
   by category and `dress_length`); a thin-plate spline (OpenCV's shape transformer) warps the
   garment from its keypoints onto them. The garment's region is its warped silhouette inside the
   mask. `fit` "box", no person found, or a fit covering under 5 % of the mask: the garment crop
   stretched onto the mask's bounding box (the old layout; `params["start"]` "flat" uses the
   garment's mean colour instead), the whole mask being the garment's region.
3. **Refill**: the rest of the mask (beside a sleeve, above the neckline, past the hem) is inpainted
   by the builtin sampler (task `inpaint`: the person's own patches outside the mask, so wall,
   skin or background — never the old garment).
4. **Garment sampler**: inside the garment's region, the fitted garment × the person's shading
   (below) is the start; `BuiltinEngine` with task `tryon` runs `masked_sample` with the
   `PatchPriorDenoiser`, the garment's foreground patches as the data set, SDEdit at strength
   default 0.2. The sampler re-synthesises the start from garment patches, which removes the
   warp's resampling blur and seams; above ~0.4 it also scrambles regular patterns (checks,
   stripes): a 7×7-patch prior keeps no long-range period, so the start's layout is what keeps it.
5. **Shading** (inside the garment's region) (offline_perf.md §1.6: "do the transfer on a detail/chroma layer and keep the
   target's low-frequency luminance"): an intrinsic-image split in linear RGB, image = albedo ×
   shading, with shading = low-pass luminance / its mean over the mask (a Gaussian of
   `shading_sigma` × the mask box's long side, default 0.04, normalised inside the mask only).
   The output is the sampler's result × (person's shading / result's own shading) ^ `keep_shading`
   (default 1; 0 skips this step). The garment keeps its mean colour and its texture
   finer than the low-pass; the person's folds and light come back. The person's shading is clipped
   to [0.35, 1.6] × its mean, so a dark badge or a strap on the old clothes does not become a black
   hole in the new ones — but it does still show, faintly: albedo and shading are not separable
   from one photo, and a garment pattern coarser than the low-pass is flattened.

Row params: `TryOnParams` (below; the builtin's plus the garment's and the fit's). The row's
`strength` (default 0.2) and `steps` go to the sampler as usual.
Engine options: `cache` (default True; False prepares the garment and runs the pose on every row),
`cache_size` (garments and poses kept per worker, default 32).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from editflow.engines.base import EditRequest, EditResult, EngineError, composite_unmasked
from editflow.engines.builtin import BuiltinEngine, BuiltinParams
from editflow.engines.garment_fit import Keypoints, garment_keypoints, person_keypoints, warp_garment
from editflow.engines.params import param
from editflow.lru import LRUCache
from editflow.tasks import CATEGORIES

REGIONS = ("all", "top", "bottom")
TALL = 1.6  # foreground height / width above which a garment photo is a dress or a full outfit
SHADING_CLIP = (0.35, 1.6)
DEFAULT_STRENGTH = 0.2
FITS = ("pose", "box")
MIN_FIT = 0.05  # a pose fit covering less of the mask than this falls back to the box layout


@dataclass(frozen=True)
class TryOnParams(BuiltinParams):
    """Row params of the weight-free try-on: the builtin sampler's plus the garment's and the fit's."""

    garment_region: str | None = param(None, "all, top or bottom of the garment photo (default: from the category)")
    fit: str = param("pose", "pose (the garment warped onto the person's pose) or box (onto the mask's box)")
    start: str = param("warp", "warp (the garment laid onto the mask) or flat (its mean colour)")
    keep_shading: float = param(1.0, "how much of the person's shading comes back (0 skips it)")
    shading_sigma: float = param(0.04, "shading low-pass, fraction of the mask box's long side")
    bg_threshold: float = param(12.0, "ΔE from the photo's border colour that counts as garment")


@dataclass
class Garment:
    """A garment photo prepared for sampling (what the per-worker cache keeps)."""

    rgb: np.ndarray  # h×w×3 uint8: the photo cropped to the sampled foreground's box
    mask: np.ndarray  # h×w float32 {0, 1}: the sampled foreground inside that crop
    mean_rgb: np.ndarray  # (3,) float32 linear RGB mean over the mask
    foreground: np.ndarray  # H'×W' bool: the whole foreground in the original photo
    region: str  # "all" | "top" | "bottom"
    source: str  # "estimated" | "given" | "whole"
    keypoints: Keypoints | None = None  # neckline, shoulders, sleeves, hem in the crop (garment_fit)


# --------------------------------------------------------------------------------------------
# Garment preparation


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def garment_foreground(reference: np.ndarray, threshold: float = 12.0) -> tuple[np.ndarray, str]:
    """Bool foreground of a garment photo, and how it was found ("estimated" or "whole").

    The background is the border's median colour when the border is plain (most of it within
    `threshold` ΔE of its median); the garment is what differs from it, cleaned up. A busy border
    or an implausible result (under 2 % or over 98 % of the photo) -> the whole photo.
    """
    h, w = reference.shape[:2]
    lab = _lab(reference)
    b = max(1, min(h, w) // 64)
    border = np.concatenate([lab[:b].reshape(-1, 3), lab[-b:].reshape(-1, 3),
                             lab[:, :b].reshape(-1, 3), lab[:, -b:].reshape(-1, 3)])
    colour = np.median(border, axis=0)
    if np.mean(np.linalg.norm(border - colour, axis=1) < threshold) < 0.8:
        return np.ones((h, w), bool), "whole"
    fg = (np.linalg.norm(lab - colour, axis=2) >= threshold).astype(np.uint8)
    k = max(3, (min(h, w) // 100) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    fg = cv2.morphologyEx(cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return np.ones((h, w), bool), "whole"
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.nonzero(areas >= 0.1 * areas.max())[0]
    fg = np.isin(labels, keep).astype(np.uint8)
    # fill holes: background = what a flood from the border reaches
    padded = np.pad(fg, 1)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 2)
    fg = (flood[1:-1, 1:-1] != 2).astype(np.uint8)
    fg = cv2.erode(fg, np.ones((3, 3), np.uint8))  # no patch straddles the anti-aliased edge
    fraction = float(fg.mean())
    if not 0.02 <= fraction <= 0.98:
        return np.ones((h, w), bool), "whole"
    return fg.astype(bool), "estimated"


def _region_for(category: str | None, foreground: np.ndarray, asked: Any) -> str:
    if asked is not None:
        region = str(asked).lower()
        if region not in REGIONS:
            raise EngineError(f"params.garment_region must be one of {', '.join(REGIONS)}, got {asked!r}")
        return region
    ys, xs = np.nonzero(foreground)
    tall = (ys.max() - ys.min() + 1) > TALL * (xs.max() - xs.min() + 1)
    if tall and category == "upper":
        return "top"
    if tall and category == "lower":
        return "bottom"
    return "all"


def prepare_garment(reference: np.ndarray, category: str | None = None, reference_mask: Any = None,
                    region: Any = None, threshold: float = 12.0) -> Garment:
    """Foreground, sampled region, crop and mean colour of a garment photo (see the module doc)."""
    ref = np.asarray(reference)
    if ref.ndim != 3 or ref.shape[2] != 3 or ref.dtype != np.uint8:
        raise EngineError(f"reference must be an H×W×3 uint8 image, got {ref.shape} {ref.dtype}")
    if category is not None and category not in CATEGORIES:
        raise EngineError(f"category must be one of {', '.join(CATEGORIES)}, got {category!r}")
    if reference_mask is not None:
        fg = np.asarray(reference_mask, dtype=np.float32)
        if fg.shape != ref.shape[:2]:
            raise EngineError(f"params.reference_mask must be {ref.shape[:2]}, got {fg.shape}")
        fg, source = fg > 0, "given"
        if not fg.any():
            raise EngineError("params.reference_mask is empty")
    else:
        fg, source = garment_foreground(ref, threshold)
    region = _region_for(category, fg, region)
    sampled = fg.copy()
    if region != "all":
        ys = np.nonzero(fg)[0]
        y0, y1 = int(ys.min()), int(ys.max()) + 1
        cut = y0 + int(round(0.55 * (y1 - y0)))
        if region == "top":
            sampled[cut:] = False
        else:
            sampled[: y1 - (cut - y0)] = False
    ys, xs = np.nonzero(sampled)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    rgb = np.ascontiguousarray(ref[y0:y1, x0:x1])
    mask = sampled[y0:y1, x0:x1].astype(np.float32)
    mean = _linear(rgb)[mask > 0].mean(axis=0).astype(np.float32)
    keypoints = garment_keypoints(mask, "lower" if region == "bottom" else (category or "upper"))
    return Garment(rgb=rgb, mask=mask, mean_rgb=mean, foreground=fg, region=region, source=source,
                   keypoints=keypoints)


# --------------------------------------------------------------------------------------------
# Shading


def _linear(rgb: np.ndarray) -> np.ndarray:
    """uint8 sRGB -> float32 linear RGB in [0, 1]."""
    x = rgb.astype(np.float32) / 255.0
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _srgb(lin: np.ndarray) -> np.ndarray:
    """float linear RGB -> uint8 sRGB."""
    x = np.clip(lin, 0.0, 1.0)
    x = np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _luminance(lin: np.ndarray) -> np.ndarray:
    # a weighted sum, not `lin @ weights`: no BLAS call (OpenBLAS threads fight torch's on small CPUs)
    return 0.2126 * lin[..., 0] + 0.7152 * lin[..., 1] + 0.0722 * lin[..., 2]


def _masked_blur(values: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised convolution: the Gaussian mean of `values` over the mask's pixels only."""
    m = mask.astype(np.float32)
    num = cv2.GaussianBlur(values * m, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    den = cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return num / np.maximum(den, 1e-6)


def shading_map(rgb: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Low-frequency luminance inside the mask over its mean there (1 = average light)."""
    lum = _luminance(_linear(rgb))
    low = _masked_blur(lum, mask, sigma)
    inside = mask > 0
    return low / max(float(low[inside].mean()), 1e-6)


def _box(mask: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask > 0)
    h, w = mask.shape
    return (max(0, int(ys.min()) - margin), min(h, int(ys.max()) + 1 + margin),
            max(0, int(xs.min()) - margin), min(w, int(xs.max()) + 1 + margin))


def _sigma(mask: np.ndarray, fraction: float) -> float:
    ys, xs = np.nonzero(mask > 0)
    return max(1.0, fraction * max(int(np.ptp(ys)) + 1, int(np.ptp(xs)) + 1))


def garment_layout(garment: Garment, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The garment crop stretched onto the mask's bounding box (a box-to-box affine warp, the
    crudest garment warp there is): linear RGB H×W×3 and a bool H×W "garment pixel here" map. Where
    the stretched garment has background (the neck hole, beside the sleeves) it is its mean colour."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask > 0)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    lin = _linear(garment.rgb)
    lin[garment.mask <= 0] = garment.mean_rgb
    size = (x1 - x0, y1 - y0)
    area = (x1 - x0) * (y1 - y0) < garment.mask.size
    stretched = cv2.resize(lin, size, interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)
    valid = cv2.resize(garment.mask, size, interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR) > 0.5
    layout = np.broadcast_to(garment.mean_rgb, (h, w, 3)).copy()
    layout[y0:y1, x0:x1] = stretched
    on = np.zeros((h, w), bool)
    on[y0:y1, x0:x1] = valid
    return layout, on


def shaded_start(person: np.ndarray, mask: np.ndarray, garment: Garment, sigma_fraction: float = 0.04,
                 mode: str = "warp", albedo: np.ndarray | None = None) -> np.ndarray:
    """The sampler's start: inside the mask, the garment × the person's shading; the person
    elsewhere. The garment is `albedo` (linear RGB H×W×3, e.g. the pose-fitted warp) when given,
    else by `mode`: "warp" stretched onto the mask's box, "flat" its mean colour."""
    inside = mask > 0
    out = person.copy()
    if not inside.any():
        return out
    sigma = _sigma(mask, sigma_fraction)
    y0, y1, x0, x1 = _box(mask, int(3 * sigma))
    shade = np.clip(shading_map(person[y0:y1, x0:x1], inside[y0:y1, x0:x1], sigma), *SHADING_CLIP)
    if albedo is not None:
        albedo = albedo[y0:y1, x0:x1]
    elif mode == "warp":
        albedo = garment_layout(garment, mask)[0][y0:y1, x0:x1]
    elif mode == "flat":
        albedo = np.broadcast_to(garment.mean_rgb, (y1 - y0, x1 - x0, 3))
    else:
        raise EngineError(f"params.start must be 'warp' or 'flat', got {mode!r}")
    fill = _srgb(shade[..., None] * albedo)
    region = out[y0:y1, x0:x1]
    region[inside[y0:y1, x0:x1]] = fill[inside[y0:y1, x0:x1]]
    return out


def fit_garment(garment: Garment, body, mask: np.ndarray, category: str | None,
                dress_length: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The garment warped onto the posed person (`garment_fit`): linear RGB H×W×3 (background
    pixels of the photo replaced by its mean colour) and the garment's footprint inside the mask."""
    source = garment.keypoints
    category = "lower" if garment.region == "bottom" else (category or "upper")
    target = person_keypoints(body, category, source, dress_length)
    lin = _linear(garment.rgb)
    lin[garment.mask <= 0] = garment.mean_rgb
    margin = int(0.05 * max(mask.shape))
    warped, footprint = warp_garment(lin, garment.mask, source, target, mask.shape, _box(mask, margin))
    return warped, footprint & (mask > 0)


def keep_shading(person: np.ndarray, result: np.ndarray, mask: np.ndarray, amount: float = 1.0,
                 sigma_fraction: float = 0.04) -> np.ndarray:
    """`result` inside the mask with its own low-frequency shading swapped for the person's.

    Linear RGB: out = result × (S_person / S_result) ^ amount, S = low-pass luminance / its mean
    over the mask; the person's S is clipped to [0.35, 1.6]. Outside the mask `result` is returned
    unchanged (the edit stage pastes the original there anyway).
    """
    inside = mask > 0
    out = result.copy()
    if amount <= 0 or not inside.any():
        return out
    sigma = _sigma(mask, sigma_fraction)
    y0, y1, x0, x1 = _box(mask, int(3 * sigma))
    m = inside[y0:y1, x0:x1]
    s_person = np.clip(shading_map(person[y0:y1, x0:x1], m, sigma), *SHADING_CLIP)
    s_result = np.clip(shading_map(result[y0:y1, x0:x1], m, sigma), 0.05, None)
    ratio = np.power(s_person / s_result, float(amount))
    lin = _linear(result[y0:y1, x0:x1]) * ratio[..., None]
    fixed = _srgb(lin)
    region = out[y0:y1, x0:x1]
    region[m] = fixed[m]
    return out


# --------------------------------------------------------------------------------------------
# The engine


class BuiltinTryOnEngine(BuiltinEngine):
    """Weight-free try-on: garment patches through the builtin sampler, person's shading kept."""

    name = "builtin"
    tasks = frozenset({"tryon"})

    Params = TryOnParams
    summary = ("a weight-free approximation, not a try-on model: the garment's own silhouette (its product photo's "
               "foreground) is warped onto the person by a thin-plate spline from its keypoints (collar, shoulder "
               "corners, sleeve ends, hem corners, read off the silhouette) to the same places on the person's "
               "MediaPipe pose, so neckline, sleeves and hem follow the body; the rest of the mask (under the "
               "sleeves, around the neck, past the hem) is inpainted from the person's own picture outside the mask "
               "by the patch-prior sampler; the garment is re-synthesised from its own patches (strength 0.2) and "
               "the person's low-frequency shading is put back. No folds, no 3-D shape, no new arms: a refilled gap "
               "takes wall, skin or whatever lies near it. `params.fit: box` (or no person found) stretches the "
               "garment over the whole mask as before")

    def __init__(self, model: str | None = None, device: str | None = None, **options: Any) -> None:
        super().__init__(model=model, device=device, **options)
        self.garments: LRUCache[Garment] = LRUCache(int(options.get("cache_size", 32)), bool(options.get("cache", True)))
        self.bodies: LRUCache[Any] = LRUCache(int(options.get("cache_size", 32)), bool(options.get("cache", True)))
        self._pose = None
        self.box_fits = 0

    @property
    def stats(self) -> dict[str, int]:
        return {"garments_prepared": self.garments.misses, "garment_hits": self.garments.hits,
                "pose_runs": self.bodies.misses, "box_fits": self.box_fits}

    def garment(self, request: EditRequest) -> tuple[Garment, bool]:
        """The request's prepared garment and whether it came from the per-worker cache."""
        p = self.params_of(request)
        key = None
        if request.reference_key and p.reference_mask is None:
            key = (request.reference_key, request.category, p.garment_region, float(p.bg_threshold))
        return self.garments.get_or_make(key, lambda: prepare_garment(
            request.reference, request.category, p.reference_mask, p.garment_region, float(p.bg_threshold)))

    def body(self, request: EditRequest):
        """The person's pose (MediaPipe, `masks/body.py`), cached per worker by `image_key`; None
        when no person is found."""
        def detect():
            if self._pose is None:
                from editflow.masks.body import PoseModel

                self._pose = PoseModel()
            return self._pose.detect(request.image)

        return self.bodies.get_or_make(request.image_key, detect)[0]

    def close(self) -> None:
        super().close()
        if self._pose is not None:
            self._pose.close()
            self._pose = None

    def before(self, request: EditRequest) -> tuple[EditRequest, tuple[bool, np.ndarray, np.ndarray, bool]]:
        """The garment fitted onto the person (pose, else the mask's box) with the person's shading:
        the sampler's start. The mask outside the garment is first refilled from the person's own
        patches outside the mask (skin, background; not the old garment)."""
        if request.task != "tryon":
            raise EngineError(f"this engine runs task tryon, not {request.task!r}")
        if request.reference is None:
            raise EngineError("task tryon needs a reference image (the garment)")
        if request.mask.shape != request.image.shape[:2] or not (request.mask > 0).any():
            raise EngineError("mask is empty or does not match the image: nothing to try on")
        p = self.params_of(request)
        fit = p.fit.lower()
        if fit not in FITS:
            raise EngineError(f"params.fit must be one of {', '.join(FITS)}, got {p.fit!r}")
        garment, cached = self.garment(request)
        mode = p.start.lower()
        inside = request.mask > 0
        region, albedo = inside, None
        if fit == "pose" and mode == "warp":
            body = self.body(request)
            if body is not None:
                albedo, footprint = fit_garment(garment, body, request.mask, request.category, p.dress_length)
                if footprint.sum() >= MIN_FIT * inside.sum():
                    region = footprint
                else:
                    albedo = None
            if albedo is None:
                self.box_fits += 1
        garment_mask = np.where(region, request.mask, 0).astype(np.float32)
        start = shaded_start(request.image, garment_mask, garment, float(p.shading_sigma), mode, albedo)
        refilled = bool((inside & ~region).any())
        if refilled:
            refill = dataclasses.replace(request, task="inpaint", reference=None, strength=None,
                                         typed_params=dataclasses.replace(p, reference_mask=None))
            (out,) = self.sample([refill])
            if isinstance(out, Exception):
                raise out
            leftover = inside & (region <= 0)
            start[leftover] = composite_unmasked(refill.image, out.image, refill.mask)[leftover]
        strength = DEFAULT_STRENGTH if request.strength is None else request.strength
        return dataclasses.replace(request, image=start, mask=garment_mask, strength=strength, reference=garment.rgb,
                                   typed_params=dataclasses.replace(p, reference_mask=garment.mask)), \
            (cached, garment_mask, start, refilled)

    def after(self, request: EditRequest, result: EditResult,
              state: tuple[bool, np.ndarray, np.ndarray, bool]) -> EditResult:
        """The garment's region of the sampler's result over the start, the person's low-frequency shading put back."""
        cached, region, start, refilled = state
        p = self.params_of(request)
        image = composite_unmasked(start, result.image, region)
        image = keep_shading(request.image, image, region, float(p.keep_shading), float(p.shading_sigma))
        return dataclasses.replace(result, image=image, reference_cached=cached,
                                   model="patch-prior+pose-fit+shading" if refilled else "patch-prior+shading")
