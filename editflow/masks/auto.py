"""Model-backed masks: spec + image + row context -> float32 mask (1 = edit), cached per actor.

`AutoMasker` dispatches `sam:...`, `face:...`, `garment:...` and `person` to sam.py, face.py and
body.py. It lives as long as the mask stage (one per Ray actor, one per local run), so models load
once, and it keeps two caches:

  * masks, keyed by (image key, spec, options, size): a person photo's `garment:upper` is made once
    and reused for every garment of a catalog try-on;
  * detections, keyed by (image key, model): face landmarks, pose and hands are run once per
    image, whatever parts are asked (face:lips on one row, face:skin on the next). SAM keeps its own per-image
    embedding cache (sam.py).

The image key is the input file's sha256 when the caller has it, else a hash of the pixels.
Failures raise exceptions with plain messages ("no face found", "no person found", what to install or
download); the stage turns them into row errors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from editflow.lru import LRUCache
from editflow.masks.spec import MaskSpec
from editflow.tasks import AUTO_MASK_KINDS


@dataclass(frozen=True)
class MaskSettings:
    """What the run configuration says about model-backed masks (names and paths only)."""

    sam_checkpoint: str | None = None
    sam_model_type: str = "vit_b"
    sam_refine: bool = False  # refine face and person masks with SAM when a checkpoint is configured
    sam_refine_margin: int | None = None  # px the refinement may move an edge; None = 2% of the image
    device: str | None = None
    cache_size: int = 64  # masks kept per actor


@dataclass
class MaskContext:
    """Row-level context: the image's identity and the row's mask options."""

    image_key: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # face ("largest"|"all"|index), dress_length, sleeve


def image_key(image: np.ndarray) -> str:
    return "px:" + hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).hexdigest() + \
        f":{image.shape[1]}x{image.shape[0]}"


MASK_OPTION_KEYS = ("face", "dress_length", "sleeve")


def mask_options(params: dict[str, Any] | None) -> dict[str, Any]:
    """The mask options a row's `params` may carry."""
    params = params or {}
    return {k: params[k] for k in MASK_OPTION_KEYS if params.get(k) is not None}


