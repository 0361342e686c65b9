"""Garment-agnostic masks and the person mask, from MediaPipe Pose landmarks and segmentation.

A try-on mask must cover where the *new* garment will be, not only the old one: a mask that follows
the current garment leaks its sleeve length and silhouette into the result, and a mask over the face
or hands breaks them (research/tryon_makeup.md §3.7). So each category is the union of

  * a body-shape region drawn from the pose skeleton, wide enough for loose garments:
        upper  neck to hips (torso polygon), both arms shoulder -> elbow -> wrist
               (`params: {"sleeve": "short"}`: to the elbow, the forearms protected)
        lower  waistband (`WAIST_RISE` above the hip joints) to ankles, both legs
        dress  shoulders to ankles (or knees, `params: {"dress_length": "knee"}`), arms as upper
  * the person's segmentation inside that category's vertical band (the old garment, however wide),

grown by a radius proportional to the body's size (shoulder width), with holes filled, then kept
inside `person_room` (the segmentation grown by a loose garment's margin, minus its large holes:
the gap beside an arm, an object held in front of the body where the segmentation leaves it out),
and with what the methods protect subtracted (IDM-VTON / CatVTON agnostic masks keep them):

  * always: the face (head ellipse), the hands (pose hand points, and the hand landmarker's 21
    points per hand when it finds them), the hair: the person above the shoulders around the
    head, and, given the picture, long hair below them — pixels within a Mahalanobis distance of
    the hair colour sampled above the forehead line (the face mesh's top, else from the pose eyes
    and ears), connected to the hair above;
  * upper: everything below the hips but the sleeves (the lower garment), the forearms for short
    sleeves; lower: the arms (they hang beside the hips), everything above the waistband (the upper
    garment, its hem), the feet; dress: the feet, the forearms for short sleeves.

`person` is the pose model's person segmentation. Published systems build theirs from human parsing
+ DensePose/OpenPose (IDM-VTON, OOTDiffusion, CatVTON); this is the same idea from a
weight-free-to-install, offline, Apache-2.0 model: all coordinates scale with the body, so the
rules are resolution independent.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from editflow.masks.face import MaskModelError, import_mediapipe, start_solution
from editflow.errors import EditflowError
from editflow.tasks import CATEGORIES as GARMENT_CATEGORIES

SLEEVES = ("long", "short")
WAIST_RISE = 0.12  # the waistband above the hip joints, in shoulder widths
LOOSE_MARGIN = 0.12  # how far past the person's outline a garment may reach, in shoulder widths
HAIR_DISTANCE = 3.0  # Mahalanobis distance (Lab) to the sampled hair colour that still is hair
HAIR_REACH = 1.0  # how far below the shoulders long hair is looked for, in shoulder widths

# MediaPipe Pose landmark indices (BlazePose 33-point topology)
NOSE, L_EAR, R_EAR = 0, 7, 8
HEAD = tuple(range(0, 11))
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 11, 12, 13, 14, 15, 16
L_HAND, R_HAND = (15, 17, 19, 21), (16, 18, 20, 22)
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 23, 24, 25, 26, 27, 28
L_FOOT, R_FOOT = (27, 29, 31), (28, 30, 32)


class NoPersonError(EditflowError, RuntimeError):
    """The image has no detectable person (or not the body part a garment mask needs)."""


@dataclass
class Body:
    """Pose landmarks in pixels (may lie outside the image), their visibility, and the person mask."""

    points: np.ndarray  # (33, 2) float32 pixels
    visibility: np.ndarray  # (33,) float32
    segmentation: np.ndarray  # (H, W) float32 in [0, 1]

    @property
    def scale(self) -> float:
        """The body's size in pixels: shoulder width, or a fraction of the torso when seen side-on."""
        shoulders = float(np.linalg.norm(self.points[L_SHOULDER] - self.points[R_SHOULDER]))
        torso = float(np.linalg.norm(self.mid(L_SHOULDER, R_SHOULDER) - self.mid(L_HIP, R_HIP)))
        return max(shoulders, 0.55 * torso, 4.0)

    def mid(self, a: int, b: int) -> np.ndarray:
        return (self.points[a] + self.points[b]) / 2.0


