"""Benchmark the `sd` engine on a full-size SD 1.5-architecture model with random weights (no download).

    python -m bench.bench_sd              # CPU: seconds per denoising step at 512 px (1 warm-up + 1 timed
                                          #   step without and with CFG); GPU part when CUDA is present
    python -m bench.bench_sd --vae        # also time one VAE encode + decode at 512 px on the CPU
    python -m bench.bench_sd --tiny       # smoke test of every code path with tiny models at 64 px

The UNet (859.5 M parameters, 9-channel inpainting variant), VAE (83.7 M) and CLIP ViT-L text encoder
(123 M) are built from the published SD 1.5 configs with random weights: speed does not depend on
the weights. On CUDA (bf16, SDPA) the GPU part compares, in the same run, images/s of 30-step CFG
inpainting at 512 px through the editflow engine at batch 1/4/8 (diffusers' inpaint pipeline with
per-row generators) against a naive loop that calls the pipeline once per image, and the editflow
sampler path (latent RePaint without jumps) at batch 8. Without CUDA it prints a note and skips.
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


def throughput_part(c: dict, device: str, size: int, steps: int, batches: tuple[int, ...], repeats: int) -> dict:
    """images/s: editflow engine at each batch size vs a naive per-image diffusers loop, same pipeline."""
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    from editflow.engines.sd import SDEngine

    pipe = StableDiffusionInpaintPipeline(**c, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    engine = SDEngine(pipe, device=device, model="random-sd15-inpaint")
    pipe = engine.pipe
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    reqs = requests(max(batches), size, steps)
    result: dict = {"device": device, "dtype": str(engine.dtype).replace("torch.", ""), "size_px": size,
                    "steps": steps, "guidance_scale": 7.5, "switches": engine.switches,
                    "rows_per_call": engine.rows_per_call}

    def timed(fn) -> float:
        fn()  # warm-up at this shape
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        return (time.perf_counter() - t0) / repeats

    for bs in batches:
        def run(bs=bs):
            out = engine.edit_batch(reqs[:bs])
            bad = [r for r in out if isinstance(r, Exception)]
            if bad:
                raise bad[0]
        result[f"editflow_bs{bs}_img_s"] = round(bs / timed(run), 3)

    sampler_reqs = [r.__class__(**{**r.__dict__, "params": {"sampler": True}}) for r in reqs]
    bs = max(batches)
    result[f"editflow_sampler_bs{bs}_img_s"] = round(bs / timed(lambda: engine.edit_batch(sampler_reqs[:bs])), 3)

    n = max(batches)
    images = [Image.fromarray(r.image) for r in reqs[:n]]
    mask = Image.fromarray((reqs[0].mask * 255).astype(np.uint8))

    def naive():
        for i in range(n):
            pipe(prompt="a photo of a cat", negative_prompt="blurry", image=images[i], mask_image=mask,
                 height=size, width=size, num_inference_steps=steps, guidance_scale=7.5,
                 generator=torch.Generator("cpu").manual_seed(i))
    result["naive_loop_img_s"] = round(n / timed(naive), 3)
    return result


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
        report["gpu"] = throughput_part(c, "cuda", size, args.steps, (1, 4, 8), args.repeats)
        print("gpu:", json.dumps(report["gpu"]), flush=True)
    elif args.tiny:
        report["throughput_cpu_tiny"] = throughput_part(c, "cpu", size, 2, (1, 4), 1)
        print("throughput (tiny, cpu):", json.dumps(report["throughput_cpu_tiny"]), flush=True)
    else:
        report["gpu"] = "skipped: no CUDA device on this machine"
        print("note: no CUDA device here; the GPU throughput part (bf16, batch 1/4/8 vs naive loop) was skipped",
              flush=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
