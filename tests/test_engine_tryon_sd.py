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


def test_ipadapter_plus_is_the_default_when_present(tiny_models, tiny_ip_adapter_plus, tiny_ip_adapter):
    """A folder holding ip-adapter-plus_sd15 runs the plus adapter (Resampler over CLIP's penultimate
    patch features, loaded through diffusers' load_ip_adapter); one without it runs the plain one;
    the row records which."""
    e = engine("sd-ipadapter", tiny_models["sd-inpaint"], ip_adapter=str(tiny_ip_adapter_plus))
    shapes = []
    handle = e.pipe.unet.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["added_cond_kwargs"]["image_embeds"][0].shape)), with_kwargs=True)
    try:
        (plus,) = ok(e.edit_batch([tryon("p", key="plus-1")]))
    finally:
        handle.remove()
    assert e.adapter.kind == "plus" and "ip-adapter-plus_sd15.safetensors" in plus.adapter
    projection = e.pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert type(projection).__name__ == "IPAdapterPlusImageProjection"
    assert set(shapes) == {(2, 1, 65, 32)}  # [negative, positive] x 1 image x (64 patches + CLS) x 32
    out = composite_unmasked(PERSON, plus.image, MASK)
    assert unmasked_max_diff(PERSON, out, MASK) == 0 and np.any(out[MASK > 0] != PERSON[MASK > 0])
    # the row (or the engine) naming a weight file wins
    (named,) = ok(e.edit_batch([tryon("n", key="plus-1", params={"ip_adapter_weight": "models/ip-adapter_sd15.safetensors"})]))
    assert "models/ip-adapter_sd15.safetensors" in named.adapter and e.adapter.kind == "base"
    plain = engine("sd-ipadapter", tiny_models["sd-inpaint"], ip_adapter=str(tiny_ip_adapter))
    (r,) = ok(plain.edit_batch([tryon("q", key="plus-1")]))
    assert plain.adapter.kind == "base" and "models/ip-adapter_sd15.safetensors" in r.adapter


def test_ipadapter_plus_from_the_hub_cache(tiny_models, tiny_ip_adapter_plus, empty_hub_cache):
    """The default h94/IP-Adapter, offline: plus is chosen when the hub cache holds its file."""
    import shutil

    snapshot = empty_hub_cache / "models--h94--IP-Adapter" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_ip_adapter_plus / "models", snapshot / "models")
    (empty_hub_cache / "models--h94--IP-Adapter" / "refs").mkdir()
    (empty_hub_cache / "models--h94--IP-Adapter" / "refs" / "main").write_text("a" * 40)
    e = get_engine_class("sd-ipadapter", "tryon").from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu")
    (r,) = ok(e.edit_batch([tryon("h", steps=2)]))
    assert e.adapter.kind == "plus" and r.adapter.startswith("ip-adapter h94/IP-Adapter models/ip-adapter-plus_sd15")
    (snapshot / "models" / "ip-adapter-plus_sd15.safetensors").unlink()
    e2 = get_engine_class("sd-ipadapter", "tryon").from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu")
    (r2,) = ok(e2.edit_batch([tryon("h", steps=2)]))
    assert e2.adapter.kind == "base" and "models/ip-adapter_sd15.safetensors" in r2.adapter


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


def unet_inputs(unet):
    """Record the shape of every input the UNet's forward receives."""
    shapes = []
    handle = unet.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    return shapes, handle


