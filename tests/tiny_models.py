"""Tiny random-weight diffusers models built from config, saved like real checkpoints.

Nothing here touches the network: the CLIP tokenizer comes from a hand-written BPE vocabulary
(research/inpainting.md §5: transformers 5 needs `from_pretrained(dir)` with a
`tokenizer_config.json` that sets `model_max_length`, or the pipeline overflows). Every model is
written with `save_pretrained` (safetensors) so tests load it through the same
`from_pretrained(..., local_files_only=True)` path that real weights take.

    paths = save_tiny_models(tmp_dir)   # {"sd-inpaint": ..., "sd": ..., "sdxl-inpaint": ..., "ddpm": ...}

Sizes: SD-shaped UNets have two blocks (sample_size 32) and the VAEs two blocks, so diffusers'
vae_scale_factor (2 ** (len(block_out_channels) - 1)) is 2, as in the diffusers test suite's
dummies: a 64 px image has 32x32 latents, and the models' native resolution is 32 x 2 = 64 px.
The DDPM UNet is 32 px.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

__all__ = [
    "build_tokenizer",
    "tiny_sd_components",
    "tiny_sdxl_components",
    "tiny_ddpm_unet",
    "save_tiny_models",
]


def build_tokenizer(folder: Path):
    """A CLIPTokenizer from a 55-token BPE vocabulary written to `folder` (offline, transformers 5)."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    letters = string.ascii_lowercase
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    vocab.update({c: 3 + i for i, c in enumerate(letters)})
    vocab.update({c + "</w>": 29 + i for i, c in enumerate(letters)})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return CLIPTokenizer.from_pretrained(folder)


def _text_config(projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    kwargs = dict(
        bos_token_id=0, eos_token_id=1, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=1000,
    )
    if projection_dim is not None:
        kwargs.update(projection_dim=projection_dim, hidden_act="gelu")
    return CLIPTextConfig(**kwargs)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=32, sample_size=64, force_upcast=False,
    )


def _sd_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )


def tiny_sd_components(in_channels: int, tokenizer_dir: Path, seed: int = 0) -> dict:
    """UNet (4 or 9 input channels), VAE, CLIP text encoder, tokenizer and DDIM scheduler."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=in_channels,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = _vae()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config())
    return {
        "unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(),
        "tokenizer": build_tokenizer(tokenizer_dir), "scheduler": _sd_scheduler(),
    }


def tiny_sdxl_components(in_channels: int, tokenizer_dir: Path, seed: int = 0) -> dict:
    """SDXL-shaped: two text encoders (the second with projection), text_time added conditioning."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=in_channels,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=64, norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = _vae()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(projection_dim=32))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(projection_dim=32))
    tokenizer = build_tokenizer(tokenizer_dir)
    return {
        "unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(),
        "text_encoder_2": text_encoder_2.eval(), "tokenizer": tokenizer, "tokenizer_2": tokenizer,
        "scheduler": _sd_scheduler(),
    }


