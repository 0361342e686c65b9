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
    masks["short"] = masker.make(parse_mask_spec("garment:upper"), image,
                                 MaskContext(image_key="astronaut", options={"sleeve": "short"}))
    masks["pose_runs"] = masker.stats["pose_runs"]
    return masks


def test_upper_covers_the_suit_torso_not_the_face(astronaut_masks) -> None:
    upper = astronaut_masks["garment:upper"]
    assert upper.shape == (512, 512) and upper.dtype == np.float32
    assert cover(upper, SUIT_TORSO) > 0.9
    assert cover(upper, FACE) == 0.0
    assert cover(upper, SKY_AND_SHUTTLE) < 0.02 and cover(upper, FLAG) < 0.05


HAIR = (165, 25, 290, 70)  # the top of her hair, above the forehead
FOREARM = ((85, 432), (110, 455))  # two points on her right forearm (left in the picture), past the elbow


def test_upper_leaves_her_hair_and_short_sleeves_her_forearm(astronaut_masks) -> None:
    upper, short, person = (astronaut_masks[k] for k in ("garment:upper", "short", "person"))
    assert cover(person, HAIR) > 0.8 and cover(upper, HAIR) == 0.0
    for x, y in FOREARM:
        assert upper[y, x] == 1 and short[y, x] == 0
    assert cover(short, SUIT_TORSO) > 0.85 and short.sum() < upper.sum()  # the box holds some forearm


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


# A drawn person with known regions (colours) on the standing_body skeleton: long hair hanging in
# front of the shoulders, a shirt with blue sleeves to the elbows, bare forearms, trousers from the
# waist, shoes. The masks get the drawing and the skeleton (no model), so every region is exact.
COLOURS = {"hair": (95, 55, 25), "skin": (225, 180, 150), "shirt": (40, 70, 200), "trousers": (90, 120, 40),
           "shoes": (20, 20, 20)}


def drawn_person() -> tuple[np.ndarray, B.Body, dict[str, np.ndarray]]:
    import cv2

    body = standing_body()
    p = body.points.astype(int)
    waist = int(np.ceil(B.waist_y(body)))  # the shirt ends above it, the trousers start there
    image = np.full((800, 400, 3), 235, np.uint8)
    layers: dict[str, np.ndarray] = {}

    def paint(name: str, draw) -> None:
        canvas = np.zeros((800, 400), np.uint8)
        draw(canvas)
        layers[name] = canvas.astype(bool)
        image[layers[name]] = COLOURS[name.split("_")[0]]

    def limb(a, b, width):
        return lambda c: cv2.line(c, tuple(map(int, a)), tuple(map(int, b)), 1, width)

    paint("hair_back", lambda c: cv2.ellipse(c, (200, 80), (48, 52), 0, 0, 360, 1, -1))
    paint("skin_face", lambda c: (cv2.ellipse(c, (200, 98), (33, 42), 0, 0, 360, 1, -1),
                                  cv2.rectangle(c, (186, 130), (214, 172), 1, -1)))
    paint("trousers", lambda c: (cv2.fillPoly(c, [np.array([(150, waist), (250, waist), (255, 560),
                                                            (145, 560)])], 1),
                                 limb(p[B.L_KNEE], p[B.L_ANKLE], 46)(c), limb(p[B.R_KNEE], p[B.R_ANKLE], 46)(c)))
    paint("shoes", lambda c: [cv2.ellipse(c, (x, 745), (24, 14), 0, 0, 360, 1, -1) for x in (242, 158)])
    paint("shirt", lambda c: (cv2.fillPoly(c, [np.array([(140, 162), (260, 162), (250, waist - 1), (150, waist - 1)])], 1),
                              limb(p[B.L_SHOULDER], p[B.L_ELBOW], 34)(c), limb(p[B.R_SHOULDER], p[B.R_ELBOW], 34)(c)))
    paint("skin_forearms", lambda c: (limb(p[B.L_ELBOW] + (0, 14), p[B.L_WRIST], 24)(c),
                                      limb(p[B.R_ELBOW] + (0, 14), p[B.R_WRIST], 24)(c)))
    paint("skin_hands", lambda c: [cv2.circle(c, (x, 405), 16, 1, -1) for x in (296, 104)])
    # long hair in front of the shoulders, down to the chest
    paint("hair_long", lambda c: [cv2.rectangle(c, (x0, 110), (x0 + 22, 262), 1, -1) for x0 in (148, 230)])
    visible = {name: layer.copy() for name, layer in layers.items()}
    order = list(layers)
    for i, name in enumerate(order):  # what is painted later covers what was painted before
        for later in order[i + 1:]:
            visible[name] &= ~layers[later]
    body.segmentation = (np.abs(image.astype(int) - 235).sum(axis=2) > 0).astype(np.float32)
    return image, body, visible


