"""The `sd` makeup engine on tiny random-weight checkpoints (offline, CPU): the builtin makeup's
colour-transfer start, masked latent SDEdit, an IP-Adapter (safetensors + tiny CLIP image encoder
from temp folders) on the reference face crop; real faces from scikit-image's astronaut photo."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

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
        assert max(r.proc_width, r.proc_height) <= 64  # a window around the face parts at the model's size
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
    assert crop.shape[0] == crop.shape[1] and 40 <= crop.shape[0] <= 256


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
