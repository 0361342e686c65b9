"""The makeup colour-transfer start, shared by both makeup engines (`builtin` and `sd`, task
`makeup`): the faces of a row (reference and image: landmarks, part masks, Lab; cached per
worker) and `makeup_start`, the landmark-aligned, region-wise colour transfer from the reference
face (the method: editflow/engines/makeup.py's docstring, step 2).

No torch here: the CPU mask stage runs this start for the diffusers makeup's rows (its host step,
editflow/engines/makeup_sd_start.py) without loading the network stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import cv2
import numpy as np

from editflow.engines.base import EditRequest, EngineError
from editflow.engines.params import EngineParams, param
from editflow.lru import LRUCache
from editflow.masks.face import Face, FaceLandmarker, NoFaceError, choose_faces, part_masks

#: parts a makeup transfer works on (the face oval is their union, not a region of its own)
MAKEUP_PARTS = ("skin", "eyeshadow", "brows", "eyes", "lips")  # applied in this order: later wins
#: how far the chroma is pulled from the statistics match toward the warped reference, per part
WARP_WEIGHT = {"lips": 0.6, "eyes": 0.3, "eyeshadow": 0.6, "brows": 0.3, "skin": 0.3}
STD_CLIP = (0.5, 2.0)


@dataclass(frozen=True)
class MakeupFaceParams(EngineParams):
    """Row params of both makeup engines' colour-transfer start (the image's face is `face`)."""

    parts: str | list[str] | None = param(None, "lips+eyes+... or a list (default: the face parts mostly in the mask)")
    reference_face: str | int | None = param(None, "which face of the reference: largest or an index")
    warp_weight: float | dict[str, float] | None = param(
        None, "chroma pull toward the warped reference, one number or per part (default WARP_WEIGHT)")


@dataclass
class FaceData:
    """One face prepared for transfer: landmarks, part masks and the image in Lab."""

    face: Face
    parts: dict[str, np.ndarray]  # part -> H×W bool
    lab: np.ndarray  # H×W×3 float32 CIE Lab (L 0-100)
    shape: tuple[int, int]

    def stats(self, part: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Lab mean and std over a part, or None when the part is empty."""
        m = self.parts[part]
        if not m.any():
            return None
        values = self.lab[m]
        return values.mean(axis=0), values.std(axis=0)


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _rgb(lab: np.ndarray) -> np.ndarray:
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def prepare_face(image: np.ndarray, landmarker: FaceLandmarker | None, which: str | int | None = None,
                 what: str = "image", faces: list[Face] | None = None) -> FaceData:
    """Landmarks and part masks of the chosen face of `image` (NoFaceError names `what`); `faces`
    are the ones already found in `image` (by the mask stage), else the landmarker finds them."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise EngineError(f"the {what} must be H×W×3, got {image.shape}")
    if faces is None:
        assert landmarker is not None
        faces = landmarker.detect(image)
    if not faces:
        raise NoFaceError(f"no face found in the {what}")
    if which == "all":
        raise EngineError("makeup transfers one face at a time: face 'all' is not supported")
    try:
        face = choose_faces(faces, which)[0]
    except NoFaceError as exc:
        raise NoFaceError(f"{exc} in the {what}") from None
    shape = image.shape[:2]
    parts = {name: mask.astype(bool) for name, mask in part_masks(face, shape).items()}
    return FaceData(face=face, parts=parts, lab=_lab(image), shape=shape)


class FaceCache:
    """Per-worker LRU of prepared faces keyed by a content hash (None or size 0: no caching)."""

    def __init__(self, size: int = 32) -> None:
        self.lru: LRUCache[FaceData] = LRUCache(size)

    def get(self, key: str | None, image: np.ndarray, landmarker: FaceLandmarker | None,
            which: str | int | None = None, what: str = "image",
            faces: list[Face] | None = None) -> tuple[FaceData, bool]:
        """The prepared face and whether it came from the cache."""
        full = None if key is None else (key, which if which is None else str(which))
        return self.lru.get_or_make(full, lambda: prepare_face(image, landmarker, which, what, faces))

    @property
    def hits(self) -> int:
        return self.lru.hits

    @property
    def misses(self) -> int:
        return self.lru.misses

    def __len__(self) -> int:
        return len(self.lru)


class MakeupFaces:
    """What both makeup engines need per row: the reference's and the image's prepared faces
    (cached per worker; the image's landmarks come from the mask stage when it found them) and the
    parts to transfer. One landmarker per worker, closed with the engine."""

    def __init__(self, options: dict[str, Any]) -> None:
        size = int(options.get("cache_size", 32)) if options.get("cache", True) else 0
        self.references = FaceCache(size)
        self.targets = FaceCache(size)
        self._landmarker: FaceLandmarker | None = None

    @property
    def landmarker(self) -> FaceLandmarker:
        if self._landmarker is None:
            self._landmarker = FaceLandmarker()
        return self._landmarker

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def prepare(self, request: EditRequest, params: Any,
                choose_parts: bool = True) -> tuple[FaceData, FaceData, tuple[str, ...], bool]:
        """(reference face, image face, parts, whether the reference face was cached) of a makeup row
        (parts empty when not `choose_parts`)."""
        ref, cached = self.references.get(request.reference_key, request.reference, self.landmarker,
                                           params.reference_face, "reference image")
        found = None if request.faces is None else [Face(points) for points in request.faces]
        tgt, _ = self.targets.get(request.image_key, request.image, None if found else self.landmarker,
                                   params.face, "image", found)
        if not choose_parts:
            return ref, tgt, (), cached
        if params.parts:
            return ref, tgt, _parts(params.parts), cached
        # every part of the image's face lying mostly inside the row's mask
        mask = request.mask > 0
        names = tuple(n for n in MAKEUP_PARTS if tgt.parts[n].any()
                      and (tgt.parts[n] & mask).sum() > 0.5 * tgt.parts[n].sum())
        if not names:
            raise EngineError("the mask covers no face part (lips, eyes, eyeshadow, brows, skin) "
                              "of the image's face; give params.parts to choose some")
        return ref, tgt, names, cached


# --------------------------------------------------------------------------------------------
# Landmark-aligned warp


def warp_to_target(reference: np.ndarray, ref_points: np.ndarray, tgt_points: np.ndarray,
                   shape: tuple[int, int], where: np.ndarray | None = None,
                   interpolation: int = cv2.INTER_LINEAR) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-affine warp of `reference` onto the target's frame through the face mesh.

    Triangles: Delaunay of the target's landmarks (qhull); each target pixel inside one is mapped
    by its barycentric coordinates to the same triangle on the reference's landmarks. `where`
    (H×W bool) limits the pixels computed. Returns (warped image, bool map of pixels that have a
    source inside the reference).

    The barycentric maths is closed-form numpy on purpose: scipy's `find_simplex` / `transform`
    run LAPACK through OpenBLAS, whose threads fight the torch threads of the sampler on a small
    machine (measured here on 2 cores: 7 s instead of 10 ms per call, intermittently).
    """
    from scipy.spatial import Delaunay

    h, w = shape
    tgt = np.asarray(tgt_points, np.float64)
    src_pts = np.asarray(ref_points, np.float64)
    simplices = Delaunay(tgt).simplices  # (T, 3) vertex indices
    p0, p1, p2 = tgt[simplices[:, 0]], tgt[simplices[:, 1]], tgt[simplices[:, 2]]
    e1, e2 = p1 - p0, p2 - p0
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    keep = np.abs(det) > 1e-9
    simplices, p0, e1, e2, det = simplices[keep], p0[keep], e1[keep], e2[keep], det[keep]
    # label map: which triangle covers each pixel (-1 none); corners sub-pixel through cv2's
    # fixed-point `shift` (4 fractional bits)
    label = np.full((h, w), -1, np.int32)
    corners = np.round(tgt[simplices] * 16).astype(np.int32)
    for index, tri in enumerate(corners):
        cv2.fillConvexPoly(label, tri.reshape(-1, 1, 2), int(index), lineType=cv2.LINE_8, shift=4)
    if where is not None:
        label[~where] = -1
    ys, xs = np.nonzero(label >= 0)
    t = label[ys, xs]
    dx, dy = xs - p0[t, 0], ys - p0[t, 1]
    # barycentric (u, v) of the pixel in its triangle: [e1 e2] [u v]^T = x - p0
    u = (dx * e2[t, 1] - dy * e2[t, 0]) / det[t]
    v = (dy * e1[t, 0] - dx * e1[t, 1]) / det[t]
    q0, q1, q2 = (src_pts[simplices[t, k]] for k in range(3))
    source = q0 + u[:, None] * (q1 - q0) + v[:, None] * (q2 - q0)
    map_x = np.full((h, w), -1.0, np.float32)
    map_y = np.full((h, w), -1.0, np.float32)
    map_x[ys, xs] = source[:, 0]
    map_y[ys, xs] = source[:, 1]
    warped = cv2.remap(reference, map_x, map_y, interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    valid = np.zeros((h, w), bool)
    rh, rw = reference.shape[:2]
    valid[ys, xs] = (source[:, 0] >= 0) & (source[:, 0] <= rw - 1) & (source[:, 1] >= 0) & (source[:, 1] <= rh - 1)
    return warped, valid


# --------------------------------------------------------------------------------------------
# The start


def _parts(parts: str | Iterable[str]) -> tuple[str, ...]:
    names = tuple(p.strip() for p in (parts.split("+") if isinstance(parts, str) else parts) if p.strip())
    unknown = [p for p in names if p not in MAKEUP_PARTS]
    if unknown or not names:
        raise EngineError(f"makeup parts must be some of {'+'.join(MAKEUP_PARTS)}, got {list(names)}")
    return tuple(p for p in MAKEUP_PARTS if p in names)  # canonical order: later parts win


def makeup_start(
    image: np.ndarray,
    reference: np.ndarray,
    parts: str | Iterable[str] = ("lips", "eyes", "brows"),
    *,
    target_face: FaceData | None = None,
    reference_face: FaceData | None = None,
    landmarker: FaceLandmarker | None = None,
    warp_weight: float | dict[str, float] | None = None,
) -> np.ndarray:
    """The image with each part's colour moved to the reference's matching part (uint8 H×W×3).

    Region-wise Lab statistics matching plus a chroma pull toward the landmark-warped reference
    (see the module docstring). Pixels outside the parts are the image's, exactly. Faces are
    detected when not given (pass a `landmarker` to reuse one; otherwise one is started and
    closed here); no face in the reference -> NoFaceError("no face found in the reference image").
    """
    image = np.asarray(image)
    reference = np.asarray(reference)
    names = _parts(parts)
    own = None
    if target_face is None or reference_face is None:
        own = landmarker is None
        landmarker = landmarker or FaceLandmarker()
    try:
        if reference_face is None:
            reference_face = prepare_face(reference, landmarker, what="reference image")
        if target_face is None:
            target_face = prepare_face(image, landmarker, what="image")
    finally:
        if own:
            landmarker.close()
    if target_face.shape != image.shape[:2] or reference_face.shape != reference.shape[:2]:
        raise EngineError("face data were prepared on images of another size")

    region = np.zeros(image.shape[:2], bool)
    for name in names:
        region |= target_face.parts[name]
    out_lab = target_face.lab.copy()
    if not region.any():
        return image.copy()
    grown = cv2.dilate(region.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    warped, has_source = warp_to_target(reference, reference_face.face.points, target_face.face.points,
                                        image.shape[:2], where=grown)
    warped_lab = _lab(warped)
    changed = np.zeros(image.shape[:2], bool)
    for name in names:
        mt = target_face.parts[name]
        ref_stats, own_stats = reference_face.stats(name), target_face.stats(name)
        if ref_stats is None or own_stats is None:
            continue
        (mu_r, sd_r), (mu_t, sd_t) = ref_stats, own_stats
        ratio = np.clip(sd_r / np.maximum(sd_t, 1e-3), *STD_CLIP)
        values = target_face.lab[mt]
        matched = mu_r + (values - mu_t) * ratio
        # Chroma pull toward the warped reference where the warped pixel came from the same part.
        src_part, _ = warp_to_target(reference_face.parts[name].astype(np.uint8) * 255,
                                     reference_face.face.points, target_face.face.points, image.shape[:2],
                                     where=mt, interpolation=cv2.INTER_NEAREST)
        if isinstance(warp_weight, dict):
            alpha = float(warp_weight.get(name, WARP_WEIGHT[name]))
        else:
            alpha = float(WARP_WEIGHT[name] if warp_weight is None else warp_weight)
        usable = (src_part[mt] > 0) & has_source[mt]
        if alpha > 0 and usable.any():
            ab = matched[:, 1:]
            ab[usable] = (1 - alpha) * ab[usable] + alpha * warped_lab[mt][usable, 1:]
        out_lab[mt] = matched
        changed |= mt
    out = image.copy()
    rgb = _rgb(out_lab)
    out[changed] = rgb[changed]
    return out


__all__ = ["FaceCache", "FaceData", "MAKEUP_PARTS", "MakeupFaceParams", "MakeupFaces", "STD_CLIP", "WARP_WEIGHT",
           "makeup_start", "prepare_face", "warp_to_target"]
