"""Shared fixtures: small generated images, manifests written to temp folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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
