"""The tasks and what every engine agrees on about them: names, garment categories, the default
mask of each task, the default strength of the generic ones, and the mask kinds made by models."""

from __future__ import annotations

__all__ = ["TASKS", "CATEGORIES", "AUTO_MASK_KINDS", "STRENGTH", "AUTO_MASKS", "auto_mask_text"]

TASKS = ("inpaint", "sdedit", "repaint", "tryon", "makeup")
#: garment categories (try-on rows, `garment:<category>` masks, catalog garments)
CATEGORIES = ("upper", "lower", "dress")
#: mask specs made by a model-backed masker (segment-anything, face landmarks, pose/segmentation)
AUTO_MASK_KINDS = ("sam", "face", "garment", "person")
#: default SDEdit strength of the generic tasks: from noise (1.0), or the region's content noised to 0.6
STRENGTH = {"inpaint": 1.0, "sdedit": 0.6, "repaint": 1.0}
#: what an `auto` (or empty) mask means per task; {category} is the row's (upper when it has none)
AUTO_MASKS = {"sdedit": "full", "tryon": "garment:{category}", "makeup": "face:lips+eyes+brows"}


def auto_mask_text(task: str, category: str | None) -> str | None:
    """The mask spec an `auto` mask stands for in `task`, or None when the task has no default."""
    text = AUTO_MASKS.get(task)
    return None if text is None else text.format(category=category or "upper")
