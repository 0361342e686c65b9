"""Weight-free makeup (engine builtin, task makeup) on real faces: the scikit-image astronaut as the
target, and as the reference another crop and scale of her with magenta lipstick painted on (its
landmarks are found afresh, so the transfer really goes through two meshes and a warp)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data as skimage_data

from editflow.engines import EditRequest, EngineError, get_engine_class
from editflow.engines.base import composite_unmasked
from editflow.engines.makeup import BuiltinMakeupEngine, FaceCache, makeup_start, prepare_face, warp_to_target
from editflow.masks.face import FaceLandmarker, NoFaceError, part_masks


def lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def painted_lips(image: np.ndarray, landmarker: FaceLandmarker) -> tuple[np.ndarray, np.ndarray]:
    """`image` with magenta lipstick on its lips, and the lips mask."""
    lips = part_masks(landmarker.detect(image)[0], image.shape[:2])["lips"].astype(bool)
    lips = cv2.dilate(lips.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    values = lab(image)
    inside = values[lips]
    inside[:, 0] *= 0.8
    inside[:, 1] = 55 + 0.5 * (inside[:, 1] - inside[:, 1].mean())
    inside[:, 2] = -30 + 0.5 * (inside[:, 2] - inside[:, 2].mean())
    values[lips] = inside
    rgb = np.clip(np.rint(cv2.cvtColor(values, cv2.COLOR_LAB2RGB) * 255), 0, 255).astype(np.uint8)
    return rgb, lips


@pytest.fixture(scope="module")
def faces() -> dict:
    from editflow.masks.auto import AutoMasker, MaskContext
    from editflow.masks.spec import parse_mask_spec

    photo = skimage_data.astronaut()
    target = cv2.resize(photo[0:320, 90:410], (256, 256), interpolation=cv2.INTER_AREA)
    landmarker = FaceLandmarker()
    reference, ref_lips = painted_lips(cv2.resize(photo[20:260, 130:370], (224, 224), interpolation=cv2.INTER_AREA),
                                       landmarker)
    masker = AutoMasker()
    context = MaskContext(image_key="astronaut-face")
    masks = {spec: masker.make(parse_mask_spec(spec), target, context)
             for spec in ("face:lips+eyes+brows", "face:lips", "face:skin")}
    masker.close()
    engine = get_engine_class("builtin", "makeup")()

    def run(engine=engine, **kwargs):
        fields = dict(id="m", task="makeup", image=target, mask=masks["face:lips+eyes+brows"], seed=3,
                      reference=reference, reference_key="magenta", image_key="astronaut-face")
        fields.update(kwargs)
        result = engine.edit_batch([EditRequest(**fields)])[0]
        if isinstance(result, Exception):
            raise result
        return composite_unmasked(target, result.image, fields["mask"]), result

    out, result = run()
    yield dict(target=target, reference=reference, ref_lips=ref_lips, masks=masks, engine=engine, run=run,
               out=out, result=result, landmarker=landmarker)
    landmarker.close()


def lip_distance(image: np.ndarray, faces: dict) -> float:
    """Distance of the mean (a, b) inside the target's lips to the reference lipstick's mean (a, b)."""
    lipstick = lab(faces["reference"])[faces["ref_lips"]][:, 1:].mean(axis=0)
    return float(np.linalg.norm(lab(image)[faces["masks"]["face:lips"] > 0][:, 1:].mean(axis=0) - lipstick))


def test_registered_for_the_makeup_task() -> None:
    assert get_engine_class("builtin", "makeup") is BuiltinMakeupEngine


def test_lips_take_the_reference_colour(faces) -> None:
    before, after = lip_distance(faces["target"], faces), lip_distance(faces["out"], faces)
    assert before > 40 and after < 0.2 * before, (before, after)  # measured: 59.0 -> 2.8 (the start alone: 0.2)


def test_skin_outside_the_masks_is_unchanged(faces) -> None:
    edit = faces["masks"]["face:lips+eyes+brows"] > 0
    same = faces["out"] == faces["target"]
    assert same[~edit].all()
    skin = (faces["masks"]["face:skin"] > 0) & ~edit
    assert skin.sum() > 3000 and same[skin].all()
    # the eyes and brows are made up too, but stay eyes and brows: close to the target there
    eyes_brows = edit & ~(faces["masks"]["face:lips"] > 0)
    diff = np.abs(faces["out"].astype(int) - faces["target"].astype(int))[eyes_brows]
    assert diff.mean() < 20


def test_makeup_start_is_the_public_same_start(faces) -> None:
    start = makeup_start(faces["target"], faces["reference"], ("lips",), landmarker=faces["landmarker"])
    lips = faces["masks"]["face:lips"] > 0
    assert (start[~lips] == faces["target"][~lips]).all()  # only the lips move
    assert lip_distance(start, faces) < 5
    # a prepared reference face (what the engines cache) gives the same start
    ref = prepare_face(faces["reference"], faces["landmarker"], what="reference image")
    again = makeup_start(faces["target"], faces["reference"], "lips", reference_face=ref,
                         landmarker=faces["landmarker"])
    np.testing.assert_array_equal(again, start)


def test_mesh_warp_of_a_face_onto_itself_is_the_identity(faces) -> None:
    face = prepare_face(faces["target"], faces["landmarker"])
    warped, valid = warp_to_target(faces["target"], face.face.points, face.face.points, face.shape)
    assert valid.sum() > 5000
    assert np.abs(warped[valid].astype(int) - faces["target"][valid].astype(int)).max() <= 1


def test_same_seed_same_bytes_and_the_reference_cache(faces) -> None:
    assert faces["result"].reference_cached is False
    again, result = faces["run"]()
    assert result.reference_cached is True
    np.testing.assert_array_equal(again, faces["out"])
    uncached = get_engine_class("builtin", "makeup")(cache=False)
    out, result = faces["run"](engine=uncached)
    assert result.reference_cached is False
    np.testing.assert_array_equal(out, faces["out"])
    assert len(uncached.references) == 0 and uncached.references.misses == 1


def test_face_cache_keys_by_content_hash(faces) -> None:
    cache = FaceCache(size=1)
    first, hit = cache.get("a", faces["reference"], faces["landmarker"], what="reference image")
    assert not hit and cache.get("a", faces["reference"], faces["landmarker"])[1]
    cache.get("b", faces["target"], faces["landmarker"])
    assert len(cache) == 1 and not cache.get("a", faces["reference"], faces["landmarker"])[1]


def test_row_errors(faces) -> None:
    engine = faces["engine"]
    mask = faces["masks"]["face:lips+eyes+brows"]
    base = dict(id="e", task="makeup", image=faces["target"], mask=mask, seed=1)
    no_face = skimage_data.coffee()[::2, ::2].copy()
    results = engine.edit_batch([
        EditRequest(**base, reference=no_face, reference_key="coffee"),
        EditRequest(**base),
        EditRequest(**base, reference=faces["reference"], params={"parts": "lips+nose"}),
        EditRequest(**{**base, "image": no_face, "mask": np.ones(no_face.shape[:2], np.float32)},
                    reference=faces["reference"]),
    ])
    assert isinstance(results[0], NoFaceError) and str(results[0]) == "no face found in the reference image"
    assert isinstance(results[1], EngineError) and "needs a reference" in str(results[1])
    assert isinstance(results[2], EngineError) and "parts" in str(results[2])
    assert isinstance(results[3], NoFaceError) and str(results[3]) == "no face found in the image"


def test_tryon_and_makeup_rows_through_the_local_runner(faces, tmp_path) -> None:
    import pyarrow.parquet as pq
    from PIL import Image

    from editflow.config import RunConfig
    from editflow.manifest import read_manifest
    from editflow.runners.driver import run_manifest
    from tests.conftest import write_jsonl
    from tests.test_engine_tryon_builtin import checked_tshirt

    Image.fromarray(faces["target"]).save(tmp_path / "face.png")
    Image.fromarray(faces["reference"]).save(tmp_path / "lipstick.png")
    Image.fromarray(checked_tshirt(128)[0]).save(tmp_path / "tshirt.png")
    Image.fromarray(skimage_data.coffee()[::4, ::4].copy()).save(tmp_path / "coffee.png")
    makeup = {"task": "makeup", "seed": 7, "image": "face.png", "reference": "lipstick.png", "mask": "auto"}
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "makeup", **makeup},
        {"id": "makeup-again", **makeup},
        {"id": "tryon", "task": "tryon", "image": "face.png", "reference": "tshirt.png", "category": "upper",
         "mask": "auto"},
        {"id": "no-face-ref", **makeup, "reference": "coffee.png"},
    ])
    out = tmp_path / "out"
    summary = run_manifest(read_manifest(manifest), RunConfig(out_dir=str(out), base_dir=str(tmp_path)),
                           executor="local", progress=False)
    rows = {r["id"]: r for p in sorted((out / "results").glob("*.parquet")) for r in pq.read_table(p).to_pylist()}
    assert summary["exit_code"] == 2
    for key in ("makeup", "makeup-again", "tryon"):
        assert rows[key]["status"] == "ok", rows[key]["error_message"]
        assert rows[key]["unmasked_max_diff"] == 0 and rows[key]["engine"] == "builtin"
    assert rows["makeup"]["mask_spec"] == "face:lips+eyes+brows" and rows["tryon"]["mask_spec"] == "garment:upper"
    assert [rows["makeup"]["reference_cached"], rows["makeup-again"]["reference_cached"]] == [False, True]
    made_up = np.asarray(Image.open(out / rows["makeup"]["output"]))
    np.testing.assert_array_equal(np.asarray(Image.open(out / rows["makeup-again"]["output"])), made_up)
    assert lip_distance(made_up, faces) < 0.2 * lip_distance(faces["target"], faces)
    bad = rows["no-face-ref"]
    assert (bad["status"], bad["error_stage"]) == ("error", "edit")
    assert bad["error_message"] == "no face found in the reference image"


def painted_eyes(image: np.ndarray, landmarker: FaceLandmarker) -> np.ndarray:
    """`image` with blue eyeshadow, black liner on the lash line, and green eyeballs — a reference
    whose eye colours would show up on the target's eyeballs if any region reached them."""
    parts = part_masks(landmarker.detect(image)[0], image.shape[:2])
    values = lab(image)
    shadow = parts["eyeshadow"].astype(bool)
    values[shadow, 1:] = (5.0, -45.0)
    liner = parts["eyes"].astype(bool)
    values[liner, 0] *= 0.25
    eyeball = parts["eye_opening"].astype(bool)
    values[eyeball, 1:] = (-60.0, 40.0)
    return np.clip(np.rint(cv2.cvtColor(values, cv2.COLOR_LAB2RGB) * 255), 0, 255).astype(np.uint8)