class AutoMasker:
    """Per-actor maker of model-backed masks, with the models loaded lazily and kept."""

    def __init__(self, settings: MaskSettings | None = None, sam_model=None) -> None:
        self.settings = settings or MaskSettings()
        self._sam = None
        self._sam_model = sam_model  # a prebuilt Sam (tests); else built from the settings
        self._faces = None
        self._pose = None
        self._hands = None
        self._masks: LRUCache[np.ndarray] = LRUCache(self.settings.cache_size)
        self._detections: LRUCache[Any] = LRUCache(max(4, self.settings.cache_size // 4) if self.settings.cache_size else 0)
        self.stats = {"mask_hits": 0, "mask_misses": 0, "face_runs": 0, "pose_runs": 0, "hand_runs": 0}

    # models ---------------------------------------------------------------------------------
    @property
    def sam(self):
        if self._sam is None:
            from editflow.masks.sam import SamMasker

            self._sam = SamMasker(self.settings.sam_checkpoint, self.settings.sam_model_type,
                                  device=self.settings.device, model=self._sam_model)
        return self._sam

    def _face_model(self):
        if self._faces is None:
            from editflow.masks.face import FaceLandmarker

            self._faces = FaceLandmarker()
        return self._faces

    def _pose_model(self):
        if self._pose is None:
            from editflow.masks.body import PoseModel

            self._pose = PoseModel()
        return self._pose

    def _hand_model(self):
        if self._hands is None:
            from editflow.masks.body import HandModel

            self._hands = HandModel()
        return self._hands

    def _detect(self, what: str, key: str, image: np.ndarray):
        cache_key = (what, key)
        if cache_key in self._detections:
            return self._detections.get(cache_key)
        if what == "face":
            found = self._face_model().detect(image)
            self.stats["face_runs"] += 1
        elif what == "hands":
            found = self._hand_model().detect(image)
            self.stats["hand_runs"] += 1
        else:
            found = self._pose_model().detect(image)
            self.stats["pose_runs"] += 1
        self._detections.put(cache_key, found)
        return found

    def faces_found(self, image: np.ndarray, context: MaskContext | None = None) -> np.ndarray | None:
        """The face landmarks already found in `image` (N × 478 × 2 float32, largest first), or None
        when no face detection ran on it (or it left the cache): facts the engine may reuse."""
        key = ("face", (context.image_key if context else None) or image_key(image))
        if key not in self._detections:
            return None
        faces = self._detections.get(key)
        if not faces:
            return None
        return np.stack([np.asarray(f.points, np.float32) for f in faces])

    # masks ----------------------------------------------------------------------------------
    def make(self, spec: MaskSpec, image: np.ndarray, context: MaskContext | None = None) -> np.ndarray:
        """float32 H x W mask in [0, 1] for a model-backed spec; cached per (image, spec, options, size)."""
        if spec.kind not in AUTO_MASK_KINDS:
            raise ValueError(f"not a model-backed mask spec: {spec.text!r}")
        context = context or MaskContext()
        key = context.image_key or image_key(image)
        height, width = image.shape[:2]
        options = tuple(sorted((k, str(v)) for k, v in context.options.items() if k in MASK_OPTION_KEYS))
        cache_key = (key, _canonical(spec), options, (height, width))
        cached = self._masks.get(cache_key)
        if cached is not None:
            self.stats["mask_hits"] += 1
            return cached.copy()
        self.stats["mask_misses"] += 1
        mask = self._compute(spec, image, key, context.options)
        mask = np.ascontiguousarray(mask, np.float32)
        self._masks.put(cache_key, mask)
        return mask.copy()

    def _compute(self, spec: MaskSpec, image: np.ndarray, key: str, options: dict[str, Any]) -> np.ndarray:
        shape = image.shape[:2]
        if spec.kind == "sam":
            return self.sam.mask(spec, image)
        if spec.kind == "face":
            from editflow.masks.face import face_mask

            mask = face_mask(self._detect("face", key, image), spec.parts, shape, options.get("face"))
            return self._refine(mask, image)
        from editflow.masks.body import NoPersonError, garment_mask, person_mask

        body = self._detect("pose", key, image)
        if body is None:
            raise NoPersonError("no person found")
        if spec.kind == "person":
            return self._refine(person_mask(body, shape), image)
        return garment_mask(body, spec.parts[0], shape, options.get("dress_length"), options.get("sleeve"),
                            image=image, face_points=self._face_of(body, key, image),
                            hands=self._detect("hands", key, image))

    def _face_of(self, body, key: str, image: np.ndarray) -> np.ndarray | None:
        """The face mesh of the posed person (its forehead line bounds the hair), if one is found."""
        from editflow.masks.body import NOSE

        for face in self._detect("face", key, image):
            x0, y0, x1, y1 = face.box
            nose = body.points[NOSE]
            if x0 <= nose[0] <= x1 and y0 <= nose[1] <= y1:
                return face.points
        return None

    def _refine(self, mask: np.ndarray, image: np.ndarray) -> np.ndarray:
        s = self.settings
        if not s.sam_refine or (s.sam_checkpoint is None and self._sam_model is None):
            return mask
        margin = s.sam_refine_margin or max(2, int(0.02 * max(image.shape[:2])))
        return self.sam.refine(mask, image, margin)

    def close(self) -> None:
        for model in (self._faces, self._pose, self._hands):
            if model is not None:
                model.close()


def _canonical(spec: MaskSpec) -> str:
    """A spec's identity for caching: face parts in a fixed order, everything else its text."""
    if spec.kind == "face":
        return "face:" + "+".join(sorted(set(spec.parts)))
    if spec.kind == "garment":
        return "garment:" + spec.parts[0]
    return spec.text.strip()
