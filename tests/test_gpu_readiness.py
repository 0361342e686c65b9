"""The CUDA code paths, proven on the CPU (issue 12): one test per defect a first GPU run would meet.

Every test runs the real engines on the suite's tiny random-weight models; the GPU-only
conditions are recreated on the CPU: fp16 models (torch's CPU kernels run half precision),
accelerate's offload hooks (weights on the meta device, executed on the CPU), a VAE whose config
asks for fp32 (`force_upcast=True`, as every hub SD/SDXL VAE), a compute capability reported by a
patched `torch.cuda`, an out-of-memory error raised by a hook on the UNet.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editflow.engines.base import EditRequest
from tests.conftest import textured_image

IMG = textured_image(64, 56, seed=31)
MASK = np.zeros((56, 64), np.float32)
MASK[14:46, 12:52] = 1
GARMENT = textured_image(40, 56, seed=23)
GARMENT_2 = textured_image(48, 48, seed=24)[..., ::-1].copy()


def request(task: str = "inpaint", seed: int = 7, rid: str = "r", **kw) -> EditRequest:
    kw.setdefault("steps", 3)
    kw.setdefault("prompt", "a red cat")
    return EditRequest(id=rid, task=task, image=kw.pop("image", IMG), mask=kw.pop("mask", MASK), seed=seed, **kw)


def ok(results):
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


def tiny_pipe(kind: str, tmp_path, force_upcast: bool = False, **extra):
    """A tiny SD / SDXL (inpaint) pipeline in memory; `force_upcast` as hub VAEs set it."""
    from diffusers import (
        StableDiffusionInpaintPipeline, StableDiffusionPipeline, StableDiffusionXLInpaintPipeline,
    )

    from tests.tiny_models import tiny_sd_components, tiny_sdxl_components

    if kind == "sdxl-inpaint":
        c = tiny_sdxl_components(9, tmp_path / "tok", seed=20)
        cls = StableDiffusionXLInpaintPipeline
    else:
        c = tiny_sd_components(9 if kind == "sd-inpaint" else 4, tmp_path / "tok")
        cls = StableDiffusionInpaintPipeline if kind == "sd-inpaint" else StableDiffusionPipeline
        c.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    c.update(extra)
    c["vae"].register_to_config(force_upcast=force_upcast)
    return cls(**c)


class Calls:
    """Counts the rows (batch entries) each module evaluates, and the dtypes it saw."""

    def __init__(self, **modules: torch.nn.Module) -> None:
        self.rows = {name: 0 for name in modules}
        self.calls = {name: 0 for name in modules}
        self.sizes: dict[str, list[int]] = {name: [] for name in modules}  # rows of each call
        self.dtypes: dict[str, list] = {name: [] for name in modules}
        for name, module in modules.items():
            module.register_forward_pre_hook(self._hook(name), with_kwargs=True)

    def _hook(self, name):
        def hook(module, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            self.rows[name] += int(x.shape[0])
            self.calls[name] += 1
            self.sizes[name].append(int(x.shape[0]))
            self.dtypes[name].append(x.dtype)
        return hook


# -- 1: concat try-on keeps no autograd graph --------------------------------------------------

@pytest.fixture(scope="module")
def attention_ckpt(tiny_models, tmp_path_factory):
    from diffusers import UNet2DConditionModel

    from tests.tiny_models import save_attention_checkpoint

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd-inpaint"], subfolder="unet")
    return save_attention_checkpoint(unet, tmp_path_factory.mktemp("attn") / "attention.safetensors", noise=0.3)


def test_concat_row_leaves_no_gradients_and_cached_latents_carry_no_graph(tiny_models, attention_ckpt):
    from editflow.engines.tryon_sd import ConcatTryOnEngine

    e = ConcatTryOnEngine.from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu", attention=str(attention_ckpt))
    ok(e.edit_batch([request("tryon", reference=GARMENT, reference_key="g1", category="upper")]))
    for module in (e.unet, e.vae):
        assert not any(p.requires_grad for p in module.parameters())
    (latents,) = e.cache._items.values()
    assert latents.grad_fn is None and not latents.requires_grad


def test_sd_engine_models_are_frozen(tiny_models):
    from editflow.engines.sd import SDEngine

    e = SDEngine.from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu")
    for name in ("unet", "vae", "text_encoder"):
        assert not any(p.requires_grad for p in getattr(e.pipe, name).parameters()), name


# -- 2: model CPU offload: inputs go to the execution device, not module.device ----------------

def _offload(*modules: torch.nn.Module) -> None:
    """accelerate's offload hooks: weights live on the meta device (module.device reads meta)
    and are brought to the execution device for each forward, as under enable_model_cpu_offload
    where module.device reads cpu while the work runs on cuda."""
    from accelerate import cpu_offload

    for m in modules:
        cpu_offload(m, execution_device=torch.device("cpu"))
        assert next(m.parameters()).device.type == "meta"


@pytest.mark.parametrize("name,task", [("sd", "repaint"), ("sd-inpaint", "repaint")])
def test_sampler_path_runs_under_offload_hooks_with_the_same_bytes(tiny_models, name, task):
    from editflow.engines.sd import SDEngine

    plain = SDEngine.from_pretrained(model=str(tiny_models[name]), device="cpu")
    (want,) = ok(plain.edit_batch([request(task, jump_length=2, jump_n_sample=2)]))
    e = SDEngine.from_pretrained(model=str(tiny_models[name]), device="cpu")
    _offload(e.pipe.unet, e.pipe.vae, e.pipe.text_encoder)
    (got,) = ok(e.edit_batch([request(task, jump_length=2, jump_n_sample=2)]))
    assert np.array_equal(got.image, want.image)


def test_concat_runs_under_offload_hooks(tiny_models, attention_ckpt):
    from editflow.engines.tryon_sd import ConcatTryOnEngine

    e = ConcatTryOnEngine.from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu", attention=str(attention_ckpt))
    (want,) = ok(e.edit_batch([request("tryon", reference=GARMENT, category="upper")]))
    f = ConcatTryOnEngine.from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu", attention=str(attention_ckpt))
    f.set_attention(str(attention_ckpt))
    _offload(f.unet, f.vae)
    (got,) = ok(f.edit_batch([request("tryon", reference=GARMENT, category="upper")]))
    assert np.array_equal(got.image, want.image)


def test_ipadapter_runs_under_offload_hooks(tiny_models, tiny_ip_adapter):
    from editflow.engines.tryon_sd import SDIPAdapterTryOnEngine

    e = SDIPAdapterTryOnEngine.from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu", ip_adapter=str(tiny_ip_adapter))
    row = request("tryon", reference=GARMENT, category="upper")
    (want,) = ok(e.edit_batch([row]))
    _offload(e.pipe.unet, e.pipe.vae, e.pipe.text_encoder, e.adapter.encoder)
    e.cache = type(e.cache)(0, enabled=False)  # the image encoder runs again, under its hook
    (got,) = ok(e.edit_batch([row]))
    assert np.array_equal(got.image, want.image)


def test_execution_device_reads_the_hooks():
    from editflow.diffusion.device import execution_device

    lin = torch.nn.Linear(2, 2)
    assert execution_device(lin) == torch.device("cpu")
    _offload(lin)
    assert execution_device(lin) == torch.device("cpu")


# -- 3: fp16 with a 9-channel SD inpaint model whose VAE asks for fp32 --------------------------

def test_fp16_nine_channel_inpaint_with_force_upcast_vae(tmp_path):
    from editflow.engines.sd import SDEngine

    e = SDEngine(tiny_pipe("sd-inpaint", tmp_path, force_upcast=True), device="cpu", dtype="fp16")
    assert e.pipe.unet.dtype == torch.float16
    calls = Calls(decoder=e.pipe.vae.decoder)
    (a,) = ok(e.edit_batch([request("inpaint")]))  # diffusers' inpaint pipeline, fp16 throughout
    assert a.image.shape == IMG.shape and a.image[MASK > 0].std() > 0
    (b,) = ok(e.edit_batch([request("repaint", jump_length=2, jump_n_sample=2)]))  # the sampler: VAE upcast
    assert b.image.shape == IMG.shape
    assert calls.dtypes["decoder"] == [torch.float16, torch.float32]
    assert e.pipe.vae.dtype == torch.float32


# -- 4: attention slicing survives IP-Adapter loads and swaps ----------------------------------

def test_sliced_attention_with_ip_adapter_load_and_swap(tiny_models, tiny_ip_adapter, tmp_path):
    import shutil

    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0, SlicedAttnProcessor

    from editflow.engines.tryon_sd import SDIPAdapterTryOnEngine

    other = tmp_path / "ip2"
    shutil.copytree(tiny_ip_adapter, other)
    e = SDIPAdapterTryOnEngine.from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu", ip_adapter=str(tiny_ip_adapter),
                               attention_slicing=True, sdpa=False)
    rows = [request("tryon", reference=g, category="upper", rid=str(i)) for i, g in enumerate((GARMENT, GARMENT_2))]
    a, b = ok(e.edit_batch(rows))
    assert not np.array_equal(a.image, b.image)  # the image prompt still reaches the UNet

    def kinds():
        procs = e.pipe.unet.attn_processors
        ip = {k for k, v in procs.items() if isinstance(v, IPAdapterAttnProcessor2_0)}
        sliced = {k for k, v in procs.items() if isinstance(v, SlicedAttnProcessor)}
        return ip, sliced, set(procs)

    ip, sliced, every = kinds()
    assert ip and sliced == every - ip  # every non-adapter layer is sliced
    swap = [request("tryon", reference=GARMENT, category="upper", params={"ip_adapter": str(other)})]
    ok(e.edit_batch(swap))  # unload + load another adapter
    assert kinds()[:2] == (ip, sliced)
    (again,) = ok(e.edit_batch(rows[:1]))
    assert np.array_equal(again.image, a.image)


# -- 5: the safety checker never blackens a row silently ---------------------------------------

def flag_everything_checker():
    """diffusers' own `StableDiffusionSafetyChecker` on a tiny CLIP, its concept thresholds set
    below any cosine score: it flags (and blackens, as the hub checker does) every image."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=8),
        projection_dim=32,
    )
    checker = StableDiffusionSafetyChecker(config)
    checker.concept_embeds_weights.data.fill_(-2.0)  # cosine - threshold > 0 for every concept
    return checker


