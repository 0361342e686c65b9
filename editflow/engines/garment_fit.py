"""Fit a garment photo to a person: keypoints from the garment's silhouette, the same keypoints from
the person's pose, and a thin-plate-spline warp (OpenCV) of the garment onto the person.

The weight-free try-on (`engines/tryon.py`) uses this so the garment keeps its own shape —
neckline, shoulders, sleeves, hem — instead of being stretched over the whole mask.

Garment keypoints (pixels in the garment crop), read off a front-view product photo's silhouette:

    upper / dress  neck (collar top centre: the top of the silhouette above the torso's centre),
                   the shoulder corners (the top edge above the torso's sides), the sleeve ends
                   (the far end of the parts left and right of the torso, when there are any),
                   the hem corners (the bottom row's ends)
    lower          the waistband corners (top row's ends), the crotch (the top of the gap between
                   the legs, when there is one), the hem corners

Person keypoints are the same places from MediaPipe Pose landmarks (`masks/body.py`): the neck a
little above the shoulders' midpoint, the shoulders pushed out to the garment's seam, the sleeve
ends at the garment's own sleeve length (in shoulder widths) along shoulder -> elbow -> wrist, the
hem at the hips (upper), knees or ankles (dress, by `dress_length`), ankles (lower), the waistband
a little above the hips. Left and right pair by image x, so a garment photographed from the front
lands the right way round on a person facing the camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from editflow.masks import body as B


@dataclass(frozen=True)
class Keypoints:
    """Named (x, y) points, in matching order between a garment and a person."""

    names: tuple[str, ...]
    points: np.ndarray  # (N, 2) float32

    def pick(self, names: tuple[str, ...]) -> np.ndarray:
        return np.stack([self.points[self.names.index(n)] for n in names]).astype(np.float32)


def _row_ends(fg: np.ndarray, y0: int, y1: int) -> tuple[float, float]:
    """Leftmost and rightmost foreground x over rows y0..y1."""
    xs = np.nonzero(fg[y0:y1 + 1].any(axis=0))[0]
    return float(xs.min()), float(xs.max())


def _run_width(fg: np.ndarray, x: float, y0: int, y1: int) -> float:
    """Median width of the foreground run through column x over rows y0..y1 (the torso, not the
    sleeves beside it or a skirt's flare below)."""
    column = int(np.clip(round(x), 0, fg.shape[1] - 1))
    widths = []
    for row in fg[y0:y1 + 1]:
        if not row[column]:
            continue
        off = np.flatnonzero(~row)
        left = off[off < column].max() + 1 if (off < column).any() else 0
        right = off[off > column].min() if (off > column).any() else row.size
        widths.append(right - left)
    return float(np.median(widths)) if widths else float(fg.any(axis=0).sum())


def _top_at(fg: np.ndarray, x: float) -> float:
    column = fg[:, int(np.clip(round(x), 0, fg.shape[1] - 1))]
    ys = np.nonzero(column)[0]
    return float(ys.min()) if ys.size else float(np.nonzero(fg.any(axis=1))[0].min())


def garment_keypoints(mask: np.ndarray, category: str) -> Keypoints:
    """Keypoints of a garment silhouette (H×W, > 0 = garment) for `category` (see the module doc)."""
    fg = np.asarray(mask) > 0
    ys = np.nonzero(fg.any(axis=1))[0]
    top, bottom = int(ys.min()), int(ys.max())
    strip = max(1, int(round(0.03 * (bottom - top + 1))))
    hem_l, hem_r = _row_ends(fg, bottom - strip, bottom)
    hem_y = float(bottom)  # the garment's edge, where the person's hem line goes
    if category == "lower":
        waist_l, waist_r = _row_ends(fg, top, top + strip)
        waist_y = float(top)
        names, points = ["waist_l", "waist_r", "hem_l", "hem_r"], [(waist_l, waist_y), (waist_r, waist_y),
                                                                   (hem_l, hem_y), (hem_r, hem_y)]
        centre = (waist_l + waist_r) / 2.0
        column = fg[top:bottom + 1, int(round(centre))]
        gap = np.nonzero(~column)[0]
        if gap.size and gap.min() < 0.8 * (bottom - top):  # trousers: the legs part below the crotch
            names.append("crotch")
            points.append((centre, float(top + gap.min())))
        return Keypoints(tuple(names), np.asarray(points, np.float32))
    # upper / dress: the torso is the part of the silhouette straight above the hem; the shoulder
    # corners sit inside both the torso's width (below the sleeves) and the top edge's ends
    width = hem_r - hem_l
    centre = (hem_l + hem_r) / 2.0
    height = bottom - top + 1
    torso = _run_width(fg, centre, top + int(0.3 * height), top + int(0.6 * height))
    top_l, top_r = _row_ends(fg, top, top + strip)
    side = min(0.45 * torso, centre - top_l, top_r - centre)
    shoulder_l = (centre - side, _top_at(fg, centre - side))
    shoulder_r = (centre + side, _top_at(fg, centre + side))
    names = ["neck", "shoulder_l", "shoulder_r", "hem_l", "hem_r"]
    points = [(centre, _top_at(fg, centre)), shoulder_l, shoulder_r, (hem_l, hem_y), (hem_r, hem_y)]
    yy, xx = np.nonzero(fg)
    for name, outside, shoulder in (("sleeve_l", xx < hem_l - 0.08 * width, shoulder_l),
                                    ("sleeve_r", xx > hem_r + 0.08 * width, shoulder_r)):
        if outside.sum() < 0.002 * fg.sum():
            continue  # sleeveless, or sleeves that hang inside the torso's width
        sx, sy = xx[outside].astype(np.float32), yy[outside].astype(np.float32)
        distance = np.hypot(sx - shoulder[0], sy - shoulder[1])
        far = distance >= np.quantile(distance, 0.85)
        names.append(name)
        points.append((float(sx[far].mean()), float(sy[far].mean())))
    return Keypoints(tuple(names), np.asarray(points, np.float32))


def _along(polyline: np.ndarray, distance: float) -> np.ndarray:
    """The point `distance` along a polyline (clamped to its end)."""
    for a, b in zip(polyline[:-1], polyline[1:]):
        step = float(np.linalg.norm(b - a))
        if distance <= step and step > 0:
            return a + (b - a) * (distance / step)
        distance -= step
    return polyline[-1]


def person_keypoints(body: B.Body, category: str, garment: Keypoints, dress_length: str | None = None) -> Keypoints:
    """The garment's keypoints placed on the person (same names, same order)."""
    s = body.scale
    p = body.points
    # image-left / image-right landmarks (a person facing the camera has the right side on the left)
    left_first = p[B.R_SHOULDER][0] <= p[B.L_SHOULDER][0]
    (sl, el, wl), (sr, er, wr) = ((B.R_SHOULDER, B.R_ELBOW, B.R_WRIST), (B.L_SHOULDER, B.L_ELBOW, B.L_WRIST))
    hl, hr, kl, kr, al, ar = B.R_HIP, B.L_HIP, B.R_KNEE, B.L_KNEE, B.R_ANKLE, B.L_ANKLE
    if not left_first:
        (sl, el, wl), (sr, er, wr) = (sr, er, wr), (sl, el, wl)
        hl, hr, kl, kr, al, ar = hr, hl, kr, kl, ar, al
    shoulders = body.mid(B.L_SHOULDER, B.R_SHOULDER)
    hips = body.mid(B.L_HIP, B.R_HIP)
    up = shoulders - hips
    up = up / (float(np.linalg.norm(up)) or 1.0)
    across = p[sr] - p[sl]
    across = across / (float(np.linalg.norm(across)) or 1.0)
    places: dict[str, np.ndarray] = {}
    if category == "lower":
        waist = hips + up * B.WAIST_RISE * s
        half = 0.5 * float(np.linalg.norm(p[hr] - p[hl])) + 0.22 * s
        places["waist_l"], places["waist_r"] = waist - across * half, waist + across * half
        places["hem_l"], places["hem_r"] = p[al] - across * 0.15 * s, p[ar] + across * 0.15 * s
        places["crotch"] = hips - up * 0.3 * s
    else:
        places["neck"] = shoulders + up * 0.12 * s
        places["shoulder_l"] = p[sl] - across * 0.08 * s + up * 0.05 * s
        places["shoulder_r"] = p[sr] + across * 0.08 * s + up * 0.05 * s
        if category == "dress":
            if (dress_length or "ankle").lower() == "knee":
                end_l, end_r = p[kl] + (p[al] - p[kl]) * 0.3, p[kr] + (p[ar] - p[kr]) * 0.3
            else:
                end_l, end_r = p[al], p[ar]
            flare = 0.25 * s
        else:
            end_l, end_r, flare = p[hl], p[hr], 0.15 * s
        places["hem_l"], places["hem_r"] = end_l - across * flare, end_r + across * flare
        g_shoulders = float(np.linalg.norm(garment.pick(("shoulder_r",)) - garment.pick(("shoulder_l",)))) or 1.0
        t_shoulders = float(np.linalg.norm(places["shoulder_r"] - places["shoulder_l"]))
        for name, shoulder, arm in (("sleeve_l", "shoulder_l", (sl, el, wl)), ("sleeve_r", "shoulder_r", (sr, er, wr))):
            if name in garment.names:
                length = float(np.linalg.norm(garment.pick((name,)) - garment.pick((shoulder,))))
                places[name] = _along(np.stack([places[shoulder], p[arm[1]], p[arm[2]]]),
                                      length / g_shoulders * t_shoulders)
    return Keypoints(garment.names, np.stack([places[n] for n in garment.names]).astype(np.float32))


def warp_garment(rgb: np.ndarray, mask: np.ndarray, source: Keypoints, target: Keypoints,
                 shape: tuple[int, int], box: tuple[int, int, int, int] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The garment (`rgb` float or uint8 h×w×3, its silhouette `mask`) warped so its keypoints land
    on the target's: a thin-plate spline (OpenCV's shape transformer) from target to garment
    coordinates, evaluated on the target's pixels (within `box` = y0, y1, x0, x1 if given), then
    `cv2.remap`. Returns the warped image (H×W×3, float32) and its footprint (H×W bool)."""
    h, w = shape
    y0, y1, x0, x1 = box if box is not None else (0, h, 0, w)
    tps = cv2.createThinPlateSplineShapeTransformer(regularizationParameter=0.0)
    matches = [cv2.DMatch(i, i, 0.0) for i in range(len(target.names))]
    tps.estimateTransformation(target.points.reshape(1, -1, 2), source.points.reshape(1, -1, 2), matches)
    gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).reshape(1, -1, 2)
    _, mapped = tps.applyTransformation(grid)
    mapped = mapped.reshape(y1 - y0, x1 - x0, 2)
    map_x = np.ascontiguousarray(mapped[..., 0])
    map_y = np.ascontiguousarray(mapped[..., 1])
    warped = np.zeros((h, w, 3), np.float32)
    warped[y0:y1, x0:x1] = cv2.remap(np.asarray(rgb, np.float32), map_x, map_y, cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE)
    footprint = np.zeros((h, w), bool)
    footprint[y0:y1, x0:x1] = cv2.remap(np.asarray(mask, np.float32), map_x, map_y, cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_CONSTANT, borderValue=0.0) > 0.5
    return warped, footprint