def tiny_ddpm_unet(seed: int = 0):
    """A pixel-space UNet2DModel like diffusers' old RePaint test (32 px, 2 blocks)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=3, out_channels=3,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
    ).eval()


def save_tiny_models(root: Path) -> dict[str, Path]:
    """Write every tiny checkpoint under `root`; return name -> folder.

    * ``sd-inpaint``: StableDiffusionInpaintPipeline, 9-channel UNet (model_index.json layout)
    * ``sd``: StableDiffusionPipeline, 4-channel UNet
    * ``sdxl-inpaint``: StableDiffusionXLInpaintPipeline, 9-channel UNet
    * ``sdxl``: StableDiffusionXLPipeline, 4-channel UNet
    * ``sd-pix2pix``: StableDiffusionInstructPix2PixPipeline, 8-channel UNet (CatVTON's mask-free base)
    * ``ddpm``: DDPMPipeline layout (unet/ + scheduler/), linear betas, 1000 train steps
    """
    from diffusers import (
        DDPMPipeline, DDPMScheduler, StableDiffusionInpaintPipeline, StableDiffusionInstructPix2PixPipeline,
        StableDiffusionPipeline, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline,
    )

    root = Path(root)
    tok = root / "_tokenizer"
    paths: dict[str, Path] = {}
    no_safety = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    builds = {
        "sd-inpaint": lambda: StableDiffusionInpaintPipeline(**tiny_sd_components(9, tok), **no_safety),
        "sd": lambda: StableDiffusionPipeline(**tiny_sd_components(4, tok, seed=10), **no_safety),
        "sdxl-inpaint": lambda: StableDiffusionXLInpaintPipeline(**tiny_sdxl_components(9, tok, seed=20)),
        "sdxl": lambda: StableDiffusionXLPipeline(**tiny_sdxl_components(4, tok, seed=30)),
        "sd-pix2pix": lambda: StableDiffusionInstructPix2PixPipeline(**tiny_sd_components(8, tok, seed=60),
                                                                     **no_safety),
        "ddpm": lambda: DDPMPipeline(unet=tiny_ddpm_unet(seed=40), scheduler=DDPMScheduler(num_train_timesteps=1000)),
    }
    for name, build in builds.items():
        folder = root / name
        if not (folder / "model_index.json").exists():
            build().save_pretrained(folder, safe_serialization=True)
        paths[name] = folder
    return paths


# ---------------------------------------------------------------------------------------------
# Reference-conditioned engines: IP-Adapter, CLIP image encoder, self-attention checkpoints


def tiny_image_encoder(seed: int = 50):
    """A CLIPVisionModelWithProjection: 32 px images, 4 px patches, 32-d embeddings."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, projection_dim=32, intermediate_size=37, layer_norm_eps=1e-05,
                              num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=4)
    return CLIPVisionModelWithProjection(config).eval()