def _flagging_pipe(tmp_path):
    from transformers import CLIPImageProcessor

    pipe = tiny_pipe("sd-inpaint", tmp_path)
    pipe.register_modules(safety_checker=flag_everything_checker(),
                          feature_extractor=CLIPImageProcessor(size=32, crop_size=32))
    return pipe


def test_safety_checker_is_off_by_default(tmp_path):
    from editflow.engines.sd import SDEngine

    e = SDEngine(_flagging_pipe(tmp_path), device="cpu")
    (r,) = ok(e.edit_batch([request("inpaint")]))
    assert r.image[MASK > 0].max() > 0 and r.nsfw is None


def test_safety_checker_opt_in_flags_rows_on_both_paths(tmp_path):
    from editflow.engines.sd import SDEngine

    e = SDEngine(_flagging_pipe(tmp_path), device="cpu", safety_checker=True)
    a, b = ok(e.edit_batch([request("inpaint", rid="a"), request("repaint", rid="b")]))
    assert a.nsfw is True and b.nsfw is True


def test_flagged_row_is_an_nsfw_error_row_not_a_black_ok_row(tmp_path):
    from editflow.config import RunConfig
    from editflow.engines import engine_target
    from editflow.engines.sd import SDEngine
    from editflow.results import RESULT_SCHEMA
    from editflow.runners.stages import EditStage, new_row

    config = RunConfig(out_dir=str(tmp_path), engine="sd", model="tiny", device="cpu")
    stage = EditStage(config)
    stage.engines[(engine_target("sd", "inpaint"), "tiny")] = SDEngine(
        _flagging_pipe(tmp_path), device="cpu", safety_checker=True)
    row = new_row({"id": "r1", "task": "inpaint", "image": "x.png", "mask": "box:12,14,52,46", "prompt": "a cat",
                   "steps": "3", "seed": "1"}, config.run_id)
    row.update(_image=IMG, _mask=MASK)
    (row,) = stage([row])
    assert row["status"] == "error" and row["nsfw"] is True and row["error_type"] == "NSFWContentError"
    assert "_output" not in row and "nsfw" in RESULT_SCHEMA.names


