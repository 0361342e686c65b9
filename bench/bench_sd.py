"""Benchmark the `sd` engine on a full-size SD 1.5-architecture model with random weights (no download).

    python -m bench.bench_sd              # CPU: seconds per denoising step at 512 px (1 warm-up + 1 timed
                                          #   step without and with CFG); GPU part when CUDA is present
    python -m bench.bench_sd --vae        # also time one VAE encode + decode at 512 px on the CPU
    python -m bench.bench_sd --tiny       # smoke test of every code path with tiny models at 64 px
    bench/gpu_check.sh                    # the prepared GPU check (under 8 minutes on one H100/H200)

The UNet (859.5 M parameters, 9-channel inpainting variant), VAE (83.7 M) and CLIP ViT-L text encoder
(123 M) are built from the published SD 1.5 configs with random weights: speed does not depend on
the weights. On CUDA the GPU part measures, for fp16 and for bf16 in the same run, 8 rows of 30-step
CFG inpainting at 512 px through the editflow engine at micro-batch 1/4/8 (diffusers' inpaint
pipeline with per-row generators), the editflow sampler path (latent RePaint without jumps) at
micro-batch 8, and a naive loop that calls the pipeline once per image: images/s, GPU-seconds per
row, peak GPU memory, the best/naive ratio, and the fraction of the H100 bf16 ceiling (989 TFLOP/s;
the SD 1.5 UNet costs ~0.80 TFLOP per evaluation at 512 px, two evaluations per step with CFG).
Any failing row or non-finite naive output stops the bench with an error (exit status 1). Without
CUDA it prints a note and skips.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SD15_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280), center_input_sample=False,
    cross_attention_dim=768, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), downsample_padding=1,
    flip_sin_to_cos=True, freq_shift=0, layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-5,
    norm_num_groups=32, out_channels=4, sample_size=64, up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
SD15_VAE = dict(
    act_fn="silu", block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3, sample_size=512,
    up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215,
)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", projection_dim=768,
              bos_token_id=0, eos_token_id=1, pad_token_id=1)


def params(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def build_components(tiny: bool, in_channels: int = 9) -> dict:
    """SD 1.5 components from config, random weights (or the test suite's tiny ones)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.tiny_models import build_tokenizer, tiny_sd_components

    tok_dir = Path(tempfile.mkdtemp(prefix="editflow-bench-tok-"))
    if tiny:
        return tiny_sd_components(in_channels, tok_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        unet = UNet2DConditionModel(in_channels=in_channels, **SD15_UNET).eval()
        vae = AutoencoderKL(**SD15_VAE).eval()
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L)).eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": build_tokenizer(tok_dir),
            "scheduler": scheduler}


def cpu_part(c: dict, size: int, with_vae: bool) -> dict:
    """Seconds per denoising step (one UNet call through the editflow denoiser) at `size` px on the CPU."""
    from editflow.diffusion.unets import LatentCondition, LatentUNetDenoiser

    d = LatentUNetDenoiser(c["unet"], c["vae"], "epsilon", rows_per_call=1)
    s = d.scale_factor
    h = size // s
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, h, h, generator=g)
    emb = torch.randn(1, 77, c["unet"].config.cross_attention_dim, generator=g)
    cond = LatentCondition(prompt_embeds=emb, negative_embeds=None, guidance_scale=1.0,
                           mask=torch.ones(1, 1, h, h), masked_latents=torch.randn(1, 4, h, h, generator=g))
    t, abar = torch.tensor([500]), torch.tensor([0.3])
    out: dict = {"size_px": size, "latent": h, "threads": torch.get_num_threads()}
    with torch.no_grad():
        t0 = time.perf_counter()
        d.predict(x, t, abar, cond)  # warm-up (allocations, oneDNN primitive creation)
        out["warmup_step_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        d.predict(x, t, abar, cond)
        out["step_s_no_cfg"] = round(time.perf_counter() - t0, 2)
        cond.negative_embeds, cond.guidance_scale = torch.zeros_like(emb), 7.5
        t0 = time.perf_counter()
        d.predict(x, t, abar, cond)
        out["step_s_cfg"] = round(time.perf_counter() - t0, 2)
        if with_vae:
            img = torch.rand(1, 3, size, size, generator=g) * 2 - 1
            t0 = time.perf_counter()
            z = d.encode(img)
            out["vae_encode_s"] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            d.decode(z)
            out["vae_decode_s"] = round(time.perf_counter() - t0, 2)
    return out


def requests(n: int, size: int, steps: int) -> list:
    from editflow.engines.base import EditRequest

    rng = np.random.default_rng(0)
    mask = np.zeros((size, size), np.float32)
    mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return [EditRequest(id=str(i), task="inpaint", image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                        mask=mask, seed=i, prompt="a photo of a cat", negative_prompt="blurry", steps=steps,
                        guidance_scale=7.5) for i in range(n)]


#: the bf16 dense tensor ceiling of an H100 SXM (TFLOP/s) and the SD 1.5 UNet's cost per evaluation
#: at 512 px (one row, one timestep): ~0.80 TFLOP (2 x 0.40 TMAC, fvcore-style count of the 64x64 UNet)
H100_BF16_TFLOPS = 989.0
UNET_TFLOP_PER_EVAL_512 = 0.80


def check(results: list) -> None:
    """A benchmark of a failing path must fail, never report a fast images/s."""
    bad = [r for r in results if isinstance(r, Exception)]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(results)} rows failed: {type(bad[0]).__name__}: {bad[0]}") from bad[0]


