"""Diffusers try-on engines on tiny random-weight checkpoints, offline, CPU: `sd-ipadapter` (SD
inpainting + an IP-Adapter saved as safetensors with a tiny CLIP image encoder, loaded through
editflow's loader) and `concat` (CatVTON-style side-by-side latents + a self-attention checkpoint),
both constructed through the engine registry from temp folders."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from editflow import cli
from editflow.engines import EditRequest, get_engine_class
from editflow.engines.base import EngineError, composite_unmasked, unmasked_max_diff
from editflow.models import ModelNotAvailableError
from tests.conftest import textured_image, write_image, write_jsonl
from tests.test_run_local import all_result_rows

PERSON = textured_image(64, 56, seed=21)  # 64 wide, 56 high: within the tiny models' 64 px
OTHER = textured_image(64, 56, seed=22)
GARMENT = textured_image(40, 56, seed=23)
GARMENT_2 = textured_image(48, 48, seed=24)[..., ::-1].copy()
MASK = np.zeros((56, 64), np.float32)
MASK[14:46, 12:52] = 1

_ENGINES: dict = {}


def engine(name: str, model, **options):
    key = (name, str(model), tuple(sorted(options.items())))
    if key not in _ENGINES:
        _ENGINES[key] = get_engine_class(name, "tryon").from_pretrained(model=str(model), device="cpu", **options)
    return _ENGINES[key]


def tryon(rid: str = "r", image=PERSON, garment=GARMENT, seed: int = 5, key: str | None = "g1", **kw) -> EditRequest:
    kw.setdefault("steps", 3)
    kw.setdefault("category", "upper")
    return EditRequest(id=rid, task="tryon", image=image, mask=MASK, seed=seed, reference=garment,
                       reference_key=key, **kw)


def ok(results):
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


@pytest.fixture(scope="module")
def attention_ckpt(tiny_models, tmp_path_factory):
    from diffusers import UNet2DConditionModel

    from tests.tiny_models import save_attention_checkpoint

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd-inpaint"], subfolder="unet")
    folder = tmp_path_factory.mktemp("attn")
    return {"names": save_attention_checkpoint(unet, folder / "attention.safetensors", noise=0.3),
            "prefixed": save_attention_checkpoint(unet, folder / "prefixed.safetensors", prefix="unet."),
            "unet": unet, "folder": folder}


@pytest.fixture
def ipa(tiny_models, tiny_ip_adapter):
    return engine("sd-ipadapter", tiny_models["sd-inpaint"], ip_adapter=str(tiny_ip_adapter))


@pytest.fixture
def concat(tiny_models, attention_ckpt):
    return engine("concat", tiny_models["sd-inpaint"], attention=str(attention_ckpt["names"]))


def test_registry_names_the_classes():
    from editflow.engines.makeup_sd import SDMakeupEngine
    from editflow.engines.sd import SDEngine
    from editflow.engines.tryon_sd import ConcatTryOnEngine, SDIPAdapterTryOnEngine

    assert get_engine_class("sd-ipadapter", "tryon") is SDIPAdapterTryOnEngine
    assert get_engine_class("concat", "tryon") is ConcatTryOnEngine
    assert get_engine_class("sd", "makeup") is SDMakeupEngine
    assert get_engine_class("sd", "inpaint") is SDEngine


# -- sd-ipadapter -------------------------------------------------------------------------------


def test_ipadapter_paste_back_size_and_garment_cache(ipa):
    first, second = ok(ipa.edit_batch([tryon("a"), tryon("b", image=OTHER, seed=6)]))
    for r, image in ((first, PERSON), (second, OTHER)):
        assert r.image.shape == image.shape and r.image.dtype == np.uint8
        out = composite_unmasked(image, r.image, MASK)
        assert unmasked_max_diff(image, out, MASK) == 0
        assert np.any(out[MASK > 0] != image[MASK > 0])
        assert r.nfe == 3 and r.strength == 1.0 and r.guidance_scale == 7.5 and (r.proc_width, r.proc_height) == (64, 56)
    # the garment is encoded once per worker: the second row (same reference_key) hits the cache
    assert (first.reference_cached, second.reference_cached) == (False, True)
    (again,) = ok(ipa.edit_batch([tryon("c", seed=7)]))
    assert again.reference_cached is True


def test_ipadapter_is_deterministic_alone_or_in_a_batch(ipa):
    (alone,) = ok(ipa.edit_batch([tryon("x", seed=11, key="g-det")]))
    batch = ok(ipa.edit_batch([tryon("y", image=OTHER, seed=12, garment=GARMENT_2, key="g2-det"),
                               tryon("x", seed=11, key="g-det")]))
    assert np.array_equal(alone.image, batch[1].image)


def test_the_garment_image_conditions_the_result(ipa):
    a, b = ok(ipa.edit_batch([tryon("a", seed=3, key="ga"), tryon("b", seed=3, garment=GARMENT_2, key="gb")]))
    assert not np.array_equal(a.image, b.image)
    (zero,) = ok(ipa.edit_batch([tryon("z", seed=3, key="ga", params={"ip_adapter_scale": 0.0})]))
    assert not np.array_equal(zero.image, a.image)  # the scale reaches the UNet's IP-Adapter layers


def test_cache_off_encodes_every_row(tiny_models, tiny_ip_adapter):
    e = engine("sd-ipadapter", tiny_models["sd-inpaint"], ip_adapter=str(tiny_ip_adapter), cache=False)
    rs = ok(e.edit_batch([tryon("a"), tryon("b")]))
    assert [r.reference_cached for r in rs] == [False, False]


def test_ipadapter_on_a_four_channel_model_and_params_spec(tiny_models, tiny_ip_adapter):
    """IP-Adapter spec given per row (params) rather than as an engine option; a 4-channel SD model."""
    e = engine("sd-ipadapter", tiny_models["sd"])
    params = {"ip_adapter": str(tiny_ip_adapter / "models" / "ip-adapter_sd15.safetensors"), "ip_adapter_scale": 0.5}
    (r,) = ok(e.edit_batch([tryon("a", params=params, category="dress", prompt="a red dress")]))
    out = composite_unmasked(PERSON, r.image, MASK)
    assert unmasked_max_diff(PERSON, out, MASK) == 0 and np.any(out[MASK > 0] != PERSON[MASK > 0])


def test_bad_rows_are_row_errors(ipa):
    no_category = tryon("c", category=None)
    no_reference = dataclasses.replace(tryon("r"), reference=None)
    results = ipa.edit_batch([no_category, tryon("ok"), no_reference])
    assert isinstance(results[0], EngineError) and "tryon needs a category (upper, lower, dress)" in str(results[0])
    assert isinstance(results[2], EngineError) and "garment" in str(results[2])
    assert results[1].image.shape == PERSON.shape


def test_missing_ip_adapter_names_the_download(tiny_models, empty_hub_cache):
    e = get_engine_class("sd-ipadapter", "tryon").from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu")
    (r,) = e.edit_batch([tryon("a")])
    assert isinstance(r, ModelNotAvailableError)
    assert "hf download h94/IP-Adapter models/ip-adapter_sd15.safetensors" in str(r)
    assert str(empty_hub_cache) in str(r)


def test_an_adapter_for_another_base_model_is_refused(tiny_models, tiny_ip_adapter, tmp_path):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from tests.tiny_models import tiny_ip_adapter_state_dict

    xl = UNet2DConditionModel.from_pretrained(tiny_models["sdxl-inpaint"], subfolder="unet")  # cross-attention 64
    path = tmp_path / "ip-adapter_xl.safetensors"
    save_file(tiny_ip_adapter_state_dict(xl), str(path))
    e = engine("sd-ipadapter", tiny_models["sd-inpaint"])
    params = {"ip_adapter": str(path), "image_encoder": str(tiny_ip_adapter / "models" / "image_encoder")}
    (r,) = e.edit_batch([tryon("a", params=params)])
    assert isinstance(r, EngineError) and "cross-attention takes 32" in str(r) and "ip-adapter_sd15" in str(r)


# -- concat -------------------------------------------------------------------------------------


def test_concat_paste_back_cache_and_determinism(concat):
    a, b = ok(concat.edit_batch([tryon("a", seed=1, key="c1"), tryon("b", image=OTHER, seed=2, key="c1")]))
    for r, image in ((a, PERSON), (b, OTHER)):
        assert r.image.shape == image.shape
        out = composite_unmasked(image, r.image, MASK)
        assert unmasked_max_diff(image, out, MASK) == 0 and np.any(out[MASK > 0] != image[MASK > 0])
        assert r.guidance_scale == 2.5 and r.nfe == 3
    assert (a.reference_cached, b.reference_cached) == (False, True)
    (alone,) = ok(concat.edit_batch([tryon("b", image=OTHER, seed=2, key="c1")]))
    assert np.array_equal(alone.image, b.image)


def test_concat_side_by_side_latents(concat):
    """The denoiser works on [person | garment] latents and decodes the person half only."""
    from editflow.engines.tryon_sd import ConcatDenoiser, garment_window

    garment = concat.base.encode(garment_window(GARMENT, 56, 64))
    d = ConcatDenoiser(concat.base, garment, concat.cross_attention_dim)
    person = torch.from_numpy(PERSON).permute(2, 0, 1)[None].float() / 127.5 - 1
    mask = torch.from_numpy(MASK)[None, None]
    z = d.encode(person)
    assert tuple(z.shape) == (1, 4, 28, 64)  # tiny VAE: factor 2; 32 + 32 latent columns
    assert torch.equal(z[..., 32:], garment)
    m = d.mask_to_space(mask)
    assert tuple(m.shape) == (1, 1, 28, 64) and m[..., 32:].sum() == 0 and m[..., :32].sum() > 0
    c = d.condition(person, mask, 2.5)
    assert torch.equal(c.masked_latents[..., 32:], garment) and c.uncond_latents[..., 32:].abs().sum() == 0
    assert tuple(d.decode(z).shape) == (1, 3, 56, 64)
    assert tuple(d.predict(z, torch.tensor([500]), torch.tensor([0.5]), c).shape) == (1, 4, 28, 64)


def test_concat_attention_checkpoint_is_applied(tiny_models, attention_ckpt, concat):
    from safetensors.torch import load_file

    from editflow.engines.tryon_sd import attention_parameters

    concat.set_attention(str(attention_ckpt["names"]))
    saved = load_file(str(attention_ckpt["names"]))
    params = attention_parameters(concat.unet)
    assert set(saved) == set(params) and all(torch.equal(params[k], v) for k, v in saved.items())
    (trained,) = ok(concat.edit_batch([tryon("a", seed=9)]))
    (base,) = ok(concat.edit_batch([tryon("a", seed=9, params={"attention": "none"})]))
    assert not np.array_equal(trained.image, base.image)
    original = dict(attention_ckpt["unet"].named_parameters())
    assert all(torch.equal(p, original[k]) for k, p in attention_parameters(concat.unet).items())  # restored
    (prefixed,) = ok(concat.edit_batch([tryon("a", seed=9, params={"attention": str(attention_ckpt["prefixed"])})]))
    assert prefixed.image.shape == PERSON.shape


def test_concat_indexed_attention_keys(attention_ckpt):
    from safetensors.torch import save_file

    from editflow.engines.tryon_sd import load_attention_weights

    unet = attention_ckpt["unet"]
    modules = [(n, m) for n, m in unet.named_modules() if "attn1" in n]
    name, module = modules[0]
    value = torch.full_like(module.to_q.weight, 0.25)
    path = attention_ckpt["folder"] / "indexed.safetensors"
    save_file({"0.to_q.weight": value}, str(path))
    before = module.to_q.weight.detach().clone()
    try:
        assert load_attention_weights(unet, path) == 1
        assert torch.equal(module.to_q.weight, value)
    finally:
        with torch.no_grad():
            module.to_q.weight.copy_(before)


def test_concat_refuses_foreign_attention_keys(tiny_models, attention_ckpt, concat):
    from safetensors.torch import save_file

    path = attention_ckpt["folder"] / "cross.safetensors"
    unet = attention_ckpt["unet"]
    save_file({k: v.detach().clone() for k, v in unet.named_parameters() if ".attn2.to_k." in k}, str(path))
    (r,) = concat.edit_batch([tryon("a", params={"attention": str(path)})])
    assert isinstance(r, EngineError) and "do not match" in str(r) and "attn2" in str(r)
    (missing,) = concat.edit_batch([tryon("a", params={"attention": str(path) + ".nope"})])
    assert isinstance(missing, ModelNotAvailableError)


def test_concat_needs_attention_weights_and_an_inpainting_unet(tiny_models):
    e = engine("concat", tiny_models["sd-inpaint"])
    (r,) = e.edit_batch([tryon("a")])
    assert isinstance(r, EngineError) and "params.attention" in str(r)
    with pytest.raises(EngineError, match="9-channel"):
        get_engine_class("concat", "tryon").from_pretrained(model=str(tiny_models["sd"]), device="cpu")


# -- through `editflow run` ---------------------------------------------------------------------


def test_tryon_rows_through_a_local_run(tmp_path, tiny_models, tiny_ip_adapter, attention_ckpt):
    """Manifest rows -> prepare (reference hash) -> edit (engines by name) -> results with cache hits;
    a row naming a missing garment file is an error row."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "p0.png", PERSON)
    write_image(folder / "p1.png", OTHER)
    write_image(folder / "shirt.png", GARMENT)
    model = str(tiny_models["sd-inpaint"])
    base = {"task": "tryon", "mask": "box:12,14,52,46", "reference": "shirt.png", "category": "upper", "steps": 2,
            "model": model}
    ip = {"engine": "sd-ipadapter", "params": {"ip_adapter": str(tiny_ip_adapter)}}
    cat = {"engine": "concat", "params": {"attention": str(attention_ckpt["names"])}}
    rows = [
        {"id": "ip-0", "image": "p0.png", **base, **ip}, {"id": "ip-1", "image": "p1.png", **base, **ip},
        {"id": "cat-0", "image": "p0.png", **base, **cat}, {"id": "cat-1", "image": "p1.png", **base, **cat},
        {"id": "no-garment", "image": "p0.png", **base, **ip, "reference": "missing.png"},
    ]
    for row in rows:
        row["params"] = json.dumps(row["params"])
    path = write_jsonl(folder / "m.jsonl", rows)
    out = tmp_path / "out"
    assert cli.main(["run", str(path), "-o", str(out), "--executor", "local", "--quiet", "--batch-size", "1"]) == 2
    got = {r["id"]: r for r in all_result_rows(out)}
    assert got["no-garment"]["status"] == "error"
    for rid in ("ip-0", "ip-1", "cat-0", "cat-1"):
        assert got[rid]["status"] == "ok", (rid, got[rid].get("error_message"))
        assert got[rid]["unmasked_max_diff"] == 0
    assert [got[r]["reference_cached"] for r in ("ip-0", "ip-1")] == [False, True]
    assert [got[r]["reference_cached"] for r in ("cat-0", "cat-1")] == [False, True]