# -- 6: SDXL fp16: the pipeline's fp16 VAE cast never reaches the sampler rows ------------------

def test_sdxl_fp16_inpaint_then_repaint_keeps_the_fp32_vae(tmp_path):
    from editflow.engines.sd import SDEngine

    e = SDEngine(tiny_pipe("sdxl-inpaint", tmp_path, force_upcast=True), device="cpu", dtype="fp16")
    calls = Calls(encoder=e.pipe.vae.encoder, decoder=e.pipe.vae.decoder)
    ok(e.edit_batch([request("inpaint")]))
    assert e.pipe.vae.dtype == torch.float32
    (b,) = ok(e.edit_batch([request("repaint", jump_length=2, jump_n_sample=2)]))
    n = len(calls.dtypes["decoder"])
    assert calls.dtypes["decoder"][n - 1] == torch.float32 and calls.dtypes["encoder"][-1] == torch.float32
    assert b.image.shape == IMG.shape


# -- 7: bf16 only where the hardware has it ------------------------------------------------------

@pytest.mark.parametrize("capability,want", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                             ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_bf16_only_on_compute_capability_8(monkeypatch, capability, want):
    from editflow.models import select_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # counts emulation
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    assert select_dtype("cuda") == want
    assert select_dtype("cuda:1") == want
    assert select_dtype("cuda", "fp32") == torch.float32


# -- 9: out of memory: split and retry, fail only what does not fit ----------------------------

def oom_above(unet, rows: int) -> tuple[list[int], object]:
    """Make `unet` raise torch's out-of-memory error on any call over `rows` batch entries;
    returns the batch sizes it saw and the hook's handle."""
    seen: list[int] = []

    def hook(module, args, kwargs):
        seen.append(int(args[0].shape[0]))
        if args[0].shape[0] > rows:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    return seen, unet.register_forward_pre_hook(hook, with_kwargs=True)


def test_oom_splits_the_group_and_retries(tiny_models):
    from editflow.engines.sd import SDEngine

    e = SDEngine.from_pretrained(model=str(tiny_models["sd"]), device="cpu", micro_batch=4)
    seen, handle = oom_above(e.pipe.unet, 2)  # room for one row with CFG
    try:
        rows = [request("repaint", seed=i, rid=str(i), steps=2) for i in range(3)]
        results = ok(e.edit_batch(rows))
    finally:
        handle.remove()
    assert len(results) == 3 and seen[0] == 6 and 4 in seen and seen[-1] == 2  # 3 rows -> 1 + 2 -> 1 + 1
    alone = SDEngine.from_pretrained(model=str(tiny_models["sd"]), device="cpu")
    for row, result in zip(rows, results):
        (want,) = ok(alone.edit_batch([row]))
        assert np.array_equal(result.image, want.image)


def test_oom_split_size_is_remembered_for_the_next_batches(tiny_models, caplog):
    from editflow.engines.sd import SDEngine

    e = SDEngine.from_pretrained(model=str(tiny_models["sd"]), device="cpu", micro_batch=4)
    seen, _ = oom_above(e.pipe.unet, 2)  # room for one row with CFG
    with caplog.at_level("WARNING", logger="editflow.engines.base"):
        ok(e.edit_batch([request("repaint", seed=i, rid=str(i), steps=2) for i in range(3)]))
        assert max(seen) == 6
        seen.clear()
        # the next batches (other steps and seeds, same size) start at the size that fitted
        rows = [request("repaint", seed=10 + i, rid=str(i), steps=3) for i in range(4)]
        results = ok(e.edit_batch(rows))
        ok(e.edit_batch(rows[:2]))
    assert seen and max(seen) == 2
    assert len([r for r in caplog.records if "out of memory" in r.getMessage()]) == 1  # logged once
    alone = SDEngine.from_pretrained(model=str(tiny_models["sd"]), device="cpu")
    for row, result in zip(rows, results):
        (want,) = ok(alone.edit_batch([row]))
        assert np.array_equal(result.image, want.image)
    # another processing size has its own limit (none learnt yet: the whole group in one call)
    seen.clear()
    big = textured_image(80, 72, seed=3)
    mask = np.zeros((72, 80), np.float32)
    mask[10:60, 10:70] = 1
    e.edit_batch([request("repaint", seed=i, rid=str(i), steps=2, image=big, mask=mask) for i in range(2)])
    assert seen[0] == 4


def test_oom_limit_is_the_largest_size_that_ran():
    from editflow.engines.base import RowLimits, run_grouped

    class J:
        def __init__(self, i):
            self.index = i

        def key(self):
            return "same"

    calls = []

    def run(group):
        calls.append(len(group))
        if len(group) > 4:
            raise torch.OutOfMemoryError("simulated")
        return [f"ok{j.index}" for j in group]

    limits = RowLimits()
    results = [None] * 8
    run_grouped([J(i) for i in range(8)], run, results, limits)
    assert calls == [8, 4, 4] and limits.rows("same") == 4
    calls.clear()
    results = [None] * 10
    run_grouped([J(i) for i in range(10)], run, results, limits)
    assert calls == [4, 4, 2] and results == [f"ok{i}" for i in range(10)]
    calls.clear()
    run_grouped([J(i) for i in range(8)], run, [None] * 8)  # without limits: as before
    assert calls == [8, 4, 4]


def test_oom_fails_only_the_rows_that_still_do_not_fit():
    from editflow.engines.base import run_grouped

    class J:
        def __init__(self, i, big):
            self.index, self.big = i, big

        def key(self):
            return "same"

    calls = []

    def run(group):
        calls.append(len(group))
        if len(group) > 1 or group[0].big:
            raise torch.OutOfMemoryError("simulated")
        return [f"ok{j.index}" for j in group]

    results = [None] * 5
    run_grouped([J(i, i == 3) for i in range(5)], run, results)
    assert results[:3] == ["ok0", "ok1", "ok2"] and results[4] == "ok4"
    assert isinstance(results[3], torch.OutOfMemoryError)
    assert calls[0] == 5


# -- 10: network evaluations per row -------------------------------------------------------------

def test_pipeline_path_evaluations_per_row(tiny_models):
    from editflow.engines.sd import SDEngine

    e = SDEngine.from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu")
    calls = Calls(unet=e.pipe.unet, encoder=e.pipe.vae.encoder, decoder=e.pipe.vae.decoder,
                  text=e.pipe.text_encoder)
    steps, n = 3, 2
    ok(e.edit_batch([request("inpaint", rid=str(i), seed=i, steps=steps, negative_prompt="x") for i in range(n)]))
    assert calls.rows["unet"] == n * 2 * steps  # classifier-free guidance: uncond + cond per step
    assert calls.rows["encoder"] == n and calls.rows["decoder"] == n
    assert calls.rows["text"] == 2 * n


def _unbatched(e):
    """The engine's inpaint pipeline with diffusers' own row-by-row VAE encode back."""
    vars(e.inpaint_pipe).pop("_encode_vae_image")
    return e


@pytest.mark.parametrize("task", ["sdedit", "inpaint"])
def test_pipeline_path_encodes_a_micro_batch_in_one_vae_call(tiny_models, task):
    from editflow.engines.sd import SDEngine

    e = SDEngine.from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu", micro_batch=2)
    calls = Calls(encoder=e.pipe.vae.encoder, decoder=e.pipe.vae.decoder)
    rows = [request(task, rid=str(i), seed=i, steps=5) for i in range(3)]
    got = ok(e.edit_batch(rows))
    # micro-batches of 2 + 1 rows; sdedit (strength < 1) encodes the init image and the masked
    # image, inpaint at strength 1 only the masked image: one call each, carrying every row
    per_batch = 2 if task == "sdedit" else 1
    assert calls.sizes["encoder"] == [2] * per_batch + [1] * per_batch
    assert calls.sizes["decoder"] == [2, 1]
    # each row's latent is still sampled from its own generator, in diffusers' order
    want = ok(_unbatched(SDEngine.from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu",
                                                  micro_batch=2)).edit_batch(rows))
    for a, b in zip(got, want):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