class PoseModel:
    """MediaPipe Pose (full model, with segmentation) on RGB uint8 images."""

    def __init__(self, min_confidence: float = 0.5) -> None:
        mp = import_mediapipe()
        self._pose = start_solution(lambda: mp.solutions.pose.Pose(
            static_image_mode=True, model_complexity=1, enable_segmentation=True,
            min_detection_confidence=min_confidence), "pose")
        self.calls = 0

    def detect(self, image: np.ndarray) -> Body | None:
        self.calls += 1
        height, width = image.shape[:2]
        result = self._pose.process(np.ascontiguousarray(image[..., :3]))
        if result.pose_landmarks is None:
            return None
        landmarks = result.pose_landmarks.landmark
        points = np.array([(p.x * width, p.y * height) for p in landmarks], np.float32)
        visibility = np.array([p.visibility for p in landmarks], np.float32)
        seg = result.segmentation_mask
        if seg is None:  # pragma: no cover - enable_segmentation is on
            raise MaskModelError("MediaPipe Pose returned no segmentation mask")
        seg = np.asarray(seg, np.float32)
        if seg.shape != (height, width):
            seg = cv2.resize(seg, (width, height), interpolation=cv2.INTER_LINEAR)
        return Body(points, visibility, np.clip(seg, 0.0, 1.0))

    def close(self) -> None:
        self._pose.close()


