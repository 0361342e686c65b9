"""Shared fixtures: small generated images, manifests written to temp folders, and tiny random-weight
diffusers checkpoints saved once per session (tests/tiny_models.py)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.s3_server import moto_endpoint, s3_bucket  # noqa: F401 (fixtures for every test module)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*torch_dtype.*")
warnings.filterwarnings("ignore", message=".*should be kept in float32.*")

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "manifests" / "assets"


def textured_image(width: int = 96, height: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth gradient with noise: every pixel differs from a flat fill."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def write_image(path: Path, array: np.ndarray | None = None, **kwargs) -> Path:
    Image.fromarray(textured_image(**kwargs) if array is None else array).save(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """A folder with two small photos: a.png (96x64) and b.png (72x100)."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "a.png", width=96, height=64, seed=1)
    write_image(folder / "b.png", width=72, height=100, seed=2)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """name -> folder for "sd-inpaint", "sd", "sdxl-inpaint", "sdxl", "ddpm" (see tests/tiny_models.py)."""
    from tests.tiny_models import save_tiny_models

    return save_tiny_models(tmp_path_factory.getbasetemp() / "tiny_models")


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch) -> Path:
    """HF_HUB_OFFLINE=1 with an empty hub cache: no hub model is available."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def tiny_ip_adapter(tiny_models) -> Path:
    """A tiny IP-Adapter (safetensors) + CLIP image encoder in h94/IP-Adapter's folder layout,
    made for the tiny SD UNets (cross-attention 32)."""
    from diffusers import UNet2DConditionModel

    from tests.tiny_models import save_tiny_ip_adapter

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd-inpaint"], subfolder="unet")
    return save_tiny_ip_adapter(Path(tiny_models["sd-inpaint"]).parent / "ip_adapter", unet)


@pytest.fixture(scope="session")
def tiny_ip_adapter_plus(tiny_models) -> Path:
    """h94/IP-Adapter's folder layout holding both a tiny plain and a tiny IP-Adapter-plus (Resampler)."""
    from diffusers import UNet2DConditionModel

    from tests.tiny_models import save_tiny_ip_adapter_plus

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd-inpaint"], subfolder="unet")
    return save_tiny_ip_adapter_plus(Path(tiny_models["sd-inpaint"]).parent / "ip_adapter_plus", unet)
