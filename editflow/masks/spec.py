"""Mask specs as written in a manifest's `mask` column, parsed and checked without opening images.

    box:x0,y0,x1,y1            polygon:x,y;x,y;x,y        full
    sam:points=x,y,1;x,y,0     sam:box=x0,y0,x1,y1         sam:auto
    face:lips+eyes+brows+skin  garment:upper|lower|dress   person
    auto  (the task's default) or empty                   anything else: a mask image URI
"""

from __future__ import annotations

from dataclasses import dataclass, field

from editflow.errors import EditflowError
from editflow.tasks import CATEGORIES as GARMENT_CATEGORIES

URI_SCHEMES = ("file", "s3", "gs", "http", "https")
#: face parts; `eyes` is the lash line around the opening, `eye_opening`/`iris` the eyeball (masks/face.py)
FACE_PARTS = ("lips", "eyes", "eyeshadow", "brows", "skin", "face", "eye_opening", "iris")


class MaskSpecError(EditflowError, ValueError):
    """The spec text cannot be parsed."""


@dataclass(frozen=True)
class MaskSpec:
    """A parsed mask spec. `kind` is file, box, polygon, full, auto, sam, face, garment or person."""

    kind: str
    text: str
    uri: str | None = None
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    parts: tuple[str, ...] = ()
    options: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


def parse_mask_spec(text: str | None) -> MaskSpec:
    """Parse a `mask` cell; an empty cell means `auto`."""
    if text is None or not str(text).strip():
        return MaskSpec(kind="auto", text="auto")
    text = str(text).strip()
    head, sep, body = text.partition(":")
    head_lower = head.lower()
    if not sep:
        if head_lower in ("auto", "full", "person"):
            return MaskSpec(kind=head_lower, text=head_lower)
        return MaskSpec(kind="file", text=text, uri=text)
    if head_lower in URI_SCHEMES:
        return MaskSpec(kind="file", text=text, uri=text)
    if head_lower == "box":
        return MaskSpec(kind="box", text=text, box=_box(body))
    if head_lower == "polygon":
        points = _points(body, per_point=2)
        if len(points) < 3:
            raise MaskSpecError(f"polygon needs at least 3 points, got {len(points)} in {text!r}")
        return MaskSpec(kind="polygon", text=text, points=tuple((p[0], p[1]) for p in points))
    if head_lower == "sam":
        return _sam(body, text)
    if head_lower == "face":
        parts = tuple(p.strip().lower() for p in body.split("+") if p.strip())
        unknown = [p for p in parts if p not in FACE_PARTS]
        if not parts or unknown:
            raise MaskSpecError(f"face parts must be some of {'+'.join(FACE_PARTS)}, got {body!r}")
        return MaskSpec(kind="face", text=text, parts=parts)
    if head_lower == "garment":
        category = body.strip().lower()
        if category not in GARMENT_CATEGORIES:
            raise MaskSpecError(f"garment category must be one of {', '.join(GARMENT_CATEGORIES)}, got {body!r}")
        return MaskSpec(kind="garment", text=text, parts=(category,))
    if len(head) == 1 and head.isalpha():  # a Windows drive letter: a file path
        return MaskSpec(kind="file", text=text, uri=text)
    raise MaskSpecError(
        f"unknown mask spec {head!r} in {text!r}; use box:, polygon:, sam:, face:, garment:, person, full, auto or a mask image path"
    )


def _numbers(body: str, what: str) -> list[float]:
    try:
        return [float(v) for v in body.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise MaskSpecError(f"{what} must be comma-separated numbers, got {body!r}") from None


def _box(body: str) -> tuple[float, float, float, float]:
    values = _numbers(body, "box")
    if len(values) != 4:
        raise MaskSpecError(f"box needs 4 numbers x0,y0,x1,y1, got {body!r}")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise MaskSpecError(f"box needs x1 > x0 and y1 > y0, got {body!r}")
    return (x0, y0, x1, y1)


def _points(body: str, per_point: int) -> list[list[float]]:
    points = []
    for chunk in body.split(";"):
        if not chunk.strip():
            continue
        values = _numbers(chunk, "point")
        if len(values) != per_point:
            raise MaskSpecError(f"each point needs {per_point} numbers, got {chunk!r}")
        points.append(values)
    return points


def _sam(body: str, text: str) -> MaskSpec:
    key, _, value = body.partition("=")
    key = key.strip().lower()
    if key == "auto":
        return MaskSpec(kind="sam", text=text, options={"mode": "auto", "select": value.strip() or "largest"})
    if key == "box":
        return MaskSpec(kind="sam", text=text, box=_box(value), options={"mode": "box"})
    if key == "points":
        points = _points(value, per_point=3)
        if not points:
            raise MaskSpecError(f"sam:points needs at least one x,y,label point, got {text!r}")
        labels = tuple(int(p[2]) for p in points)
        if any(label not in (0, 1) for label in labels):
            raise MaskSpecError(f"sam point labels must be 1 (include) or 0 (exclude), got {text!r}")
        return MaskSpec(kind="sam", text=text, points=tuple((p[0], p[1]) for p in points), labels=labels,
                        options={"mode": "points"})
    raise MaskSpecError(f"sam spec must be sam:points=..., sam:box=... or sam:auto, got {text!r}")