@pytest.mark.parametrize("kind", ["sd-inpaint", "sdxl-inpaint"])
def test_batched_vae_encode_draws_what_diffusers_draws(tmp_path, kind):
    from editflow.diffusion.generators import row_generators
    from editflow.engines.sd import SDEngine

    # SDXL in fp16 with a force_upcast VAE: its encode upcasts to fp32 and returns fp16 latents
    dtype = torch.float16 if kind == "sdxl-inpaint" else torch.float32
    e = SDEngine(tiny_pipe(kind, tmp_path, force_upcast=True), device="cpu", dtype="fp16" if dtype == torch.float16 else None)
    pipe = e.inpaint_pipe
    pipe.vae.to(dtype=dtype)  # as during a pipeline call (editflow.diffusion.device.pipeline_vae)
    image = (torch.rand(3, 3, 64, 64) * 2 - 1).to(dtype)
    gens_a, gens_b = row_generators([5, 6, 7]), row_generators([5, 6, 7])
    with torch.inference_mode():
        batched = pipe._encode_vae_image(image, generator=gens_a)
        assert pipe.vae.dtype == dtype and batched.dtype == dtype
        per_row = type(pipe)._encode_vae_image(pipe, image, generator=gens_b)
        alone = type(pipe)._encode_vae_image(pipe, image[1:2], generator=row_generators([6]))
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert torch.allclose(batched, per_row, atol=tol) and torch.allclose(batched[1:2], alone, atol=tol)
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(gens_a, gens_b))