def _disc(radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _poly(canvas: np.ndarray, points) -> None:
    cv2.fillPoly(canvas, [np.round(np.asarray(points, np.float64)).astype(np.int32).reshape(-1, 1, 2)], 1)


def _limb(canvas: np.ndarray, points, width: float) -> None:
    pts = np.round(np.asarray(points, np.float64)).astype(np.int32)
    thickness = max(1, int(round(width)))
    for a, b in zip(pts[:-1], pts[1:]):
        cv2.line(canvas, tuple(int(v) for v in a), tuple(int(v) for v in b), 1, thickness, cv2.LINE_8)
        cv2.circle(canvas, tuple(int(v) for v in b), thickness // 2, 1, -1)


def _outward(body: Body, a: int, b: int, amount: float) -> tuple[np.ndarray, np.ndarray]:
    """Points a and b pushed apart along the line joining them by `amount` each."""
    pa, pb = body.points[a], body.points[b]
    direction = pa - pb
    norm = float(np.linalg.norm(direction)) or 1.0
    push = direction / norm * amount
    return pa + push, pb - push


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes of a {0,1} uint8 mask (a flood fill from a padded border)."""
    padded = np.pad(mask, 1)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8), (0, 0), 1)
    holes = (flood == 0).astype(np.uint8)
    return (padded | holes)[1:-1, 1:-1]


def head_mask(body: Body, shape: tuple[int, int]) -> np.ndarray:
    """An ellipse over the head (face, ears, hair line) from the pose head landmarks."""
    head = body.points[list(HEAD)]
    centre = head.mean(axis=0)
    ears = float(np.linalg.norm(body.points[L_EAR] - body.points[R_EAR]))
    shoulders_y = float(body.mid(L_SHOULDER, R_SHOULDER)[1])
    half_width = max(ears * 0.75, 0.28 * body.scale)
    # the chin lies about half an ear-span below the mouth: stop there, above the neck
    mouth_y = float(body.mid(9, 10)[1])
    half_height = max(half_width * 1.3, 1.0)
    centre_y = min(float(centre[1]), mouth_y + 0.55 * ears - half_height)
    centre_y = min(centre_y, shoulders_y - half_height)  # never below the shoulders' line
    canvas = np.zeros(shape, np.uint8)
    cv2.ellipse(canvas, (int(round(centre[0])), int(round(centre_y))),
                (int(round(half_width)), int(round(half_height))), 0, 0, 360, 1, -1)
    return canvas


def hands_mask(body: Body, shape: tuple[int, int], hands: list[np.ndarray] | None = None) -> np.ndarray:
    """Both hands: the hull of wrist, pinky, index and thumb landmarks, grown by a hand's width; and
    each hand the hand landmarker found (21 points, `HandModel`), its hull grown a little."""
    canvas = np.zeros(shape, np.uint8)
    for hand in (L_HAND, R_HAND):
        pts = body.points[list(hand)]
        size = max(float(np.ptp(pts[:, 0])), float(np.ptp(pts[:, 1])), 0.12 * body.scale)
        _poly(canvas, cv2.convexHull(np.round(pts).astype(np.int32)).reshape(-1, 2))
        centre = pts[1:].mean(axis=0)  # the fingers' landmarks: the hand extends past them
        cv2.circle(canvas, (int(round(centre[0])), int(round(centre[1]))), int(round(0.75 * size)), 1, -1)
    canvas = cv2.dilate(canvas, _disc(0.04 * body.scale))
    for points in hands or ():
        found = np.zeros(shape, np.uint8)
        _poly(found, cv2.convexHull(np.round(np.asarray(points, np.float64)).astype(np.int32)).reshape(-1, 2))
        canvas |= cv2.dilate(found, _disc(0.05 * body.scale))
    return canvas


class HandModel:
    """MediaPipe Hands (21 landmarks per hand; the model ships in the wheel) on RGB uint8 images."""

    def __init__(self, max_hands: int = 4, min_confidence: float = 0.5) -> None:
        mp = import_mediapipe()
        self._hands = start_solution(lambda: mp.solutions.hands.Hands(
            static_image_mode=True, max_num_hands=max_hands, min_detection_confidence=min_confidence), "hands")
        self.calls = 0

    def detect(self, image: np.ndarray) -> list[np.ndarray]:
        """Each hand found: (21, 2) float32 pixels."""
        self.calls += 1
        height, width = image.shape[:2]
        result = self._hands.process(np.ascontiguousarray(image[..., :3]))
        return [np.array([(p.x * width, p.y * height) for p in hand.landmark], np.float32)
                for hand in result.multi_hand_landmarks or ()]

    def close(self) -> None:
        self._hands.close()


def feet_mask(body: Body, shape: tuple[int, int]) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    for foot in (L_FOOT, R_FOOT):
        pts = body.points[list(foot)]
        _poly(canvas, cv2.convexHull(np.round(pts).astype(np.int32)).reshape(-1, 2))
    return cv2.dilate(canvas, _disc(0.1 * body.scale))


def _bar(canvas: np.ndarray, a: np.ndarray, b: np.ndarray, width: float) -> None:
    """A square-ended bar from a to b (no round cap reaching back past a)."""
    direction = b - a
    norm = float(np.linalg.norm(direction)) or 1.0
    normal = np.array([-direction[1], direction[0]]) / norm * (width / 2)
    _poly(canvas, [a + normal, b + normal, b - normal, a - normal])


def _limbs(body: Body, shape: tuple[int, int], upper_width: float, fore_width: float,
           from_elbow: float | None = None) -> np.ndarray:
    """Both arms as thick polylines: shoulder -> elbow (`upper_width`) -> wrist (`fore_width`; 0 =
    none), in body scales. `from_elbow` set: only the forearm, from that many body scales past the
    elbow (square-ended there, so the sleeve's end stays in the mask)."""
    s = body.scale
    canvas = np.zeros(shape, np.uint8)
    for shoulder, elbow, wrist in ((L_SHOULDER, L_ELBOW, L_WRIST), (R_SHOULDER, R_ELBOW, R_WRIST)):
        ps, pe, pw = body.points[[shoulder, elbow, wrist]]
        if from_elbow is not None:
            forearm = pw - pe
            length = float(np.linalg.norm(forearm)) or 1.0
            start = pe + forearm / length * min(from_elbow * s, 0.5 * length)
            _bar(canvas, start, pw, fore_width * s)
            cv2.circle(canvas, tuple(int(round(v)) for v in pw), int(round(fore_width * s / 2)), 1, -1)
            continue
        _limb(canvas, [ps, pe], upper_width * s)
        if fore_width > 0:
            _limb(canvas, [pe, pw], fore_width * s)
    return canvas


def arms_mask(body: Body, shape: tuple[int, int]) -> np.ndarray:
    """The arms themselves (shoulder to wrist, an arm's width), as a lower garment protects them."""
    return _limbs(body, shape, 0.3, 0.26)


def forearms_mask(body: Body, shape: tuple[int, int]) -> np.ndarray:
    """Elbow (a little past it) to wrist: what a short sleeve leaves bare."""
    return _limbs(body, shape, 0.0, 0.3, from_elbow=0.1)


def _upper_shape(body: Body, canvas: np.ndarray, sleeve: str) -> None:
    s = body.scale
    neck = body.mid(L_SHOULDER, R_SHOULDER)
    head = body.points[list(HEAD)].mean(axis=0)
    neck_top = neck + (head - neck) * 0.3  # the neckline: a third of the way up to the face
    ls, rs = _outward(body, L_SHOULDER, R_SHOULDER, 0.12 * s)
    lh, rh = _outward(body, L_HIP, R_HIP, 0.2 * s)
    half_neck = 0.2 * s
    across = (body.points[L_SHOULDER] - body.points[R_SHOULDER])
    across = across / (float(np.linalg.norm(across)) or 1.0)
    _poly(canvas, [neck_top + across * half_neck, ls, lh, rh, rs, neck_top - across * half_neck])
    # sleeves with room for a loose one; a short sleeve stops at the elbow
    canvas |= _limbs(body, canvas.shape, 0.42, 0.32 if sleeve == "long" else 0.0)
    if sleeve == "short":
        canvas &= 1 - forearms_mask(body, canvas.shape)


def _lower_shape(body: Body, canvas: np.ndarray, end: tuple[int, int], waist_y: float) -> None:
    s = body.scale
    lh, rh = _outward(body, L_HIP, R_HIP, 0.25 * s)
    rise = max(0.0, float(body.mid(L_HIP, R_HIP)[1]) - waist_y)
    lw, rw = lh - (0.0, rise), rh - (0.0, rise)
    left_end, right_end = body.points[end[0]], body.points[end[1]]
    _poly(canvas, [lw, rw, rh, body.points[R_KNEE], right_end, left_end, body.points[L_KNEE], lh])
    for hip, knee, foot in ((L_HIP, L_KNEE, end[0]), (R_HIP, R_KNEE, end[1])):
        _limb(canvas, body.points[[hip, knee]], 0.55 * s)
        _limb(canvas, body.points[[knee, foot]], 0.42 * s)


def _band(shape: tuple[int, int], top: float, bottom: float) -> np.ndarray:
    band = np.zeros(shape, np.uint8)
    y0, y1 = max(0, int(np.floor(top))), min(shape[0], int(np.ceil(bottom)))
    if y1 > y0:
        band[y0:y1] = 1
    return band


def waist_y(body: Body) -> float:
    """Where a lower garment starts: the waistband, a little above the hip joints."""
    return float(body.mid(L_HIP, R_HIP)[1]) - WAIST_RISE * body.scale


def person_room(person: np.ndarray, scale: float) -> np.ndarray:
    """Where a garment may be: the person grown by a loose garment's margin, but not into the
    segmentation's large holes (the gap between an arm and the body, an object held in front)."""
    grown = cv2.dilate(person, _disc(LOOSE_MARGIN * scale))
    holes = _fill_holes(person) & (1 - person)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=4)
    big = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= (0.12 * scale) ** 2) + 1
    return grown & (1 - np.isin(labels, big).astype(np.uint8))


def _forehead_y(body: Body, face_points: np.ndarray | None) -> float:
    """The hairline's lowest plausible row: the face mesh's top (landmark 10) or, from the pose,
    half an ear span above the eyes."""
    if face_points is not None and len(face_points) > 10:
        oval_top = float(face_points[:, 1].min())
        return oval_top
    eyes = body.points[[1, 2, 3, 4, 5, 6], 1].mean()
    ears = float(np.linalg.norm(body.points[L_EAR] - body.points[R_EAR]))
    return float(eyes - 0.5 * max(ears, 0.3 * body.scale))


def hair_mask(body: Body, shape: tuple[int, int], image: np.ndarray | None = None,
              face_points: np.ndarray | None = None) -> np.ndarray:
    """The hair (and the rest of the head): the person above the shoulders around the head, plus,
    with the image, hair hanging lower: pixels of the hair's colour (sampled above the forehead
    line) connected to it, down to a shoulder width below the shoulders."""
    s = body.scale
    person = (body.segmentation > 0.5).astype(np.uint8)
    head = body.points[list(HEAD)].mean(axis=0)
    shoulders_y = float(body.mid(L_SHOULDER, R_SHOULDER)[1])
    neck_y = shoulders_y - 0.25 * s
    ears = float(np.linalg.norm(body.points[L_EAR] - body.points[R_EAR]))
    half = max(0.6 * s, 1.3 * ears)
    xs = np.arange(shape[1])[None, :]
    corridor = (np.abs(xs - head[0]) <= half).astype(np.uint8)
    hair = person & _band(shape, 0, neck_y) & corridor
    if image is None:
        return hair
    forehead = _forehead_y(body, face_points)
    sample = (person & _band(shape, 0, forehead - 0.02 * s) & corridor).astype(bool)
    if sample.sum() < 30:
        return hair
    lab = cv2.cvtColor(np.ascontiguousarray(image[..., :3]).astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    values = lab[sample].astype(np.float64)
    mean = values.mean(axis=0)
    cov = np.cov(values, rowvar=False) + np.eye(3) * 9.0  # a little slack for a one-tone sample
    diff = (lab.reshape(-1, 3) - mean) @ np.linalg.inv(cov).astype(np.float32)
    distance = np.sqrt(np.maximum(np.einsum("ij,ij->i", diff, lab.reshape(-1, 3) - mean), 0))
    like = (distance.reshape(shape) < HAIR_DISTANCE).astype(np.uint8)
    low_corridor = (np.abs(xs - head[0]) <= max(0.9 * s, half)).astype(np.uint8)
    reach = _band(shape, forehead, shoulders_y + HAIR_REACH * s) & low_corridor
    candidate = person & like & reach & (1 - head_mask(body, shape))
    candidate = cv2.morphologyEx(candidate, cv2.MORPH_OPEN, _disc(0.015 * s))
    seeds = candidate & (hair | sample.astype(np.uint8))
    count, labels = cv2.connectedComponents(candidate | seeds, connectivity=8)
    touching = np.unique(labels[seeds > 0])
    grown = np.isin(labels, touching[touching > 0]).astype(np.uint8)
    return hair | cv2.dilate(grown, _disc(0.01 * s))  # and its soft edge


def _option(value: str | None, choices: tuple[str, ...], default: str, name: str) -> str:
    chosen = (value or default).lower()
    if chosen not in choices:
        raise ValueError(f"{name} must be {' or '.join(choices)}, got {value!r}")
    return chosen


def garment_mask(body: Body, category: str, shape: tuple[int, int], dress_length: str | None = None,
                 sleeve: str | None = None, image: np.ndarray | None = None,
                 face_points: np.ndarray | None = None, hands: list[np.ndarray] | None = None) -> np.ndarray:
    """float32 {0,1} agnostic mask for a garment `category` at `shape` (H, W).

    `sleeve` ("long" default, or "short": the forearms stay), `dress_length` ("ankle" default, or
    "knee"); `image` (RGB, same size) lets long hair be told from the garment by its colour;
    `face_points` (face-mesh landmarks in pixels) give the forehead line the hair is sampled above;
    `hands` (hand-landmarker points, `HandModel.detect`) are protected with their fingers.
    """
    if category not in GARMENT_CATEGORIES:
        raise ValueError(f"garment category must be one of {', '.join(GARMENT_CATEGORIES)}, got {category!r}")
    sleeve = _option(sleeve, SLEEVES, "long", "sleeve")
    s = body.scale
    person = (body.segmentation > 0.5).astype(np.uint8)
    shaped = np.zeros(shape, np.uint8)
    neck_y = float(body.mid(L_SHOULDER, R_SHOULDER)[1] - 0.25 * s)
    hips_y = float(body.mid(L_HIP, R_HIP)[1])
    knees_y = float(body.mid(L_KNEE, R_KNEE)[1])
    ankles_y = float(body.mid(L_ANKLE, R_ANKLE)[1])
    protect = head_mask(body, shape) | hands_mask(body, shape, hands) | hair_mask(body, shape, image, face_points)
    top = neck_y  # the highest row the garment may reach (below it: the head and hair rules)
    hem = None  # the lowest row it may reach, outside the arms
    if category == "upper":
        _upper_shape(body, shaped, sleeve)
        band = _band(shape, neck_y, hips_y)
        hem = hips_y  # the lower garment below the hips stays
        if sleeve == "short":
            protect |= forearms_mask(body, shape) & cv2.dilate(person, _disc(0.04 * s))
    elif category == "lower":
        top = waist_y(body)
        _lower_shape(body, shaped, (L_ANKLE, R_ANKLE), top)
        band = _band(shape, top, ankles_y + 0.05 * s)
        hem = ankles_y + 0.1 * s
        # the arms hang beside the hips: they, and the upper garment above the waist, stay
        protect |= arms_mask(body, shape) & cv2.dilate(person, _disc(0.04 * s))
        protect |= feet_mask(body, shape)
    else:
        length = _option(dress_length, ("knee", "ankle"), "ankle", "dress_length")
        end = (L_KNEE, R_KNEE) if length == "knee" else (L_ANKLE, R_ANKLE)
        _upper_shape(body, shaped, sleeve)
        _lower_shape(body, shaped, end, waist_y(body))
        bottom = (knees_y + 0.35 * s) if length == "knee" else ankles_y + 0.05 * s
        band = _band(shape, neck_y, bottom)
        hem = bottom + 0.05 * s
        protect |= feet_mask(body, shape)
        if sleeve == "short":
            protect |= forearms_mask(body, shape) & cv2.dilate(person, _disc(0.04 * s))
    # the old garment: the person inside the category's band; the new one: the body shape
    mask = shaped | (person & band)
    mask = cv2.dilate(mask, _disc(0.06 * s))
    mask = _fill_holes(mask)
    mask &= person_room(person, s)
    mask &= 1 - protect
    if category == "lower":
        mask[: max(0, int(np.ceil(top)))] = 0
    if hem is not None:
        below = np.zeros(shape, np.uint8)
        below[max(0, int(np.ceil(hem))):] = 1
        if category == "upper":  # long sleeves may hang below the hips; the torso may not
            below &= 1 - _limbs(body, shape, 0.42, 0.32 if sleeve == "long" else 0.0)
        mask &= 1 - below
    mask = _largest_parts(mask, keep_fraction=0.05)
    if mask.sum() < 0.0005 * mask.size:
        raise NoPersonError(f"garment:{category}: that part of the body is not in the picture")
    return mask.astype(np.float32)


def _largest_parts(mask: np.ndarray, keep_fraction: float) -> np.ndarray:
    """Drop specks: keep connected parts at least `keep_fraction` of the largest."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 2:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= keep_fraction * areas.max()) + 1
    return np.isin(labels, keep).astype(np.uint8)


def person_mask(body: Body, shape: tuple[int, int]) -> np.ndarray:
    """float32 {0,1}: the person's segmentation."""
    mask = (body.segmentation > 0.5).astype(np.uint8)
    if mask.shape != shape:
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    if mask.sum() < 0.001 * mask.size:
        raise NoPersonError("no person found (the segmentation is empty)")
    return mask.astype(np.float32)