def test_concat_stacks_person_and_garment_along_height(concat):
    """CatVTON's layout: [person ; garment] along height; the person half alone is decoded."""
    from editflow.diffusion.unets import LatentUNetDenoiser
    from editflow.engines.tryon_sd import garment_window

    garment = LatentUNetDenoiser.encode(concat.base, garment_window(GARMENT, 64, 48))
    d = concat.base.with_garments(garment, -2)
    person = torch.from_numpy(PERSON[:, 8:56].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1  # 56 x 48
    person = torch.nn.functional.pad(person, (0, 0, 0, 8), mode="replicate")  # 64 x 48
    mask = torch.zeros(1, 1, 64, 48)
    mask[..., 14:46, 4:44] = 1
    z = d.encode(person)
    assert tuple(z.shape) == (1, 4, 64, 24)  # tiny VAE: factor 2; 32 + 32 latent rows
    assert torch.equal(z[..., 32:, :], garment)
    m = d.mask_to_space(mask)
    assert tuple(m.shape) == (1, 1, 64, 24) and m[..., 32:, :].sum() == 0 and m[..., :32, :].sum() > 0
    c = d.condition(person, mask, 2.5)
    assert torch.equal(c.cond_latents[..., 32:, :], garment) and c.uncond_latents[..., 32:, :].abs().sum() == 0
    assert tuple(c.mask.shape) == (1, 1, 64, 24) and c.mask[..., 32:, :].sum() == 0
    assert tuple(d.decode(z).shape) == (1, 3, 64, 48)
    assert tuple(d.predict(z, torch.tensor([500]), torch.tensor([0.5]), c).shape) == (1, 4, 64, 24)


def test_concat_runs_in_catvtons_setting_by_default(concat):
    """Default row: a 3:4 frame at the model's resolution (tiny: 64x48), the UNet fed [person ; garment]
    along height (latent rows doubled), CatVTON's sampler (50 DDIM steps, eta 1)."""
    request = tryon("d", seed=3, steps=None)
    job = concat._prepare(0, request)
    assert job.settings["steps"] == 50 and job.settings["eta"] == 1.0 and job.settings["scheduler"] == "ddim"
    assert job.settings["guidance"] == 2.5
    frame = job.plan
    assert (frame.y1 - frame.y0) * 3 == (frame.x1 - frame.x0) * 4  # the edited window is 3:4 (width:height)
    ys, xs = np.nonzero(MASK)
    assert frame.y0 <= ys.min() and frame.y1 > ys.max() and frame.x0 <= xs.min() and frame.x1 > xs.max()
    shapes, handle = unet_inputs(concat.unet)
    try:
        (r,) = ok(concat.edit_batch([request]))
    finally:
        handle.remove()
    assert len(shapes) == 50 and set(shapes) == {(2, 9, 64, 24)}  # [uncond, cond] x (4+1+4) x (32+32) x 24
    assert (r.steps, r.nfe, r.proc_height, r.proc_width) == (50, 50, 64, 48)
    out = composite_unmasked(PERSON, r.image, MASK)
    assert unmasked_max_diff(PERSON, out, MASK) == 0 and np.any(out[MASK > 0] != PERSON[MASK > 0])
    # eta reaches the sampler: eta 0 (deterministic DDIM) gives another image
    (eta0,) = ok(concat.edit_batch([tryon("d", seed=3, steps=4, params={"eta": 0.0})]))
    (eta1,) = ok(concat.edit_batch([tryon("d", seed=3, steps=4)]))
    assert not np.array_equal(eta0.image, eta1.image)


def test_concat_width_axis_resolution_and_window_params(concat):
    shapes, handle = unet_inputs(concat.unet)
    try:
        (wide,) = ok(concat.edit_batch([tryon("w", steps=2, params={"concat_axis": "width"})]))
        (big,) = ok(concat.edit_batch([tryon("b", steps=2, params={"resolution": "96x72"})]))
        (window,) = ok(concat.edit_batch([tryon("o", steps=2, params={"frame": False})]))
    finally:
        handle.remove()
    assert shapes[0] == (2, 9, 32, 48)  # [person | garment] along width
    assert shapes[2] == (2, 9, 96, 36) and (big.proc_height, big.proc_width) == (96, 72)
    assert shapes[4] == (2, 9, 56, 32) and (window.proc_height, window.proc_width) == (56, 64)  # the old window
    bad = concat.edit_batch([tryon("x", params={"concat_axis": "depth"}), tryon("y", params={"resolution": "65x48"}),
                             tryon("z", params={"mask_free": True})])
    assert "concat_axis" in str(bad[0]) and "resolution" in str(bad[1]) and "InstructPix2Pix" in str(bad[2])


def test_frame_plans_keep_the_aspect_around_the_mask():
    from editflow.engines.frame import plan_frame

    wide = np.zeros((400, 1000), np.float32)
    wide[100:300, 600:700] = 1  # fits: the largest 3:4 frame inside the image, over the mask
    f = plan_frame(wide, 512, 384)
    assert (f.y0, f.y1, f.x1 - f.x0) == (0, 400, 300) and f.x0 <= 600 and f.x1 >= 700 and f.proc_size == (512, 384)
    banner = np.zeros((100, 1000), np.float32)
    banner[40:60, 100:900] = 1  # too wide for any 3:4 frame in the image: padded past it
    f = plan_frame(banner, 512, 384)
    assert f.x0 <= 100 and f.x1 >= 900 and abs((f.y1 - f.y0) * 3 - (f.x1 - f.x0) * 4) <= 4 and f.y0 < 0
    image = textured_image(1000, 100, seed=4)
    window = f.image(image)
    assert tuple(window.shape) == (1, 3, 512, 384)
    back = f.paste(image, window)
    assert back.shape == image.shape and np.abs(back.astype(int) - image.astype(int)).mean() < 12
    assert tuple(f.mask(banner).shape) == (1, 1, 512, 384) and f.mask(banner).max() == 1


def test_mask_free_variant_on_an_instruct_pix2pix_unet(tiny_models, attention_ckpt):
    """8-channel UNet: no mask channel, [x, person ; garment]; the model redraws the frame, the edit
    stage keeps the row's mask."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from tests.tiny_models import catvton_attention_state_dict

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd-pix2pix"], subfolder="unet")
    path = attention_ckpt["folder"] / "maskfree.safetensors"
    save_file(catvton_attention_state_dict(unet), str(path))
    e = engine("concat", tiny_models["sd-pix2pix"], attention=str(path))
    assert e.mask_free
    shapes, handle = unet_inputs(e.unet)
    try:
        (r,) = ok(e.edit_batch([tryon("mf", steps=3, params={"mask_free": True})]))
    finally:
        handle.remove()
    assert set(shapes) == {(2, 8, 64, 24)}
    assert np.any(r.image[MASK == 0] != PERSON[MASK == 0])  # the whole frame was redrawn
    out = composite_unmasked(PERSON, r.image, MASK)
    assert unmasked_max_diff(PERSON, out, MASK) == 0
    (bad,) = e.edit_batch([tryon("m", params={"mask_free": False})])
    assert isinstance(bad, EngineError) and "mask-free only" in str(bad)


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


def test_catvton_stride_8_checkpoint_loads_on_the_tiny_unet(attention_ckpt):
    """CatVTON's published layout (<i>.<param>, i = 0, 8, 16, ...) lands on the k-th attn1 layer: every key used."""
    from safetensors.torch import save_file

    from editflow.engines.tryon_sd import attention_parameters, load_attention_weights
    from tests.tiny_models import catvton_attention_state_dict

    unet = attention_ckpt["unet"]
    state = catvton_attention_state_dict(unet, stride=8)
    assert sorted({int(k.split(".")[0]) for k in state}) == [0, 8, 16, 24]  # 4 self-attention layers in the tiny UNet
    path = attention_ckpt["folder"] / "catvton.safetensors"
    save_file(state, str(path))
    before = {k: v.detach().clone() for k, v in attention_parameters(unet).items()}
    layers = [n for n, _ in unet.named_modules() if n.endswith("attn1")]
    try:
        assert load_attention_weights(unet, path) == len(state) == len(before)
        params = attention_parameters(unet)
        for k, layer in enumerate(layers):
            for name in ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias"):
                assert torch.equal(params[f"{layer}.{name}"], state[f"{8 * k}.{name}"])
    finally:
        with torch.no_grad():
            for k, p in attention_parameters(unet).items():
                p.copy_(before[k])


def test_catvton_stride_8_checkpoint_loads_on_an_sd15_sized_unet(tmp_path):
    """SD 1.5 inpainting architecture (meta device: shapes only): 16 layers, keys 0..120, all 80 consumed."""
    from safetensors.torch import save_file

    from editflow.engines.tryon_sd import load_attention_weights
    from tests.tiny_models import catvton_attention_state_dict, sd15_inpaint_unet_on_meta

    unet = sd15_inpaint_unet_on_meta()
    state = catvton_attention_state_dict(unet, stride=8, dtype=torch.float16)
    indices = sorted({int(k.split(".")[0]) for k in state})
    assert indices == list(range(0, 128, 8)) and len(state) == 80
    path = tmp_path / "catvton-sd15.safetensors"
    save_file(state, str(path))
    del state
    try:
        assert load_attention_weights(unet, path) == 80
        # a key that lands on no parameter, and a file one layer short, are refused by name
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            full = {k: fh.get_tensor(k) for k in fh.keys()}
        save_file({k: v for k, v in full.items() if int(k.split(".")[0]) < 120}, str(path))
        with pytest.raises(EngineError, match=r"15 self-attention layers .* the UNet 16"):
            load_attention_weights(unet, path)
        save_file({**full, "3.not_a_param.weight": torch.zeros(2)}, str(path))
        with pytest.raises(EngineError, match=r"3\.not_a_param\.weight"):
            load_attention_weights(unet, path)
    finally:
        path.unlink(missing_ok=True)


def test_catvton_checkpoint_for_another_width_is_refused(attention_ckpt, tmp_path):
    from safetensors.torch import save_file

    from editflow.engines.tryon_sd import load_attention_weights
    from tests.tiny_models import catvton_attention_state_dict, sd15_inpaint_unet_on_meta

    state = catvton_attention_state_dict(attention_ckpt["unet"], stride=8)
    state["8.to_q.weight"] = torch.zeros(64, 32)  # the tiny UNet's layer 1 is (64, 64)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(EngineError, match=r"8\.to_q\.weight \(\(64, 32\)"):
        load_attention_weights(attention_ckpt["unet"], path)
    with pytest.raises(EngineError, match="4 self-attention layers .* the UNet 16"):  # tiny file on SD 1.5
        load_attention_weights(sd15_inpaint_unet_on_meta(), path)


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
    # the adapter a row ran with is recorded (the tiny folder holds only the plain adapter)
    assert got["ip-0"]["adapter"].startswith("ip-adapter ") and "ip-adapter_sd15.safetensors" in got["ip-0"]["adapter"]
    assert got["cat-0"]["adapter"] is None