def test_pipeline_path_bytes_unchanged_on_cpu(tiny_models):
    from editflow.engines.sd import SDEngine

    rows = [request("sdedit", rid=str(i), seed=i, steps=4) for i in range(2)]
    e = SDEngine.from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu")
    got = ok(e.edit_batch(rows))
    want = ok(_unbatched(SDEngine.from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu")).edit_batch(rows))
    (alone,) = ok(e.edit_batch(rows[1:]))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(got, want))
    assert np.array_equal(alone.image, got[1].image)


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_sdxl_pipeline_encodes_a_micro_batch_in_one_call(tmp_path, dtype):
    from editflow.engines.sd import SDEngine

    e = SDEngine(tiny_pipe("sdxl-inpaint", tmp_path, force_upcast=True), device="cpu", dtype=dtype, micro_batch=2)
    calls = Calls(encoder=e.pipe.vae.encoder)
    rows = [request("sdedit", rid=str(i), seed=i, steps=4) for i in range(2)]
    got = ok(e.edit_batch(rows))
    assert calls.sizes["encoder"] == [2, 2] and set(calls.dtypes["encoder"]) == {torch.float32}  # upcast kept
    assert e.pipe.vae.dtype == torch.float32
    if dtype == "fp32":  # (fp16 rows differ from diffusers' loop by fp16 rounding of the latents only)
        want = ok(_unbatched(SDEngine(tiny_pipe("sdxl-inpaint", tmp_path, force_upcast=True), device="cpu",
                                      dtype=dtype, micro_batch=2)).edit_batch(rows))
        for a, b in zip(got, want):
            assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


def test_sampler_path_evaluations_per_row(tiny_models):
    from editflow.engines.sd import SDEngine

    e = SDEngine.from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu")
    calls = Calls(unet=e.pipe.unet, encoder=e.pipe.vae.encoder, decoder=e.pipe.vae.decoder)
    ok(e.edit_batch([request("inpaint", params={"sampler": True}, steps=3, negative_prompt="x")]))
    # one encode of the image (known region), one of the masked image (9-channel input), one decode
    assert (calls.rows["unet"], calls.rows["encoder"], calls.rows["decoder"]) == (6, 2, 1)


def test_sdedit_start_is_not_encoded_at_strength_one(tiny_models):
    from editflow.diffusion.sampler import SamplerConfig, masked_sample
    from editflow.diffusion.unets import LatentCondition, LatentUNetDenoiser
    from editflow.engines.sd import SDEngine

    e = SDEngine.from_pretrained(model=str(tiny_models["sd"]), device="cpu")
    d = LatentUNetDenoiser(e.pipe.unet, e.pipe.vae)
    calls = Calls(encoder=e.pipe.vae.encoder)
    images = torch.zeros(1, 3, 64, 64)
    masks = torch.ones(1, 1, 64, 64)
    cond = LatentCondition(prompt_embeds=torch.zeros(1, 77, 32), negative_embeds=None, guidance_scale=1.0)
    with torch.inference_mode():
        masked_sample(d, images, masks, [torch.Generator().manual_seed(0)], SamplerConfig(steps=2, strength=1.0),
                      condition=cond, init=images + 0.5)
    assert calls.rows["encoder"] == 1


def test_whole_group_unet_calls_decode_a_few_rows_at_a_time(tiny_models):
    """On GPU the UNet takes the whole group in one call, but a VAE decode holds many times a UNet
    step's activations per row: it never takes the whole group (VAE_ROWS rows per call)."""
    from editflow.diffusion.sampler import SamplerConfig, masked_sample
    from editflow.diffusion.unets import VAE_ROWS, LatentCondition, LatentUNetDenoiser
    from editflow.engines.sd import SDEngine

    e = SDEngine.from_pretrained(model=str(tiny_models["sd"]), device="cpu")
    d = LatentUNetDenoiser(e.pipe.unet, e.pipe.vae, rows_per_call=None)  # the GPU default: whole group
    calls = Calls(unet=e.pipe.unet, encoder=e.pipe.vae.encoder, decoder=e.pipe.vae.decoder)
    n = VAE_ROWS + 2
    cond = LatentCondition(prompt_embeds=torch.zeros(n, 77, 32), negative_embeds=None, guidance_scale=1.0)
    with torch.inference_mode():
        masked_sample(d, torch.zeros(n, 3, 64, 64), torch.ones(n, 1, 64, 64),
                      [torch.Generator().manual_seed(i) for i in range(n)], SamplerConfig(steps=2), condition=cond)
    assert calls.sizes["unet"] == [n, n]
    assert calls.sizes["decoder"] == [VAE_ROWS, 2] and calls.sizes["encoder"] == [VAE_ROWS, 2]


# -- 9: one loaded model per worker for sd, sd makeup and sd-ipadapter --------------------------

def test_engines_of_one_model_share_one_pipeline_and_keep_their_bytes(tmp_path, tiny_models, tiny_ip_adapter):
    from editflow.config import RunConfig
    from editflow.engines.sd import SDEngine
    from editflow.runners.stages import EditStage, new_row

    model = str(tiny_models["sd-inpaint"])
    stage = EditStage(RunConfig(out_dir=str(tmp_path), device="cpu", model=model))
    plain = stage.engine("sd", "repaint", model)
    ipa = stage.engine("sd-ipadapter", "tryon", model)
    assert ipa.pipe is plain.pipe and ipa.pipe.unet is plain.pipe.unet

    def row(rid, task, engine, **extra):
        r = new_row({"id": rid, "task": task, "engine": engine, "image": "x.png", "mask": "box:12,14,52,46",
                     "prompt": "a cat", "steps": "3", "seed": "4", **extra}, "run")
        r.update(_image=IMG, _mask=MASK, _reference=GARMENT)
        return r

    params = '{"ip_adapter": "%s"}' % tiny_ip_adapter
    rows = stage([row("a", "repaint", "sd"), row("b", "tryon", "sd-ipadapter", category="upper", reference="g.png", params=params),
                  row("c", "repaint", "sd")])
    assert [r["status"] for r in rows] == ["ok"] * 3, [r.get("error_message") for r in rows]
    (alone,) = ok(SDEngine.from_pretrained(model=model, device="cpu").edit_batch([request("repaint", seed=4, prompt="a cat")]))
    assert np.array_equal(rows[0]["_output"], rows[2]["_output"])  # the adapter left the plain UNet as it was
    assert np.array_equal(rows[0]["_output"][MASK > 0], alone.image[MASK > 0])


# -- 10: switches from the run's config reach the engines (and Ray actors, which get it pickled) --

def test_run_config_switches_reach_the_engine(tmp_path, tiny_models, monkeypatch):
    import pickle

    from editflow import cli
    from editflow.config import RunConfig
    from editflow.runners.stages import EditStage

    monkeypatch.setenv("EDITFLOW_MICRO_BATCH", "3")
    args = cli.build_parser().parse_args(["run", "m.jsonl", "-o", str(tmp_path), "--dtype", "bf16", "--vae-tiling"])
    config = RunConfig(out_dir=str(tmp_path), **cli._settings(args))
    assert config.engine_options() == {"dtype": "bf16", "vae_tiling": True, "micro_batch": 3}
    monkeypatch.delenv("EDITFLOW_MICRO_BATCH")
    config = pickle.loads(pickle.dumps(config))  # what a Ray actor receives
    e = EditStage(config).engine("sd", "repaint", str(tiny_models["sd"]))
    assert e.dtype == torch.bfloat16 and e.rows_per_call == 3 and "vae_tiling" in e.switches
    assert RunConfig(out_dir="x").engine_options() == {}


# -- 10: the compile switch, exercised: torch.compile's real tracing (dynamo + AOTAutograd) --------

def _dynamo_frames() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["frames"].values())


