"""The `sd` makeup engine on tiny random-weight checkpoints (offline, CPU): the builtin makeup's
colour-transfer start, masked latent SDEdit, an IP-Adapter (safetensors + tiny CLIP image encoder
from temp folders) on the reference face crop; real faces from scikit-image's astronaut photo."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from editflow.engines import EditRequest, get_engine_class
from editflow.engines.base import EngineError, composite_unmasked, unmasked_max_diff
from tests.conftest import textured_image

from skimage import data as skimage_data  # noqa: E402  (dev extra; public-domain photos)

_ENGINES: dict = {}


@pytest.fixture(scope="module")
def faces():
    """Two face photos (the astronaut and its mirror image, 256 px), the lips+eyes+brows mask of the first."""
    from editflow.masks.auto import AutoMasker, MaskContext
    from editflow.masks.spec import parse_mask_spec

    face = cv2.resize(skimage_data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    mirror = np.ascontiguousarray(face[:, ::-1])
    masker = AutoMasker()
    mask = masker.make(parse_mask_spec("face:lips+eyes+brows"), face, MaskContext(image_key="astro256"))
    masker.close()
    assert mask.any()
    return {"image": face, "reference": mirror, "mask": mask.astype(np.float32)}


@pytest.fixture
def engine(tiny_models, tiny_ip_adapter):
    def get(name: str = "sd-inpaint", **options):
        key = (name, tuple(sorted(options.items())))
        if key not in _ENGINES:
            _ENGINES[key] = get_engine_class("sd", "makeup").from_pretrained(model=str(tiny_models[name]), device="cpu",
                                                             ip_adapter=str(tiny_ip_adapter), **options)
        return _ENGINES[key]

    return get


def makeup(faces, rid: str = "m", seed: int = 4, key: str | None = "ref-1", **kw) -> EditRequest:
    kw.setdefault("steps", 4)
    kw.setdefault("image_key", "astro256")
    return EditRequest(id=rid, task="makeup", image=faces["image"], mask=faces["mask"], seed=seed,
                       reference=faces["reference"], reference_key=key, **kw)


def ok(results):
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


def test_makeup_keeps_identity_outside_the_mask_and_caches_the_reference(engine, faces):
    e = engine()
    a, b = ok(e.edit_batch([makeup(faces, "a"), makeup(faces, "b", seed=5)]))
    image, mask = faces["image"], faces["mask"]
    for r in (a, b):
        assert r.image.shape == image.shape and r.image.dtype == np.uint8
        out = composite_unmasked(image, r.image, mask)
        assert unmasked_max_diff(image, out, mask) == 0
        assert np.any(out[mask > 0] != image[mask > 0])
        assert r.strength == 0.5 and r.nfe == 2 and r.guidance_scale == 5.0
        assert (r.proc_width, r.proc_height) == (64, 64)  # the aligned face crop at the model's resolution
        assert "ip-adapter" in r.adapter and "controlnet" not in r.adapter
    assert (a.reference_cached, b.reference_cached) == (False, True)


def test_makeup_is_deterministic_alone_or_in_a_batch(engine, faces):
    e = engine()
    (alone,) = ok(e.edit_batch([makeup(faces, "x", seed=8)]))
    other = makeup(faces, "y", seed=9, params={"ip_adapter_scale": 0.7, "parts": "lips"})
    batch = ok(e.edit_batch([other, makeup(faces, "x", seed=8)]))
    assert np.array_equal(alone.image, batch[1].image)


def test_the_colour_transfer_start_and_the_face_crop_reach_the_sampler(engine, faces, monkeypatch):
    e = engine()
    (with_start,) = ok(e.edit_batch([makeup(faces, "s", seed=2)]))
    original = e.start

    def no_transfer(request):
        _, crop, key = original(request)
        return request.image.copy(), crop, key

    monkeypatch.setattr(e, "start", no_transfer)
    (without,) = ok(e.edit_batch([makeup(faces, "s", seed=2)]))
    assert not np.array_equal(with_start.image, without.image)
    crop = original(makeup(faces))[1]
    assert crop.shape == (256, 256, 3)  # the reference's makeup regions, aligned


def test_bad_references_are_row_errors(engine, faces):
    e = engine()
    no_face = dataclasses.replace(makeup(faces, "nf", key="flat"), reference=textured_image(96, 96, seed=3))
    missing = dataclasses.replace(makeup(faces, "nr"), reference=None)
    results = e.edit_batch([no_face, makeup(faces, "ok"), missing])
    assert isinstance(results[0], Exception) and "no face" in str(results[0]) and "reference" in str(results[0])
    assert isinstance(results[2], EngineError) and "reference" in str(results[2])
    assert results[1].image.shape == faces["image"].shape


def test_makeup_on_a_four_channel_model(engine, faces):
    (r,) = ok(engine("sd").edit_batch([makeup(faces, "four", strength=0.75)]))
    out = composite_unmasked(faces["image"], r.image, faces["mask"])
    assert unmasked_max_diff(faces["image"], out, faces["mask"]) == 0 and r.nfe == 3


def eye_opening(faces):
    from editflow.masks.face import FaceLandmarker, part_masks

    landmarker = FaceLandmarker()
    try:
        face = landmarker.detect(faces["image"])[0]
    finally:
        landmarker.close()
    return face, part_masks(face, faces["image"].shape[:2])


def test_eye_openings_are_never_repainted(engine, faces):
    """The row's mask covers the eyes (face:lips+eyes+brows, and here the whole face box): the
    eyeballs and irises keep their exact pixels; lips change."""
    face, parts = eye_opening(faces)
    opening = parts["eye_opening"] > 0
    assert opening.sum() > 20
    box = faces["mask"].copy()
    x0, y0, x1, y1 = (int(v) for v in face.box)
    box[y0:y1, x0:x1] = 1  # a mask that includes the eye openings outright
    e = engine()
    for mask in (faces["mask"], box):
        request = dataclasses.replace(makeup(faces, "eyes", seed=6), mask=mask)
        (r,) = ok(e.edit_batch([request]))
        out = composite_unmasked(faces["image"], r.image, mask)
        assert np.array_equal(out[opening], faces["image"][opening])
        assert np.any(out[parts["lips"] > 0] != faces["image"][parts["lips"] > 0])


def test_the_unet_sees_an_upscaled_aligned_crop(engine, faces):
    """The face box is ~90 px in the 256 px photo: with face_size 128 the UNet gets 64x64 latents
    (tiny VAE, factor 2): the crop was upscaled; the eye line is level in the crop."""
    from editflow.engines.aligned import eye_centres

    face, _ = eye_opening(faces)
    x0, y0, x1, y1 = face.box
    assert max(x1 - x0, y1 - y0) * 1.5 < 128
    e = engine()
    shapes = []
    handle = e.pipe.unet.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    try:
        (r,) = ok(e.edit_batch([makeup(faces, "up", params={"face_size": 128})]))
    finally:
        handle.remove()
    assert set(s[-2:] for s in shapes) == {(64, 64)} and (r.proc_width, r.proc_height) == (128, 128)
    job = e._prepare(0, makeup(faces, "up", params={"face_size": 128}))
    left, right = (job.plan.points(p[None])[0] for p in eye_centres(face.points))
    assert abs(left[1] - right[1]) < 1e-6 and right[0] - left[0] > 20


@pytest.fixture(scope="module")
def tiny_controlnet(tiny_models, tmp_path_factory):
    """ControlNetModel.from_unet on the tiny 4-channel SD UNet, saved and loaded back by path."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd"], subfolder="unet")
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # ControlNet starts with zero convolutions (no effect): give them trained-like weights
        for p in net.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    folder = tmp_path_factory.mktemp("controlnet") / "face-mesh-controlnet"
    net.save_pretrained(folder, safe_serialization=True)
    return folder