def covered(mask: np.ndarray, region: np.ndarray) -> float:
    return float(mask[region].mean())


def test_drawn_person_upper_protects_hair_trousers_and_hands() -> None:
    image, body, regions = drawn_person()
    upper = B.garment_mask(body, "upper", (800, 400), image=image)
    assert covered(upper, regions["shirt"]) > 0.95
    assert covered(upper, regions["skin_forearms"]) > 0.85  # long sleeves by default (the wrist is the hand's)
    hair = regions["hair_back"] | regions["hair_long"]
    assert covered(upper, hair) < 0.02, covered(upper, hair)  # long hair in front of the chest stays
    face = regions["skin_face"].copy()
    face[130:] = False  # the neck below is the neckline's: the new collar may sit there
    assert covered(upper, face) == 0 and covered(upper, regions["skin_hands"]) == 0
    below_hips = regions["trousers"].copy()
    below_hips[: int(body.mid(B.L_HIP, B.R_HIP)[1]) + 1] = False
    assert covered(upper, below_hips) == 0.0  # the lower garment below the hips stays
    # without the picture the hair below the neck cannot be told from the shirt: it is masked
    assert covered(B.garment_mask(body, "upper", (800, 400)), regions["hair_long"]) > 0.3


def test_drawn_person_short_sleeves_keep_the_forearms() -> None:
    image, body, regions = drawn_person()
    short = B.garment_mask(body, "upper", (800, 400), sleeve="short", image=image)
    assert covered(short, regions["shirt"]) > 0.95
    assert covered(short, regions["skin_forearms"]) < 0.1, covered(short, regions["skin_forearms"])
    with pytest.raises(ValueError, match="sleeve"):
        B.garment_mask(body, "upper", (800, 400), sleeve="none")


def test_drawn_person_lower_protects_arms_hands_and_shirt() -> None:
    image, body, regions = drawn_person()
    lower = B.garment_mask(body, "lower", (800, 400), image=image)
    assert covered(lower, regions["trousers"]) > 0.95
    assert covered(lower, regions["shirt"]) == 0.0  # starts at the waist: no shirt hem
    assert covered(lower, regions["skin_forearms"]) < 0.02 and covered(lower, regions["skin_hands"]) == 0
    assert covered(lower, regions["shoes"]) == 0 and covered(lower, regions["hair_long"]) == 0


def test_drawn_person_dress_covers_shirt_and_trousers_not_hair() -> None:
    image, body, regions = drawn_person()
    knee = B.garment_mask(body, "dress", (800, 400), "knee", image=image)
    thighs = regions["trousers"].copy()
    thighs[560:] = False
    assert covered(knee, regions["shirt"]) > 0.95 and covered(knee, thighs) > 0.95
    assert covered(knee, regions["hair_long"]) < 0.02 and covered(knee, regions["skin_hands"]) == 0
    assert knee[700:].sum() == 0  # a knee-length dress leaves the shins


def test_drawn_person_background_gaps_are_not_garment() -> None:
    """The mask stays on the person (plus a loose garment's margin), not the wall beside the arm."""
    image, body, regions = drawn_person()
    upper = B.garment_mask(body, "upper", (800, 400), image=image)
    person = body.segmentation > 0.5
    far = ~B.cv2.dilate(person.astype(np.uint8), np.ones((41, 41), np.uint8)).astype(bool)
    assert upper[far].sum() == 0


def test_hand_landmarks_protect_a_hand_on_the_chest() -> None:
    """A hand the hand landmarker found (21 points) where the pose puts none: on the belly."""
    image, body, regions = drawn_person()
    rng = np.random.default_rng(0)
    hand = np.array([200, 300], np.float32) + rng.uniform(-18, 18, (21, 2)).astype(np.float32)
    plain = B.garment_mask(body, "upper", (800, 400), image=image)
    guarded = B.garment_mask(body, "upper", (800, 400), image=image, hands=[hand])
    assert plain[300, 200] == 1 and guarded[300, 200] == 0
    assert (guarded <= plain).all() and plain.sum() - guarded.sum() > 0.8 * 36 * 36