def test_compile_switch_takes_a_mode_or_backend(tmp_path, monkeypatch, capsys):
    from editflow import cli
    from editflow.config import RunConfig
    from editflow.models import RuntimeOptions, SwitchError, compile_kwargs

    def config(*flags):
        args = cli.build_parser().parse_args(["run", "m.jsonl", "-o", str(tmp_path), *flags])
        return RunConfig(out_dir=str(tmp_path), **cli._settings(args)).engine_options().get("compile")

    assert config("--compile") is True and config("--compile-mode", "aot_eager") == "aot_eager"
    assert config("--compile-mode", "off") is False and config() is None
    assert compile_kwargs(True) == {"mode": "max-autotune-no-cudagraphs"}
    assert compile_kwargs("reduce-overhead") == {"mode": "reduce-overhead"}
    assert compile_kwargs("aot_eager") == {"backend": "aot_eager"}
    monkeypatch.setenv("EDITFLOW_COMPILE", "aot_eager")
    assert RuntimeOptions.from_options({}).compile == "aot_eager" and config() == "aot_eager"
    monkeypatch.setenv("EDITFLOW_COMPILE", "1")
    assert RuntimeOptions.from_options({}).compile is True
    with pytest.raises(SwitchError, match="aot_eager"):
        compile_kwargs("nope")
    assert cli.main(["run", "m.jsonl", "-o", str(tmp_path / "o"), "--compile-mode", "nope"]) == cli.EXIT_FATAL
    assert "compile='nope' is neither a torch.compile mode" in capsys.readouterr().err


