"""Weight-free makeup transfer: a landmark-aligned, region-wise colour transfer from the reference
face as the start, then low-strength patch-prior SDEdit inside the mask (engine `builtin`, task
`makeup`).

This is a *weight-free approximation* of makeup transfer (no learned makeup encoder, no face
parsing network): it moves the colour of each face region (lips, eyes, eyeshadow, brows, skin)
toward the same region of the reference face, regions from MediaPipe face-mesh landmarks
(`editflow.masks.face`). Per row:

1. **Faces**: 478 landmarks and part masks of the reference face (cached per worker by
   `reference_key`, since a catalog run applies one look to many faces) and of the target face
   (cached by `image_key`). No face in the reference -> `NoFaceError("no face found in the
   reference image")`, a row error.
2. **Start** (`makeup_start`, in engines/makeup_start.py: the `sd` makeup engine starts from the
   same image): the
   reference is warped onto the target with a piecewise-affine warp on the mesh (Delaunay
   triangles of the target's landmarks, each mapped by the affine transform to the same
   landmarks on the reference). For every part in CIE Lab: the target's values are matched to the
   reference region's mean and standard deviation (std ratio clipped to [0.5, 2]; the target's own
   lightness detail — lip lines, lashes, pores — is kept, only rescaled), and the chroma (a, b) is
   further pulled toward the warped reference pixel by pixel (`WARP_WEIGHT` per part: the
   reference's lipstick gradient or eyeliner lands where it was, relative to the landmarks).
   Outside the parts the start is the image itself, exactly. No part contains the eye opening or
   the iris (`masks/face.py`: `eyes` is the lash-line ring around the opening), so the eyeball's
   pixels never take the reference's liner or shadow colour.
3. **Sampler**: `BuiltinEngine` (the base class) with task `makeup`, the start as the masked
   region's content (the row's mask minus the eye openings: a `face:face` row keeps its eyeballs), SDEdit at strength default 0.25 (row `strength` overrides). Its data set is
   the reference *warped onto the target* (the same mesh warp), its patches inside the target's
   chosen parts: the reference's own lip, eye and brow pixels, already in the target's geometry,
   so the builtin's layout prior lines them up with the places they belong. One pyramid level
   (`min_side` default 10⁶; the row may set a smaller one): at the builtin's coarse levels a lip
   is 2-3 px tall, the start's detail does not survive the restarts and the lips fade (measured
   on the astronaut in tests/test_engine_makeup_builtin.py: lips' mean a/b distance to the reference
   lipstick 59 before, 0.2 after the start, 2.8 after one level at 0.25; ~40 with the builtin's
   default 3-level pyramid). The sampler re-synthesises the
   recoloured parts from real reference patches at low noise: reference texture in, seams
   between parts smoothed; above ~0.5 it starts to wash the colour out again.

Which parts: `params["parts"]` ("lips+eyes" or a list), else every part of the target face that
lies mostly (> 50 %) inside the row's mask — so `face:lips+eyes+brows` gives those three, and a
`face:skin` row transfers foundation colour. `params["face"]` / `params["reference_face"]` pick
the face ("largest", "all" is not supported here, or an index). `params["warp_weight"]` overrides
the per-part chroma pull (0 = statistics only, 1 = the warped reference's chroma).
Engine options: `cache` (default True), `cache_size` (faces kept per worker, default 32).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from editflow.engines.base import EditRequest, EditResult, EngineError
from editflow.engines.builtin import BuiltinEngine, BuiltinParams
from editflow.engines.makeup_start import (  # noqa: F401  (the start's names stay importable from here)
    MAKEUP_PARTS, FaceCache, FaceData, MakeupFaceParams, MakeupFaces, makeup_start, prepare_face, warp_to_target,
)
from editflow.engines.params import param
from editflow.masks.face import FACE_PARTS

DEFAULT_STRENGTH = 0.25


@dataclass(frozen=True)
class MakeupParams(BuiltinParams, MakeupFaceParams):
    """Row params of the weight-free makeup: the builtin sampler's plus the start's."""

    #: one pyramid level: at the coarse levels a lip is 2-3 px tall and fades (module docstring)
    min_side: int = param(10**6, "short side of the coarsest level (default: one level)")


# --------------------------------------------------------------------------------------------
# The engine


class BuiltinMakeupEngine(BuiltinEngine):
    """Weight-free makeup: region-wise landmark-aligned colour transfer, then patch-prior SDEdit."""

    name = "builtin"
    tasks = frozenset({"makeup"})

    Params = MakeupParams
    summary = ("region-wise transfer from the reference face (Lab statistics per lips / eyes / brows / skin, and "
               "the reference warped onto the target by face-mesh triangles), then low-strength patch-prior SDEdit "
               "inside the masks")

    def __init__(self, model: str | None = None, device: str | None = None, **options: Any) -> None:
        super().__init__(model=model, device=device, **options)
        self.face_data = MakeupFaces(options)

    @property
    def references(self) -> FaceCache:
        return self.face_data.references

    def close(self) -> None:
        super().close()
        self.face_data.close()

    def before(self, request: EditRequest) -> tuple[EditRequest, bool]:
        """The region-wise colour transfer as the start; the reference warped onto the face as data."""
        if request.task != "makeup":
            raise EngineError(f"this engine runs task makeup, not {request.task!r}")
        if request.reference is None:
            raise EngineError("task makeup needs a reference image (the made-up face)")
        mask = request.mask > 0
        if mask.shape != request.image.shape[:2] or not mask.any():
            raise EngineError("mask is empty or does not match the image: nothing to make up")
        p = self.params_of(request)
        ref, tgt, names, cached = self.face_data.prepare(request, p)
        start = makeup_start(request.image, request.reference, names, target_face=tgt, reference_face=ref,
                             warp_weight=p.warp_weight)
        # Data: the reference warped into the target's frame, inside the target's chosen parts.
        chosen = np.zeros(tgt.shape, bool)
        for name in names:
            chosen |= tgt.parts[name]
        ys, xs = np.nonzero(chosen | mask)
        where = np.zeros(tgt.shape, bool)
        pad = 8
        where[max(0, ys.min() - pad):ys.max() + 1 + pad, max(0, xs.min() - pad):xs.max() + 1 + pad] = True
        warped, valid = warp_to_target(request.reference, ref.face.points, tgt.face.points, tgt.shape, where=where)
        data_mask = chosen & valid
        if not data_mask.any():
            raise EngineError("the reference face does not cover the target's face parts after alignment")
        sampler_params = dataclasses.replace(p, reference_mask=data_mask.astype(np.float32))
        strength = DEFAULT_STRENGTH if request.strength is None else request.strength
        # The eyeball is never made up: whatever the row's mask, the sampler leaves the eye openings
        # (and irises) alone, so they keep the image's exact pixels.
        edit_mask = np.where(tgt.parts["eye_opening"], 0, request.mask).astype(request.mask.dtype, copy=False)
        if not (edit_mask > 0).any():
            raise EngineError("the mask covers only the eye openings, which makeup leaves alone")
        return dataclasses.replace(request, image=start, mask=edit_mask, reference=warped, strength=strength,
                                   typed_params=sampler_params), cached

    def after(self, request: EditRequest, result: EditResult, cached: bool) -> EditResult:
        return dataclasses.replace(result, reference_cached=cached, model="patch-prior+landmark-transfer")


__all__ = ["BuiltinMakeupEngine", "FaceCache", "FaceData", "MAKEUP_PARTS", "makeup_start", "prepare_face",
           "warp_to_target", "FACE_PARTS", "MakeupFaces", "MakeupFaceParams", "MakeupParams"]