def test_face_landmark_controlnet_conditions_every_unet_call(engine, faces, tiny_controlnet):
    e = engine()
    calls = {"unet": 0, "controlnet": []}
    request = makeup(faces, "cn", params={"controlnet": str(tiny_controlnet), "controlnet_scale": 0.8})
    (plain,) = ok(e.edit_batch([makeup(faces, "cn")]))
    unet_hook = e.pipe.unet.register_forward_pre_hook(lambda *_: calls.__setitem__("unet", calls["unet"] + 1))
    net = e.controlnet(str(tiny_controlnet))
    net_hook = net.register_forward_pre_hook(
        lambda _m, _a, kw: calls["controlnet"].append(kw["controlnet_cond"].detach().clone()), with_kwargs=True)
    try:
        (r,) = ok(e.edit_batch([request]))
    finally:
        unet_hook.remove()
        net_hook.remove()
    assert calls["unet"] == r.nfe == 2 and len(calls["controlnet"]) == 2
    cond = calls["controlnet"][0]
    assert tuple(cond.shape) == (2, 3, 64, 64) and torch.equal(cond[0], cond[1])  # [uncond, cond] share it
    # the condition is our face mesh drawn in the crop: lines on black, over the face, with the eyes on it
    from editflow.engines.controlnet import draw_face_mesh

    job = e._prepare(0, request)
    points = job.plan.points(eye_opening(faces)[0].points)
    drawing = draw_face_mesh(points, 64)
    assert torch.allclose(cond[0], torch.from_numpy(drawing).permute(2, 0, 1).float() / 255)
    lit = drawing.max(axis=2) > 0
    assert 0.05 < lit.mean() < 0.9
    for x, y in np.round(points[[33, 263, 13]]).astype(int):  # eye corners, upper lip: drawn
        assert lit[max(0, y - 1):y + 2, max(0, x - 1):x + 2].any()
    assert not lit[:3].any() or not lit[-3:].any()  # the margins around the face stay black
    assert "controlnet" in r.adapter and str(tiny_controlnet) in r.adapter
    assert not np.array_equal(r.image, plain.image)
    out = composite_unmasked(faces["image"], r.image, faces["mask"])
    assert unmasked_max_diff(faces["image"], out, faces["mask"]) == 0