@pytest.mark.parametrize("name,task", [("sd", "repaint"), ("sd-inpaint", "repaint"), ("sd-inpaint", "inpaint")])
def test_compiled_unet_gives_the_uncompiled_bytes(tiny_models, name, task):
    """compile=aot_eager: dynamo captures the UNet's graph and AOTAutograd traces it (the steps a
    GPU compile takes before inductor's code generation), on the sampler and pipeline paths."""
    import torch._dynamo

    from editflow.engines.sd import SDEngine

    row = request(task, jump_length=2, jump_n_sample=2)
    (want,) = ok(SDEngine.from_pretrained(model=str(tiny_models[name]), device="cpu").edit_batch([row]))
    torch._dynamo.reset()
    e = SDEngine.from_pretrained(model=str(tiny_models[name]), device="cpu", compile="aot_eager")
    assert isinstance(e.pipe.unet, torch._dynamo.eval_frame.OptimizedModule) and "compile" in e.switches
    before = _dynamo_frames()
    (got,) = ok(e.edit_batch([row]))
    assert _dynamo_frames() > before  # the UNet ran through dynamo, not eagerly
    assert np.array_equal(got.image, want.image)


def test_ip_adapter_loads_into_a_compiled_unet_swaps_and_unloads(tiny_models, tiny_ip_adapter, tmp_path):
    """sd-ipadapter loads its adapter into the UNet of the pipeline it shares with `sd`: on a
    compiled UNet the adapter's processors and weights must reach the compiled graph (dynamo
    recompiles on the processor swap; a second adapter's weights are graph inputs, not constants
    baked in), and the plain rows after it must be the plain UNet's again."""
    import shutil

    import torch._dynamo
    from safetensors.torch import load_file, save_file

    from editflow.config import RunConfig
    from editflow.runners.stages import EditStage

    other = tmp_path / "ip2"
    shutil.copytree(tiny_ip_adapter, other)
    weights = other / "models" / "ip-adapter_sd15.safetensors"
    g = torch.Generator().manual_seed(3)
    save_file({k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in load_file(str(weights)).items()}, str(weights))
    model = str(tiny_models["sd-inpaint"])
    plain_row = request("repaint", jump_length=2, jump_n_sample=2)

    def tryon(adapter, garments=(GARMENT, GARMENT_2)):
        return [request("tryon", reference=g, category="upper", rid=str(i), params={"ip_adapter": str(adapter)})
                for i, g in enumerate(garments)]

    def run(compile_):
        stage = EditStage(RunConfig(out_dir=str(tmp_path), device="cpu", model=model, compile=compile_))
        sd, ipa = stage.engine("sd", "repaint", model), stage.engine("sd-ipadapter", "tryon", model)
        assert ipa.pipe.unet is sd.pipe.unet
        out = ok(sd.edit_batch([plain_row])) + ok(ipa.edit_batch(tryon(tiny_ip_adapter)))
        out += ok(ipa.edit_batch(tryon(other, (GARMENT,)))) + ok(sd.edit_batch([plain_row]))
        return sd, [r.image for r in out]

    _, want = run(None)
    torch._dynamo.reset()
    sd, got = run("aot_eager")
    assert isinstance(sd.pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert not np.array_equal(got[1], got[2])  # the image prompt reaches the compiled UNet
    assert not np.array_equal(got[1], got[3])  # so does the second adapter's weights
    for a, b in zip(got, want):
        assert np.array_equal(a, b)


def test_concat_attention_weights_load_into_a_compiled_unet(tiny_models, attention_ckpt):
    """concat finds the UNet's self-attention parameters by their diffusers names, which the
    compiled wrapper prefixes with ``_orig_mod.``: the weights must still load and reach the graph."""
    import torch._dynamo

    from editflow.engines.tryon_sd import ConcatTryOnEngine

    rows = [request("tryon", reference=GARMENT, category="upper"),
            request("tryon", reference=GARMENT, category="upper", params={"attention": "none"})]

    def run(compile_):
        e = ConcatTryOnEngine.from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu",
                                              attention=str(attention_ckpt), compile=compile_)
        return e, [ok(e.edit_batch([row]))[0].image for row in rows]

    _, want = run(None)
    torch._dynamo.reset()
    e, got = run("aot_eager")
    assert isinstance(e.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert not np.array_equal(got[0], got[1])  # the checkpoint changed the compiled UNet's output
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


@pytest.mark.slow
def test_compile_switch_runs_inductor_on_both_paths(tiny_models):
    """The switch as a GPU user turns it on (`--compile`: inductor, max-autotune-no-cudagraphs),
    compiled for real by inductor's C++ backend: a minute or more on a small CPU."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from editflow.engines.sd import SDEngine

    rows = [request("repaint", jump_length=2, jump_n_sample=2), request("inpaint")]  # sampler, pipeline
    plain = SDEngine.from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu")
    want = [ok(plain.edit_batch([row]))[0].image for row in rows]
    torch._dynamo.reset()
    e = SDEngine.from_pretrained(model=str(tiny_models["sd-inpaint"]), device="cpu", compile=True)
    got = [ok(e.edit_batch([row]))[0].image for row in rows]
    assert sum(counters["inductor"].values()) > 0  # inductor generated the UNet's code
    for a, b in zip(got, want):  # fused kernels round differently: equal up to a grey level
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


# -- 10: attention slicing never silently replaces SDPA ----------------------------------------

def test_attention_slicing_keeps_sdpa_and_says_so(tmp_path, caplog):
    """SDPA already computes attention without the full matrix; slicing would swap it for slower
    classic attention. Asked for with SDPA on, slicing is not applied and the run is told why;
    with SDPA off (`--no-sdpa`) every layer is sliced and stays sliced."""
    from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor

    from editflow.engines.sd import SDEngine
    from editflow.models import SLICING_NOT_NEEDED

    with caplog.at_level("WARNING", logger="editflow.models"):
        e = SDEngine(tiny_pipe("sd-inpaint", tmp_path), device="cpu", attention_slicing=True)
    procs = e.pipe.unet.attn_processors.values()
    assert procs and all(isinstance(p, AttnProcessor2_0) for p in procs)
    assert "attention_slicing" not in e.switches and SLICING_NOT_NEEDED in caplog.text
    ok(e.edit_batch([request("repaint", jump_length=2, jump_n_sample=2)]))

    sliced = SDEngine(tiny_pipe("sd-inpaint", tmp_path / "b"), device="cpu", attention_slicing=True, sdpa=False)
    procs = sliced.pipe.unet.attn_processors.values()
    assert all(isinstance(p, SlicedAttnProcessor) for p in procs)  # --no-sdpa's classic processors don't undo it
    assert sliced.switches == ["classic_attention", "attention_slicing"]


def test_cli_tells_a_slicing_request_under_sdpa(capsys, monkeypatch):
    from editflow.cli import build_parser, _switches
    from editflow.models import SLICING_NOT_NEEDED

    monkeypatch.delenv("EDITFLOW_SDPA", raising=False)
    monkeypatch.delenv("EDITFLOW_ATTENTION_SLICING", raising=False)
    args = build_parser().parse_args(["run", "m.jsonl", "-o", "out", "--attention-slicing"])
    assert _switches(args)["attention_slicing"] is True
    assert SLICING_NOT_NEEDED in capsys.readouterr().err
    _switches(build_parser().parse_args(["run", "m.jsonl", "-o", "out", "--attention-slicing", "--no-sdpa"]))
    assert SLICING_NOT_NEEDED not in capsys.readouterr().err