def tiny_ip_adapter_state_dict(unet, image_embed_dim: int = 32, seed: int = 51, tokens: int = 4) -> dict:
    """A plain IP-Adapter for `unet`, flat like h94's safetensors: ``image_proj.proj.*``,
    ``image_proj.norm.*`` and ``ip_adapter.<1, 3, 5, ...>.to_k_ip/to_v_ip.weight`` (one pair per
    cross-attention layer, numbered as diffusers' `_convert_ip_adapter_attn_to_diffusers` reads them)."""
    cfg = unet.config
    cross = int(cfg.cross_attention_dim)
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return (torch.randn(*shape, generator=g) * scale).contiguous()

    state = {
        "image_proj.proj.weight": rand(tokens * cross, image_embed_dim),
        "image_proj.proj.bias": rand(tokens * cross, scale=0.05),
        "image_proj.norm.weight": torch.ones(cross) + rand(cross, scale=0.05),
        "image_proj.norm.bias": rand(cross, scale=0.05),
    }
    key = 1
    for name in unet.attn_processors.keys():
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = cfg.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(cfg.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = cfg.block_out_channels[int(name[len("down_blocks.")])]
        state[f"ip_adapter.{key}.to_k_ip.weight"] = rand(hidden, cross)
        state[f"ip_adapter.{key}.to_v_ip.weight"] = rand(hidden, cross)
        key += 2
    return state


def save_tiny_ip_adapter(root: Path, unet) -> Path:
    """h94/IP-Adapter's layout under `root`: models/ip-adapter_sd15.safetensors + models/image_encoder/."""
    from safetensors.torch import save_file

    root = Path(root)
    weights = root / "models" / "ip-adapter_sd15.safetensors"
    if not weights.exists():
        encoder = tiny_image_encoder()
        (root / "models").mkdir(parents=True, exist_ok=True)
        encoder.save_pretrained(root / "models" / "image_encoder", safe_serialization=True)
        save_file(tiny_ip_adapter_state_dict(unet, int(encoder.config.projection_dim)), str(weights))
    return root


def save_attention_checkpoint(unet, path: Path, seed: int = 52, noise: float = 0.05, prefix: str = "") -> Path:
    """A CatVTON-style checkpoint: the UNet's own self-attention (attn1) weights, perturbed."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    state = {
        prefix + name: (p.detach().float() + noise * torch.randn(p.shape, generator=g)).contiguous()
        for name, p in unet.named_parameters() if ".attn1." in name
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return Path(path)


def catvton_attention_state_dict(unet, stride: int = 8, seed: int = 53, dtype=torch.float32) -> dict:
    """Self-attention weights keyed as CatVTON publishes them: ``<i>.<param>`` where ``i`` counts the
    modules whose name contains ``attn1`` in CatVTON's UNet, whose attention processors are modules
    too: 8 entries per layer (``0.*, 8.*, 16.*, ...``). Values: the UNet's own weights plus noise
    (zeros on the meta device, where only the shapes exist)."""
    g = torch.Generator().manual_seed(seed)
    layers = [m for n, m in unet.named_modules() if n.split(".")[-1] == "attn1"]
    state = {}
    for k, layer in enumerate(layers):
        for name, p in layer.named_parameters():
            if p.device.type == "meta":
                value = torch.zeros(p.shape, dtype=dtype)
            else:
                value = (p.detach().float() + 0.05 * torch.randn(p.shape, generator=g)).to(dtype)
            state[f"{stride * k}.{name}"] = value.contiguous()
    return state


SD15_INPAINT_UNET_CONFIG = dict(  # runwayml/stable-diffusion-inpainting unet/config.json (architecture keys)
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], center_input_sample=False,
    cross_attention_dim=768, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], downsample_padding=1,
    flip_sin_to_cos=True, freq_shift=0, in_channels=9, layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-05,
    norm_num_groups=32, out_channels=4, sample_size=64, up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
)


def sd15_inpaint_unet_on_meta():
    """SD 1.5 inpainting's UNet architecture with no memory behind it (parameters on the meta device)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**SD15_INPAINT_UNET_CONFIG)


def tiny_ip_adapter_plus_state_dict(unet, image_hidden_size: int = 32, seed: int = 54, tokens: int = 4,
                                    hidden: int = 32, heads: int = 1, depth: int = 4) -> dict:
    """An IP-Adapter-plus for `unet`, flat like h94's ``ip-adapter-plus_sd15.safetensors``: the
    Resampler (``image_proj.latents``, ``proj_in``, ``proj_out``, ``norm_out``, ``layers.<i>.0``
    perceiver attention with ``norm1/norm2/to_q/to_kv/to_out``, ``layers.<i>.1.{0,1,3}`` feed-forward)
    that diffusers' `_convert_ip_adapter_image_proj_to_diffusers` turns into
    `IPAdapterPlusImageProjection`, and the same ``ip_adapter.<n>.to_k_ip/to_v_ip`` as the plain one.
    diffusers reads the head count as ``to_q`` rows // 64, so attention is 64 wide per head."""
    cross = int(unet.config.cross_attention_dim)
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return (torch.randn(*shape, generator=g) * scale).contiguous()

    inner = 64 * heads
    state = {
        "image_proj.latents": rand(1, tokens, hidden, scale=hidden ** -0.5),
        "image_proj.proj_in.weight": rand(hidden, image_hidden_size), "image_proj.proj_in.bias": rand(hidden),
        "image_proj.proj_out.weight": rand(cross, hidden), "image_proj.proj_out.bias": rand(cross),
        "image_proj.norm_out.weight": torch.ones(cross), "image_proj.norm_out.bias": torch.zeros(cross),
    }
    for i in range(depth):
        p = f"image_proj.layers.{i}"
        state.update({
            f"{p}.0.norm1.weight": torch.ones(hidden), f"{p}.0.norm1.bias": torch.zeros(hidden),
            f"{p}.0.norm2.weight": torch.ones(hidden), f"{p}.0.norm2.bias": torch.zeros(hidden),
            f"{p}.0.to_q.weight": rand(inner, hidden), f"{p}.0.to_kv.weight": rand(2 * inner, hidden),
            f"{p}.0.to_out.weight": rand(hidden, inner),
            f"{p}.1.0.weight": torch.ones(hidden), f"{p}.1.0.bias": torch.zeros(hidden),
            f"{p}.1.1.weight": rand(4 * hidden, hidden), f"{p}.1.3.weight": rand(hidden, 4 * hidden),
        })
    plain = tiny_ip_adapter_state_dict(unet, seed=seed + 1)
    state.update({k: v for k, v in plain.items() if k.startswith("ip_adapter.")})
    return state


def save_tiny_ip_adapter_plus(root: Path, unet) -> Path:
    """h94/IP-Adapter's layout with both adapters: models/ip-adapter_sd15.safetensors,
    models/ip-adapter-plus_sd15.safetensors and models/image_encoder/."""
    from safetensors.torch import save_file

    root = save_tiny_ip_adapter(root, unet)
    weights = root / "models" / "ip-adapter-plus_sd15.safetensors"
    if not weights.exists():
        save_file(tiny_ip_adapter_plus_state_dict(unet), str(weights))
    return root
