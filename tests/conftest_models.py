"""Session fixtures for the diffusers engines: tiny random-weight checkpoints saved once.

Import the fixtures into a test module (``from tests.conftest_models import tiny_models  # noqa``).
The folder is keyed by the session's base temp dir, so modules that import the fixture share the
files (saving skips checkpoints already written).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*torch_dtype.*")
warnings.filterwarnings("ignore", message=".*should be kept in float32.*")


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
