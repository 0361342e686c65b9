"""Garment-agnostic and person masks: on the astronaut photo, and on a drawn full-body skeleton."""

from __future__ import annotations

import numpy as np
import pytest

from editflow.masks import body as B
from editflow.masks.auto import AutoMasker, MaskContext
from editflow.masks.spec import parse_mask_spec

from skimage import data as skimage_data  # noqa: E402

# measured by hand on the 512 x 512 astronaut
SUIT_TORSO = (80, 260, 260, 480)  # x0, y0, x1, y1: chest and belly of the orange suit
FACE = (180, 72, 271, 178)
SKY_AND_SHUTTLE = (330, 0, 512, 120)
FLAG = (0, 0, 80, 150)


def cover(mask: np.ndarray, box) -> float:
    x0, y0, x1, y1 = box
    return float(mask[y0:y1, x0:x1].mean())


@pytest.fixture(scope="module")
def astronaut_masks() -> dict[str, np.ndarray]:
    masker = AutoMasker()
    image = skimage_data.astronaut()
    masks = {s: masker.make(parse_mask_spec(s), image, MaskContext(image_key="astronaut"))
             for s in ("garment:upper", "person", "garment:dress")}
    masks["pose_runs"] = masker.stats["pose_runs"]
    return masks


def test_upper_covers_the_suit_torso_not_the_face(astronaut_masks) -> None:
    upper = astronaut_masks["garment:upper"]
    assert upper.shape == (512, 512) and upper.dtype == np.float32
    assert cover(upper, SUIT_TORSO) > 0.9
    assert cover(upper, FACE) == 0.0
    assert cover(upper, SKY_AND_SHUTTLE) < 0.02 and cover(upper, FLAG) < 0.05


def test_person_covers_the_astronaut_not_the_background(astronaut_masks) -> None:
    person = astronaut_masks["person"]
    assert cover(person, SUIT_TORSO) > 0.95 and cover(person, FACE) > 0.85
    assert cover(person, SKY_AND_SHUTTLE) < 0.02 and cover(person, FLAG) < 0.02


def test_pose_runs_once_per_image(astronaut_masks) -> None:
    assert astronaut_masks["pose_runs"] == 1


def test_no_person_is_an_error() -> None:
    masker = AutoMasker()
    for spec in ("person", "garment:upper"):
        with pytest.raises(B.NoPersonError, match="no person found"):
            masker.make(parse_mask_spec(spec), skimage_data.coffee())


# A standing person drawn as pose landmarks (pixels) on a 400 x 800 picture: no model needed.
def standing_body(width: int = 400, height: int = 800) -> B.Body:
    p = np.zeros((33, 2), np.float32)
    p[0:11] = (200, 90)  # head points around the nose
    p[B.L_EAR], p[B.R_EAR] = (230, 90), (170, 90)
    p[9], p[10] = (210, 115), (190, 115)
    p[B.L_SHOULDER], p[B.R_SHOULDER] = (260, 170), (140, 170)
    p[B.L_ELBOW], p[B.R_ELBOW] = (285, 280), (115, 280)
    p[B.L_WRIST], p[B.R_WRIST] = (295, 380), (105, 380)
    for i, (x, y) in zip((17, 19, 21), ((300, 410), (295, 415), (285, 400))):
        p[i] = (x, y)
    for i, (x, y) in zip((18, 20, 22), ((100, 410), (105, 415), (115, 400))):
        p[i] = (x, y)
    p[B.L_HIP], p[B.R_HIP] = (235, 400), (165, 400)
    p[B.L_KNEE], p[B.R_KNEE] = (235, 560), (165, 560)
    p[B.L_ANKLE], p[B.R_ANKLE] = (235, 720), (165, 720)
    p[29], p[30], p[31], p[32] = (235, 740), (165, 740), (250, 760), (150, 760)
    seg = np.zeros((height, width), np.float32)
    seg[60:770, 95:305] = 1.0  # a crude silhouette
    return B.Body(p, np.ones(33, np.float32), seg)


def test_lower_is_waist_to_ankles_without_hands_or_feet() -> None:
    body = standing_body()
    lower = B.garment_mask(body, "lower", (800, 400))
    ys = np.nonzero(lower)[0]
    assert 340 < ys.min() < 400 and 700 < ys.max() < 745  # waist to ankles
    assert lower[480, 200] == 1 and lower[650, 235] == 1  # between the thighs, a shin
    assert lower[200, 200] == 0  # not the chest
    assert lower[412, 297] == 0 and lower[412, 103] == 0  # hands stay
    assert lower[758, 250] == 0  # feet stay


def test_upper_is_neck_to_hips_and_arms_to_wrists() -> None:
    body = standing_body()
    upper = B.garment_mask(body, "upper", (800, 400))
    assert upper[250, 200] == 1 and upper[280, 285] == 1 and upper[360, 293] == 1  # torso, elbow, forearm
    assert upper[90, 200] == 0 and upper[412, 297] == 0  # face and hands stay
    assert upper[600, 200] == 0  # not the legs
    assert np.nonzero(upper)[0].min() > 110  # starts below the chin


def test_dress_reaches_knees_or_ankles() -> None:
    body = standing_body()
    knee = B.garment_mask(body, "dress", (800, 400), "knee")
    ankle = B.garment_mask(body, "dress", (800, 400))
    assert knee[250, 200] == 1 and knee[540, 200] == 1 and knee[700, 235] == 0
    assert ankle[700, 235] == 1 and ankle.sum() > knee.sum()
    with pytest.raises(ValueError, match="dress_length"):
        B.garment_mask(body, "dress", (800, 400), "floor")


def test_scaled_picture_gives_the_scaled_mask() -> None:
    small, big = standing_body(), standing_body()
    big.points = small.points * 2
    big.segmentation = np.kron(small.segmentation, np.ones((2, 2), np.float32))
    a = B.garment_mask(small, "upper", (800, 400))
    b = B.garment_mask(big, "upper", (1600, 800))
    assert abs(b.mean() - a.mean()) < 0.01  # the rules scale with the body, not the pixels
