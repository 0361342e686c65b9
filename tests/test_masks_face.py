"""Face-part masks on the scikit-image astronaut (a real photo), checked against hand-measured boxes."""

from __future__ import annotations

import sys

import cv2

import numpy as np
import pytest

from editflow.masks.auto import AutoMasker, MaskContext
from editflow.masks.face import MaskModelError, NoFaceError, import_mediapipe
from editflow.masks.spec import parse_mask_spec

from skimage import data as skimage_data  # noqa: E402  (dev extra; real public-domain photos)

# measured by hand on a grid over the 512 x 512 photo
LIPS_BOX = (201, 138, 246, 157)  # x0, y0, x1, y1: mouth corners, top of upper lip, bottom of lower lip
TEETH = (220, 146)  # the open mouth between the lips
NOSE_TIP = (223, 124)
FACE_BOX = (180, 72, 271, 178)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def masker() -> AutoMasker:
    return AutoMasker()  # one per module: landmarks are computed once for every test below


def make(masker: AutoMasker, image: np.ndarray, spec: str, **options) -> np.ndarray:
    return masker.make(parse_mask_spec(spec), image, MaskContext(image_key="astronaut", options=options))


def inside(mask: np.ndarray, box, pad: int = 0) -> float:
    x0, y0, x1, y1 = box
    region = np.zeros_like(mask, bool)
    region[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad] = True
    return float(mask[region].sum() / max(mask.sum(), 1))


def test_lips_cover_the_lips_and_little_else(masker, astronaut) -> None:
    lips = make(masker, astronaut, "face:lips")
    assert lips.shape == astronaut.shape[:2] and lips.dtype == np.float32
    assert inside(lips, LIPS_BOX, pad=2) > 0.97  # little else
    x0, y0, x1, y1 = LIPS_BOX
    assert 0.2 < lips[y0:y1, x0:x1].mean() < 0.7  # the lips: a crescent pair, not the whole box
    assert lips[TEETH[1], TEETH[0]] == 0  # the lips, not the open mouth
    assert lips[y0:y1, x0:x1].sum() > 150


def test_skin_excludes_eyes_brows_and_lips(masker, astronaut) -> None:
    skin = make(masker, astronaut, "face:skin")
    for part in ("lips", "eyes", "brows"):
        assert not (skin * make(masker, astronaut, f"face:{part}")).any(), part
    assert skin[TEETH[1], TEETH[0]] == 0 and skin[NOSE_TIP[1], NOSE_TIP[0]] == 1
    assert inside(skin, FACE_BOX, pad=4) > 0.98
    face = make(masker, astronaut, "face:face")
    assert skin.sum() < face.sum() and not (skin > face).any()


def test_eyes_brows_eyeshadow_lie_in_the_upper_face(masker, astronaut) -> None:
    eyes, brows, shadow = (make(masker, astronaut, f"face:{p}") for p in ("eyes", "brows", "eyeshadow"))
    for mask in (eyes, brows, shadow):
        ys, xs = np.nonzero(mask)
        assert ys.size > 50 and 80 <= ys.min() and ys.max() <= 115 and 180 <= xs.min() and xs.max() <= 270
    # the brows sit above the eyes, the eyeshadow band between them, overlapping neither
    assert np.nonzero(brows)[0].mean() < np.nonzero(shadow)[0].mean() < np.nonzero(eyes)[0].mean()
    assert not (shadow * eyes).any() and not (shadow * brows).any()
    union = make(masker, astronaut, "face:eyes+brows")
    np.testing.assert_array_equal(union, np.maximum(eyes, brows))


def test_landmarks_run_once_per_image_for_all_parts(astronaut) -> None:
    masker = AutoMasker()
    for spec in ("face:lips", "face:skin", "face:eyes+brows", "face:brows+eyes", "face:lips"):
        make(masker, astronaut, spec)
    assert masker.stats["face_runs"] == 1
    assert masker.stats["mask_hits"] == 2  # brows+eyes == eyes+brows; lips again


def test_several_faces_largest_unless_asked(masker, astronaut) -> None:
    import cv2

    small = cv2.resize(astronaut, (384, 384), interpolation=cv2.INTER_AREA)[:, ::-1]  # a second, smaller face
    canvas = np.concatenate([astronaut, np.pad(small, ((0, 128), (0, 0), (0, 0)), constant_values=255)], axis=1)
    one = masker.make(parse_mask_spec("face:lips"), canvas)
    assert one[:, 512:].sum() == 0 and one[:, :512].sum() > 150  # the largest face only
    both = masker.make(parse_mask_spec("face:lips"), canvas, MaskContext(options={"face": "all"}))
    assert both[:, 512:].sum() > 20 and both[:, :512].sum() == one[:, :512].sum()
    second = masker.make(parse_mask_spec("face:lips"), canvas, MaskContext(options={"face": 1}))
    assert second[:, :512].sum() == 0 and second[:, 512:].sum() > 20


def test_no_face_is_a_clear_error() -> None:
    with pytest.raises(NoFaceError, match="no face found"):
        AutoMasker().make(parse_mask_spec("face:lips"), skimage_data.coffee())


def test_missing_mediapipe_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError
    with pytest.raises(MaskModelError, match=r"editflow\[masks\]"):
        import_mediapipe()


# the pupils, measured by hand on the photo (x, y)
PUPILS = ((203, 101), (247, 102))


def test_no_makeup_part_contains_the_eye_opening_or_iris(masker, astronaut) -> None:
    opening, iris = make(masker, astronaut, "face:eye_opening"), make(masker, astronaut, "face:iris")
    for x, y in PUPILS:
        assert iris[y, x] == 1 and opening[y, x] == 1
    assert not (iris > opening).any()  # the visible iris lies inside the opening
    assert 100 < opening.sum() < 800 and iris.sum() < opening.sum()
    for part in ("lips", "eyes", "eyeshadow", "brows", "skin"):
        assert not (make(masker, astronaut, f"face:{part}") * opening).any(), part
    # the default makeup mask leaves the eyeball alone; the lash line hugs the opening
    default = make(masker, astronaut, "face:lips+eyes+brows")
    assert not (default * opening).any()
    eyes = make(masker, astronaut, "face:eyes")
    ring = cv2.dilate(opening.astype(np.uint8), np.ones((3, 3), np.uint8)) & ~opening.astype(bool)
    assert eyes[ring.astype(bool)].mean() > 0.9  # the ring starts right at the opening's edge
    assert make(masker, astronaut, "face:face")[opening > 0].all()  # only `face` holds it