def test_eyeshadow_and_lips_move_but_the_eyeballs_do_not(faces) -> None:
    reference = painted_eyes(faces["reference"], faces["landmarker"])
    target = prepare_face(faces["target"], faces["landmarker"])
    whole_face = target.parts["face"].astype(np.float32)  # a mask that holds the eye openings
    out, _ = faces["run"](mask=whole_face, reference=reference, reference_key="blue-shadow",
                          params={"parts": "lips+eyes+eyeshadow"})
    eyeball = target.parts["eye_opening"]
    assert eyeball.sum() > 40 and target.parts["iris"].sum() > 10
    np.testing.assert_array_equal(out[eyeball], faces["target"][eyeball])  # not a pixel of the eyeballs
    shadow = target.parts["eyeshadow"]
    blue = np.array([5.0, -45.0])
    before = np.linalg.norm(lab(faces["target"])[shadow][:, 1:].mean(axis=0) - blue)
    after = np.linalg.norm(lab(out)[shadow][:, 1:].mean(axis=0) - blue)
    assert after < 0.5 * before, (before, after)
    assert lip_distance(out, faces) < 0.3 * lip_distance(faces["target"], faces)
    liner = target.parts["eyes"]
    assert lab(out)[liner][:, 0].mean() < lab(faces["target"])[liner][:, 0].mean() - 5  # darker lash line


def test_makeup_start_leaves_the_eyeballs_exact(faces) -> None:
    reference = painted_eyes(faces["reference"], faces["landmarker"])
    start = makeup_start(faces["target"], reference, "skin+eyeshadow+brows+eyes+lips",
                         landmarker=faces["landmarker"])
    eyeball = prepare_face(faces["target"], faces["landmarker"]).parts["eye_opening"]
    np.testing.assert_array_equal(start[eyeball], faces["target"][eyeball])
