"""A1111-style generation text ("infotext"): the metadata other image tools already read.

Stable Diffusion web UI, ComfyUI loaders, Civitai and most image viewers parse one text block:

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 20, Sampler: DDIMScheduler, CFG scale: 7.5, Seed: 7, Size: 512x512, Model: ..., Denoising strength: 0.8

Editflow writes it into PNG ``parameters`` chunks and JPEG/WebP EXIF UserComment (see
``editflow.media.encode_image``) next to its own JSON. Only deterministic row fields go in, so a
row's output bytes stay the same locally and on Ray.
"""

from __future__ import annotations

import json
from typing import Any, Mapping


def _quote(value: Any) -> str:
    """A1111's quoting: values holding a comma, colon or newline become JSON strings."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def format_infotext(row: Mapping[str, Any]) -> str:
    """The A1111 text for a finished result row (prompt, negative prompt, then key: value pairs).

    Keys without a value are left out; Task, Engine, Size and Version are always there, so
    parsers that need three pairs on the last line always recognise it."""
    engine = row.get("engine") or ""
    pairs = {
        "Steps": row.get("steps") if row.get("steps") is not None else row.get("nfe"),
        "Sampler": row.get("scheduler") or engine,
        "CFG scale": row.get("guidance_scale"),
        "Seed": row.get("seed"),
        "Size": f"{row.get('width')}x{row.get('height')}",
        "Model": row.get("model") or engine,
        "Denoising strength": row.get("strength"),
        "Task": row.get("task"),
        "Engine": engine,
        "NFE": row.get("nfe"),
        "Mask": row.get("mask_spec"),
        "Version": f"editflow {row.get('editflow_version') or ''}".strip(),
    }
    settings = ", ".join(f"{key}: {_quote(value)}" for key, value in pairs.items()
                         if value is not None and value != "")
    return "\n".join([row.get("prompt") or "", f"Negative prompt: {row.get('negative_prompt') or ''}", settings])