def throughput_part(c: dict, device: str, size: int, steps: int, micro_batches: tuple[int, ...], repeats: int,
                    dtypes: tuple[str, ...] = ("fp16", "bf16"), rows: int = 8) -> dict:
    """Per dtype: images/s, GPU-seconds per row and peak memory of `rows` rows of 30-step CFG
    inpainting at `size` px through the editflow engine at each micro-batch (diffusers' inpaint
    pipeline path, and the editflow sampler path), against a naive loop calling the same pipeline
    once per image; plus the fraction of the H100 bf16 ceiling the best configuration reaches."""
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    from editflow.diffusion.device import pipeline_vae
    from editflow.engines.sd import SDEngine

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    reqs = requests(rows, size, steps)
    sampler_reqs = [r.__class__(**{**r.__dict__, "params": {"sampler": True}}) for r in reqs]
    images = [Image.fromarray(r.image) for r in reqs]
    mask = Image.fromarray((reqs[0].mask * 255).astype(np.uint8))
    out: dict = {"device": device, "size_px": size, "steps": steps, "guidance_scale": 7.5, "rows": rows}
    evals_per_image = 2 * steps  # classifier-free guidance: two UNet evaluations per step
    tflop_per_image = evals_per_image * UNET_TFLOP_PER_EVAL_512 * (size / 512) ** 2

    def timed(fn) -> tuple[float, float | None]:
        """(seconds per call, peak GiB) after one warm-up call at this shape."""
        fn()
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        seconds = (time.perf_counter() - t0) / repeats
        peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
        return seconds, peak

    for dtype in dtypes:
        pipe = StableDiffusionInpaintPipeline(**c, safety_checker=None, feature_extractor=None,
                                              requires_safety_checker=False)
        part: dict = {}
        for mb in micro_batches:
            engine = SDEngine(pipe, device=device, model="random-sd15-inpaint", dtype=dtype, micro_batch=mb)
            seconds, peak = timed(lambda: check(engine.edit_batch(reqs)))
            part[f"pipeline_mb{mb}"] = {"img_s": round(rows / seconds, 3), "gpu_s_per_row": round(seconds / rows, 3),
                                        "peak_gib": peak}
        seconds, peak = timed(lambda: check(engine.edit_batch(sampler_reqs)))
        part[f"sampler_mb{micro_batches[-1]}"] = {"img_s": round(rows / seconds, 3),
                                                  "gpu_s_per_row": round(seconds / rows, 3), "peak_gib": peak}
        naive_pipe = engine.inpaint_pipe

        def naive() -> None:
            with pipeline_vae(naive_pipe.vae, naive_pipe.unet.dtype, engine.vae_dtype):  # as diffusers loads it
                naive_rows()

        def naive_rows() -> None:
            for i in range(rows):
                result = naive_pipe(prompt="a photo of a cat", negative_prompt="blurry", image=images[i],
                                    mask_image=mask, height=size, width=size, num_inference_steps=steps,
                                    guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(i),
                                    output_type="np").images
                if not np.isfinite(result).all():
                    raise RuntimeError("naive loop produced non-finite pixels")

        seconds, peak = timed(naive)
        part["naive_loop"] = {"img_s": round(rows / seconds, 3), "gpu_s_per_row": round(seconds / rows, 3),
                              "peak_gib": peak}
        best = max(v["img_s"] for k, v in part.items() if k.startswith("pipeline"))
        part["best_vs_naive"] = round(best / part["naive_loop"]["img_s"], 2)
        part["unet_tflops_achieved"] = round(best * tflop_per_image, 1)
        part["fraction_of_h100_bf16_ceiling"] = round(best * tflop_per_image / H100_BF16_TFLOPS, 3)
        part["switches"], part["vae_dtype"] = engine.switches, str(engine.vae_dtype).replace("torch.", "")
        out[dtype] = part
        print(f"{device} {dtype}:", json.dumps(part), flush=True)
        del engine, naive_pipe, pipe
        if cuda:
            torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny random models at 64 px: a smoke test of the code paths")
    ap.add_argument("--vae", action="store_true", help="also time a VAE encode + decode on the CPU")
    ap.add_argument("--steps", type=int, default=30, help="GPU part: denoising steps (default 30)")
    ap.add_argument("--repeats", type=int, default=2, help="GPU part: timed repeats per batch size")
    ap.add_argument("--skip-cpu", action="store_true", help="skip the CPU step timing")
    args = ap.parse_args(argv)

    import diffusers

    report: dict = {"torch": torch.__version__, "diffusers": diffusers.__version__, "cpu": platform.processor() or
                    platform.machine(), "cores": os.cpu_count()}
    t0 = time.perf_counter()
    c = build_components(args.tiny)
    report["build_s"] = round(time.perf_counter() - t0, 1)
    report["params_M"] = {k: round(params(c[k]), 1) for k in ("unet", "vae", "text_encoder")}
    size = 64 if args.tiny else 512
    print(f"built {'tiny' if args.tiny else 'SD 1.5-size'} components in {report['build_s']} s: {report['params_M']}",
          flush=True)
    if not args.skip_cpu:
        report["cpu_fp32"] = cpu_part(c, size, args.vae)
        print("cpu:", json.dumps(report["cpu_fp32"]), flush=True)
    if torch.cuda.is_available():
        report["gpu_name"] = torch.cuda.get_device_name(0)
        report["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        report["gpu"] = throughput_part(c, "cuda", size, args.steps, (1, 4, 8), args.repeats)
    elif args.tiny:
        report["throughput_cpu_tiny"] = throughput_part(c, "cpu", size, 2, (1, 4), 1, dtypes=("fp32", "bf16"), rows=4)
    else:
        report["gpu"] = "skipped: no CUDA device on this machine"
        print("note: no CUDA device here; the GPU throughput part (fp16 and bf16, micro-batch 1/4/8 vs a naive "
              "loop) was skipped", flush=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
