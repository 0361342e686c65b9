"""Run configuration: small, picklable settings shared by the CLI, the stages and the runners."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from editflow.engines import DEFAULT_ENGINE
from editflow.media import MediaPolicy

OUTPUT_FORMATS = ("png", "jpeg", "webp")


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a short random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class RunConfig:
    """Everything a stage needs besides the rows. Names and paths only, never tensors."""

    out_dir: str
    base_dir: str = "."
    engine: str = DEFAULT_ENGINE
    model: str | None = None
    device: str | None = None  # None = cuda when present, else cpu
    output_format: str = "png"
    batch_size: int = 4
    write_masks: bool = True
    allowed_schemes: tuple[str, ...] = ("file",)
    allow_private_hosts: bool = False
    max_pixels: int = 50_000_000
    max_bytes: int = 64 * 2**20
    run_id: str = field(default_factory=new_run_id)

    def media_policy(self) -> MediaPolicy:
        return MediaPolicy(
            allowed_schemes=frozenset(self.allowed_schemes),
            allow_private_hosts=self.allow_private_hosts,
            max_pixels=self.max_pixels,
            max_bytes=self.max_bytes,
        )
