"""segment-anything masks: `sam:points=x,y,label;...`, `sam:box=x0,y0,x1,y1`, `sam:auto[=select]`.

Point and box prompts go through `SamPredictor` with multimask output, keeping the mask with the
highest predicted IoU. `sam:auto` runs `SamAutomaticMaskGenerator` and selects one segment:
`largest` (default) or, with `sam:auto=x,y`, the most confident (predicted IoU) segment containing that point.

The image embedding (the ViT encoder: the whole cost of SAM) is computed once per image and kept
in a small per-actor cache, so every prompt on an image — and the automatic generator — reuses it.
The checkpoint (vit_b / vit_l / vit_h) comes from the run configuration; `model_type` may also be
`package.module:function`, a builder called as `function(checkpoint)` that returns a `Sam`
(MobileSAM-style variants, and the tiny random-weight SAM the tests build).
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from editflow.masks.face import MaskModelError
from editflow.lru import LRUCache
from editflow.masks.spec import MaskSpec

CHECKPOINT_FILES = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
CHECKPOINT_ENV = "EDITFLOW_SAM_CHECKPOINT"


class SamCheckpointError(MaskModelError):
    """No segment-anything checkpoint where the configuration says."""


def default_checkpoint_dir() -> Path:
    return Path(os.environ.get("EDITFLOW_HOME", Path.home() / ".cache" / "editflow")) / "sam"


def resolve_checkpoint(checkpoint: str | None, model_type: str) -> Path:
    """The checkpoint file to load, or a SamCheckpointError saying what to download and where."""
    filename = CHECKPOINT_FILES.get(model_type, f"<checkpoint for {model_type}>")
    candidates = [checkpoint, os.environ.get(CHECKPOINT_ENV)]
    for candidate in candidates:
        if candidate:
            path = Path(candidate).expanduser()
            if path.is_dir():
                path = path / filename
            if path.is_file():
                return path
            raise SamCheckpointError(
                f"sam masks: checkpoint {str(path)!r} not found; download {filename} "
                f"({CHECKPOINT_URL}{filename}) and put it there, or point the sam_checkpoint setting "
                f"(--sam-checkpoint, or {CHECKPOINT_ENV}) at the file"
            )
    default = default_checkpoint_dir() / filename
    if default.is_file():
        return default
    raise SamCheckpointError(
        f"sam masks need a segment-anything checkpoint and none is configured: download {filename} "
        f"({CHECKPOINT_URL}{filename}) to {default}, or set sam_checkpoint (--sam-checkpoint, or the "
        f"{CHECKPOINT_ENV} environment variable) to its path; sam_model_type is {model_type!r} "
        f"(vit_b, vit_l or vit_h)"
    )


def _torchvision_stand_in() -> dict | None:
    """segment-anything imports four torchvision functions but does not declare the dependency, and
    no torchvision wheel matches every torch build (none matches the CPU torch used here). When
    torchvision cannot be imported, register a minimal stand-in with just those four, in plain
    torch and Pillow: `to_pil_image`/`resize` (ResizeLongestSide on numpy images: PIL bilinear, as
    torchvision does for PIL images) and `box_area`/`batched_nms` (the automatic mask generator).
    Returns the stand-in modules, or None when the real torchvision imports."""
    import sys
    import types

    try:
        import torchvision.ops.boxes  # noqa: F401
        import torchvision.transforms.functional  # noqa: F401

        return None
    except Exception:  # ImportError, or a torchvision built for another torch (RuntimeError)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]

    import torch
    from PIL import Image

    def to_pil_image(array):
        return Image.fromarray(np.asarray(array))

    def resize(image, size):
        height, width = size
        return image.resize((int(width), int(height)), Image.BILINEAR)

    def box_area(boxes):
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    def nms(boxes, scores, iou_threshold: float):
        order = torch.argsort(scores, descending=True)
        boxes = boxes[order].float()
        areas = box_area(boxes)
        suppressed = torch.zeros(len(order), dtype=torch.bool)
        keep = []
        for i in range(len(order)):
            if suppressed[i]:
                continue
            keep.append(i)
            lt = torch.maximum(boxes[i, :2], boxes[i + 1:, :2])
            rb = torch.minimum(boxes[i, 2:], boxes[i + 1:, 2:])
            inter = (rb - lt).clamp(min=0).prod(dim=1)
            iou = inter / (areas[i] + areas[i + 1:] - inter).clamp(min=1e-9)
            suppressed[i + 1:] |= iou > iou_threshold
        return order[torch.as_tensor(keep, dtype=torch.long)]

    def batched_nms(boxes, scores, idxs, iou_threshold: float):
        if boxes.numel() == 0:
            return torch.empty((0,), dtype=torch.long, device=boxes.device)
        offsets = idxs.to(boxes) * (boxes.max() + 1)  # boxes of different classes never overlap
        return nms(boxes + offsets[:, None], scores, iou_threshold)

    package = types.ModuleType("torchvision")
    package.__path__ = []  # a package, so its submodules import
    modules = {
        "torchvision": package,
        "torchvision.ops": types.ModuleType("torchvision.ops"),
        "torchvision.ops.boxes": types.ModuleType("torchvision.ops.boxes"),
        "torchvision.transforms": types.ModuleType("torchvision.transforms"),
        "torchvision.transforms.functional": types.ModuleType("torchvision.transforms.functional"),
    }
    modules["torchvision.ops"].__path__ = []
    modules["torchvision.transforms"].__path__ = []
    boxes_module, functional = modules["torchvision.ops.boxes"], modules["torchvision.transforms.functional"]
    boxes_module.box_area, boxes_module.batched_nms, boxes_module.nms = box_area, batched_nms, nms
    functional.resize, functional.to_pil_image = resize, to_pil_image
    package.editflow_stand_in = True
    return modules


def import_segment_anything():
    """`segment_anything`, importable without torchvision. The stand-in is in sys.modules only while
    segment_anything imports (it keeps the four functions it imported), so other libraries that
    probe for torchvision (diffusers, transformers) never see it."""
    import sys

    if "segment_anything" in sys.modules:
        return sys.modules["segment_anything"]
    stand_in = _torchvision_stand_in()
    if stand_in is None:
        import segment_anything

        return segment_anything
    sys.modules.update(stand_in)
    try:
        import segment_anything
        import segment_anything.modeling  # noqa: F401
        import segment_anything.utils.amg  # noqa: F401
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)
    return segment_anything


def build_sam(checkpoint: str | None, model_type: str = "vit_b"):
    """A `Sam` model from the configured checkpoint (or a `module:function` builder)."""
    import_segment_anything()  # before any builder imports segment_anything.modeling
    if ":" in model_type:
        module, _, function = model_type.partition(":")
        builder = getattr(importlib.import_module(module), function)
        return builder(checkpoint)
    sam_model_registry = import_segment_anything().sam_model_registry
    if model_type not in sam_model_registry or model_type == "default":
        raise SamCheckpointError(f"sam_model_type must be vit_b, vit_l or vit_h, got {model_type!r}")
    path = resolve_checkpoint(checkpoint, model_type)
    try:
        return sam_model_registry[model_type](checkpoint=str(path))
    except Exception as exc:
        raise SamCheckpointError(f"cannot load SAM {model_type} from {path}: {exc}") from None


def _image_key(image: np.ndarray) -> tuple:
    return (image.shape, hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest())


def _caching_predictor(model, cache_size: int, counter: dict[str, int]):
    SamPredictor = import_segment_anything().SamPredictor

    class CachingPredictor(SamPredictor):
        """SamPredictor whose `set_image` reuses the embedding of an image it has already encoded."""

        cache: LRUCache[tuple[Any, tuple, tuple]]

        def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
            key = (_image_key(image), image_format)
            hit = self.cache.get(key)
            if hit is not None:
                self.features, self.original_size, self.input_size = hit
                self.is_image_set = True
                return
            super().set_image(image, image_format)
            counter["embeddings"] += 1
            self.cache.put(key, (self.features, self.original_size, self.input_size))

    predictor = CachingPredictor(model)
    predictor.cache = LRUCache(cache_size)
    return predictor


class SamMasker:
    """Masks from SAM prompts on RGB uint8 images; one embedding per image, reused by every prompt."""

    def __init__(self, checkpoint: str | None = None, model_type: str = "vit_b", device: str | None = None,
                 model=None, cache_size: int = 4, points_per_side: int = 32,
                 generator_options: dict[str, Any] | None = None) -> None:
        import torch

        if model is None:
            model = build_sam(checkpoint, model_type)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.to(device).eval()
        self.device = device
        self.counter = {"embeddings": 0}
        self.predictor = _caching_predictor(self.model, cache_size, self.counter)
        # SamAutomaticMaskGenerator settings (its defaults are tuned for ViT-H: pred_iou_thresh 0.88,
        # stability_score_thresh 0.95)
        self.generator_options = {"points_per_side": points_per_side, **(generator_options or {})}
        self._generator = None

    @property
    def embeddings_computed(self) -> int:
        return self.counter["embeddings"]

    def mask(self, spec: MaskSpec, image: np.ndarray) -> np.ndarray:
        """float32 {0,1} H x W mask for a `sam:` spec."""
        import torch

        image = np.ascontiguousarray(image[..., :3])
        mode = spec.options.get("mode")
        with torch.inference_mode():
            if mode == "auto":
                return self._auto(image, spec.options.get("select", "largest"))
            self.predictor.set_image(image)
            if mode == "points":
                masks, scores, _ = self.predictor.predict(
                    point_coords=np.array(spec.points, np.float32), point_labels=np.array(spec.labels, np.int64),
                    multimask_output=True)
            elif mode == "box":
                masks, scores, _ = self.predictor.predict(box=np.array(spec.box, np.float32), multimask_output=True)
            else:
                raise ValueError(f"not a sam spec: {spec.text!r}")
        best = masks[int(np.argmax(scores))]
        if not best.any():
            raise ValueError(f"SAM found nothing for {spec.text!r}")
        return best.astype(np.float32)

    def refine(self, mask: np.ndarray, image: np.ndarray, margin: int) -> np.ndarray:
        """Snap a landmark mask's edge to the image: SAM prompted with its box and an inside point,
        kept within `margin` px of the landmark mask; the mask's core (eroded by margin) always stays."""
        import torch

        from editflow.masks import ops

        box = ops.bounding_box(mask)
        if box is None:
            return mask
        core = ops.grow(mask, -margin)
        inside = np.argwhere((core if core.any() else mask) > 0.5)
        y, x = inside[len(inside) // 2]
        with torch.inference_mode():
            self.predictor.set_image(np.ascontiguousarray(image[..., :3]))
            masks, scores, _ = self.predictor.predict(
                point_coords=np.array([[x, y]], np.float32), point_labels=np.array([1]),
                box=np.array(box, np.float32), multimask_output=True)
        sam = masks[int(np.argmax(scores))].astype(np.float32)
        reach = ops.grow(mask, margin)
        refined = np.maximum(sam * reach, core)
        return refined if refined.any() else mask

    def _auto(self, image: np.ndarray, select: str) -> np.ndarray:
        SamAutomaticMaskGenerator = import_segment_anything().SamAutomaticMaskGenerator
        if self._generator is None:
            self._generator = SamAutomaticMaskGenerator(self.model, **self.generator_options)
            self._generator.predictor = self.predictor  # share the embedding cache
        segments = self._generator.generate(image)
        if not segments:
            raise ValueError("SAM found no segments in the image (sam:auto)")
        select = (select or "largest").strip().lower()
        if select.startswith("point="):
            select = select[len("point="):]
        if select == "largest":
            chosen = max(segments, key=lambda s: s["area"])
        else:
            try:
                x, y = (float(v) for v in select.split(","))
            except ValueError:
                raise ValueError(f"sam:auto selection must be 'largest' or x,y, got {select!r}") from None
            h, w = image.shape[:2]
            xi, yi = int(round(x)), int(round(y))
            if not (0 <= xi < w and 0 <= yi < h):
                raise ValueError(f"sam:auto point {x},{y} lies outside the {w}x{h} image")
            holding = [s for s in segments if s["segmentation"][yi, xi]]
            if not holding:
                raise ValueError(f"sam:auto: no segment contains the point {x},{y}")
            chosen = max(holding, key=lambda s: s["predicted_iou"])  # SAM's most confident segment there
        return np.asarray(chosen["segmentation"], np.float32)
