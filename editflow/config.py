"""Run configuration: small, picklable settings shared by the CLI, the stages and the runners."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import PurePath

from editflow.engines import DEFAULT_ENGINE
from editflow.media import DEFAULT_QUALITY, MediaError, MediaPolicy

OUTPUT_FORMATS = ("png", "jpeg", "webp")
ENGINE_SWITCHES = ("dtype", "cpu_offload", "attention_slicing", "sdpa", "vae_tiling", "micro_batch", "compile",
                   "safety_checker")
FORMAT_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def format_for_path(path: str, requested: str | None = None) -> str:
    """The format of an output written to ``path``: the extension's, which ``requested`` (e.g.
    --format) may repeat but not contradict; png for a path without an extension."""
    suffix = PurePath(path).suffix.lower()
    wanted = {"jpg": "jpeg"}.get(requested.lower(), requested.lower()) if requested else None
    if wanted is not None and wanted not in OUTPUT_FORMATS:
        raise MediaError(f"unsupported output format {requested!r} (use {', '.join(OUTPUT_FORMATS)})")
    if not suffix:
        return wanted or "png"
    if suffix not in FORMAT_SUFFIXES:
        raise MediaError(f"cannot tell the output format of {path}: use a .png, .jpg or .webp name")
    if wanted is not None and wanted != FORMAT_SUFFIXES[suffix]:
        raise MediaError(f"--format {requested} contradicts the output name {path} ({suffix} is "
                         f"{FORMAT_SUFFIXES[suffix]}); change one of them")
    return FORMAT_SUFFIXES[suffix]


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
    #: torch CPU threads for edits. Float reductions depend on the thread count, so the same
    #: count everywhere (default: the machine's cores, also inside Ray actors, where Ray would
    #: otherwise set 1) keeps a row's bytes identical locally and on Ray.
    cpu_threads: int | None = None
    output_format: str = "png"
    quality: int = DEFAULT_QUALITY  # JPEG/WebP only
    batch_size: int = 4
    write_masks: bool = True
    allowed_schemes: tuple[str, ...] = ("file",)
    allow_private_hosts: bool = False
    max_pixels: int = 50_000_000
    max_bytes: int = 64 * 2**20
    # model-backed masks (editflow/masks/auto.py): a segment-anything checkpoint file (or a folder
    # holding sam_vit_b_01ec64.pth etc.), its type (vit_b | vit_l | vit_h, or module:builder), and
    # whether landmark masks (face:, person) are refined by SAM when a checkpoint is configured
    sam_checkpoint: str | None = None
    sam_model_type: str = "vit_b"
    sam_refine: bool = False
    #: per-worker caches (masks per image and spec, reference encodings per reference); off only
    #: to measure what they save
    cache: bool = True
    # switches of the diffusers engines (editflow.models.RuntimeOptions); None = the EDITFLOW_*
    # environment variable of the process that loads the model, else the engine's default
    dtype: str | None = None  # auto | fp32 | fp16 | bf16
    cpu_offload: bool | None = None
    attention_slicing: bool | None = None
    sdpa: bool | None = None
    vae_tiling: bool | None = None
    micro_batch: int | None = None
    compile: bool | str | None = None  # on, or a torch.compile mode / backend name
    safety_checker: bool | None = None
    run_id: str = field(default_factory=new_run_id)

    def engine_options(self) -> dict:
        """The switches set for this run, as engine keyword arguments (travels to Ray actors
        with the pickled config, so no environment variable has to reach the workers)."""
        return {name: getattr(self, name) for name in ENGINE_SWITCHES if getattr(self, name) is not None}

    def mask_settings(self):
        from editflow.masks.auto import MaskSettings

        return MaskSettings(sam_checkpoint=self.sam_checkpoint, sam_model_type=self.sam_model_type,
                            sam_refine=self.sam_refine, device=self.device,
                            **({} if self.cache else {"cache_size": 0}))

    def media_policy(self) -> MediaPolicy:
        return MediaPolicy(
            allowed_schemes=frozenset(self.allowed_schemes),
            allow_private_hosts=self.allow_private_hosts,
            max_pixels=self.max_pixels,
            max_bytes=self.max_bytes,
        )
