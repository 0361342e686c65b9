"""Model registry: engine names -> the models they expect and how to load them; offline rules.

A row's `model` (or the run's `--model`) is one of

* a **hub id**, optionally pinned: ``stable-diffusion-v1-5/stable-diffusion-inpainting`` or
  ``org/name@<revision>`` (branch, tag or commit);
* a **local diffusers folder** (``model_index.json``, or a bare ``config.json`` model for ddpm);
* a **single checkpoint file** (``.safetensors``; ``.ckpt`` too), loaded with diffusers'
  ``from_single_file`` (it needs the matching diffusers configs: cached, or given as
  ``EDITFLOW_SINGLE_FILE_CONFIG=<local diffusers folder or hub id>``).

Offline rules: with ``HF_HUB_OFFLINE=1`` nothing is fetched (``local_files_only=True``); hub ids
load from the Hugging Face cache only. When the weights are not there — offline, or no network —
loading raises `ModelNotAvailableError`, whose message names the model, where it was looked for
and the command that fetches it. The edit stage turns that into an error row for the rows that
need the model; the rest of the job goes on.

Device and dtype (`select_device`, `select_dtype`): cuda -> bf16 on compute capability >= 8
(Ampere and later), else fp16 (V100 / T4 only emulate bf16);
mps -> fp32 (fp16 gives black images on some MPS builds, diffusers #4480, IOPaint's choice);
cpu -> fp32. Override with the engine option / ``EDITFLOW_DTYPE`` (fp32, fp16, bf16).

Memory and speed switches (`RuntimeOptions`, engine options or environment variables, all off on
CPU by default): attention slicing, VAE tiling, model CPU offload (CUDA only), SDPA attention
(diffusers' default processor; ``sdpa=False`` forces the classic one), `micro_batch` (rows per
network call: 1 on CPU so a row's bytes never depend on its batch mates; the whole batch on GPU) and
`compile` (torch.compile of the UNet: on, or a mode or backend name; `compile_kwargs`).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editflow.errors import EditflowError

__all__ = [
    "ModelNotAvailableError",
    "ModelSource",
    "ModelInfo",
    "RuntimeOptions",
    "parse_model_spec",
    "is_offline",
    "hub_cache_dir",
    "local_status",
    "select_device",
    "select_dtype",
    "load_sd_pipeline",
    "load_pixel_unet",
    "single_file_layout",
    "model_entry",
]

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


class ModelNotAvailableError(EditflowError, RuntimeError):
    """The weights a row needs are not on this machine (and cannot or may not be fetched)."""


@dataclass(frozen=True)
class ModelInfo:
    """A model an engine is known to work with (engines declare theirs; `editflow models` lists them)."""

    id: str
    kind: str  # e.g. "sd inpaint (9-channel)", "sd (4-channel)", "ddpm pixel"
    note: str = ""


# ---------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class ModelSource:
    """A parsed model spec."""

    spec: str  # as written
    kind: str  # "hub" | "dir" | "file"
    location: str  # hub repo id, or an absolute path
    revision: str | None = None

    @property
    def label(self) -> str:
        return self.spec


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", "./", "../", "~", "file://"))
        or spec.lower().endswith(SINGLE_FILE_SUFFIXES)
        or "\\" in spec
        or spec.count("/") > 1
    )


def parse_model_spec(spec: str) -> ModelSource:
    """A model spec -> `ModelSource`; a path that does not exist raises `ModelNotAvailableError`."""
    if not spec or not str(spec).strip():
        raise ValueError("empty model spec")
    spec = str(spec).strip()
    raw = spec[len("file://"):] if spec.startswith("file://") else spec
    path = Path(os.path.expanduser(raw))
    if path.exists():
        path = path.resolve()
        if path.is_file():
            if not path.name.lower().endswith(SINGLE_FILE_SUFFIXES):
                raise ModelNotAvailableError(
                    f"model {spec!r} is a file but not a checkpoint; give a diffusers folder, a hub id or a "
                    f"{'/'.join(SINGLE_FILE_SUFFIXES)} file"
                )
            return ModelSource(spec, "file", str(path))
        if (path / "model_index.json").exists() or (path / "config.json").exists() or (path / "unet").is_dir():
            return ModelSource(spec, "dir", str(path))
        raise ModelNotAvailableError(
            f"model folder {str(path)!r} is not a diffusers model (no model_index.json or config.json); "
            "save one with pipeline.save_pretrained(folder), or pass a hub id"
        )
    if _looks_like_path(raw):
        raise ModelNotAvailableError(
            f"model {spec!r} not found: no such file or folder ({str(path.absolute())}). Pass an existing diffusers "
            "folder or checkpoint file, or a hub id (org/name[@revision]); `editflow models` lists the known ones"
        )
    repo, _, revision = spec.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ModelNotAvailableError(
            f"model {spec!r} is neither an existing path nor a hub id of the form org/name[@revision]"
        )
    return ModelSource(spec, "hub", repo, revision or None)


def is_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set to a true value."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment at call time (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _repo_folder(repo: str) -> Path:
    return hub_cache_dir() / ("models--" + repo.replace("/", "--"))


def fetch_command(source: ModelSource) -> str:
    rev = f" --revision {source.revision}" if source.revision else ""
    return f"hf download {source.location}{rev}"


@dataclass
class LocalStatus:
    """Whether a model's weights are on this machine, and where."""

    source: ModelSource | None
    available: bool
    where: str
    revision: str | None = None  # resolved commit for hub models
    detail: str = ""


def _snapshot(source: ModelSource) -> Path | None:
    """The cached snapshot folder of a hub model (revision resolved through refs/), or None."""
    from huggingface_hub import try_to_load_from_cache

    for name in ("model_index.json", "config.json"):
        try:
            hit = try_to_load_from_cache(source.location, name, cache_dir=str(hub_cache_dir()),
                                         revision=source.revision)
        except Exception:
            hit = None
        if isinstance(hit, str):
            return Path(hit).parent
    return None


def _has_weights(folder: Path) -> bool:
    return any(folder.rglob("*.safetensors")) or any(folder.rglob("*.bin"))


def local_status(spec: str) -> LocalStatus:
    """Is `spec` usable without a download? Never touches the network."""
    try:
        source = parse_model_spec(spec)
    except ModelNotAvailableError as exc:
        return LocalStatus(None, False, spec, detail=str(exc))
    if source.kind in ("dir", "file"):
        return LocalStatus(source, True, source.location)
    snap = _snapshot(source)
    where = str(_repo_folder(source.location))
    if snap is None:
        return LocalStatus(source, False, where, detail="not in the hub cache")
    if not _has_weights(snap):
        return LocalStatus(source, False, str(snap), revision=snap.name, detail="configs cached but no weights")
    return LocalStatus(source, True, str(snap), revision=snap.name)


def not_available(source: ModelSource, cause: BaseException | str | None = None) -> ModelNotAvailableError:
    """The error a row gets when `source`'s weights are missing: what, where, and how to fetch."""
    where = _repo_folder(source.location)
    why = "HF_HUB_OFFLINE is set" if is_offline() else "it could not be downloaded"
    msg = (
        f"model {source.spec!r} is not available locally and {why}: looked in the Hugging Face cache at {where} "
        f"(HF_HUB_CACHE / HF_HOME). Fetch it where there is network with `{fetch_command(source)}` "
        f"(then copy {where} to this machine's cache), or pass a local diffusers folder or .safetensors file "
        "as the row's model / --model."
    )
    if cause:
        msg += f" [{type(cause).__name__ if isinstance(cause, BaseException) else 'cause'}: {str(cause)[:200]}]"
    return ModelNotAvailableError(msg)


# ---------------------------------------------------------------------------------------------
# Device, dtype, switches


def select_device(device: str | None = None) -> str:
    """Explicit device, else cuda, else mps, else cpu."""
    import torch

    if device:
        return str(device)
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "half": "float16",
           "bf16": "bfloat16", "bfloat16": "bfloat16"}


def select_dtype(device: str, preference: str | None = None):
    """cuda -> bf16 on compute capability >= 8, else fp16; mps -> fp32, cpu -> fp32; `preference` wins."""
    import torch

    if preference and preference != "auto":
        try:
            return getattr(torch, _DTYPES[preference.lower()])
        except KeyError:
            raise ValueError(f"dtype must be one of auto, {', '.join(sorted(_DTYPES))}; got {preference!r}") from None
    if str(device).startswith("cuda"):
        return torch.bfloat16 if native_bf16(device) else torch.float16
    return torch.float32


def native_bf16(device: str = "cuda") -> bool:
    """bf16 runs natively from compute capability 8 (Ampere) on; `torch.cuda.is_bf16_supported()`
    also counts the emulated bf16 of V100 / T4 (capability 7.x), many times slower than fp16."""
    import torch

    index = str(device).partition(":")[2]
    major, _ = torch.cuda.get_device_capability(int(index) if index else None)
    return major >= 8


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip().lower() in ("1", "true", "yes", "on")


#: switch -> its environment variable (the default when neither options nor the run's config set it)
SWITCH_ENV = {
    "dtype": "EDITFLOW_DTYPE", "attention_slicing": "EDITFLOW_ATTENTION_SLICING", "vae_tiling": "EDITFLOW_VAE_TILING",
    "cpu_offload": "EDITFLOW_CPU_OFFLOAD", "sdpa": "EDITFLOW_SDPA", "micro_batch": "EDITFLOW_MICRO_BATCH",
    "safety_checker": "EDITFLOW_SAFETY_CHECKER", "compile": "EDITFLOW_COMPILE",
}


#: what the `compile` switch means when it is just on: inductor, tuned for a long steady state (CUDA)
DEFAULT_COMPILE_MODE = "max-autotune-no-cudagraphs"
#: torch.compile's modes (inductor); any other name given to `compile` is a torch.compile backend
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class SwitchError(EditflowError, ValueError):
    """An engine switch with a value it cannot take."""


def compile_setting(value: Any) -> bool | str:
    """The `compile` switch's value: off (False), on (True: `DEFAULT_COMPILE_MODE`), or the name of
    a torch.compile mode (`COMPILE_MODES`) or backend (e.g. ``aot_eager``: no code generation)."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).strip()
    if text.lower() in ("", "0", "false", "no", "off"):
        return False
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    return text


def compile_kwargs(value: bool | str) -> dict[str, Any]:
    """torch.compile's keyword arguments for a `compile` switch that is on."""
    if value is True:
        return {"mode": DEFAULT_COMPILE_MODE}
    if value in COMPILE_MODES:
        return {"mode": value}
    import torch._dynamo

    backends = [b for b in torch._dynamo.list_backends(exclude_tags=()) if "TESTING" not in b]
    if value not in backends:
        raise SwitchError(f"compile={value!r} is neither a torch.compile mode ({', '.join(COMPILE_MODES)}) "
                          f"nor a backend ({', '.join(backends)})")
    return {"backend": value}


@dataclass
class RuntimeOptions:
    """Memory and speed switches. None = the default for the device (all off on CPU)."""

    dtype: str | None = None  # auto | fp32 | fp16 | bf16
    attention_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False  # enable_model_cpu_offload (CUDA only)
    sdpa: bool = True  # torch scaled_dot_product_attention (diffusers' default processor)
    micro_batch: int | None = None  # rows per network call; None = 1 on CPU, whole batch on GPU
    safety_checker: bool = False  # run the model's safety checker on outputs, flag rows (nsfw)
    #: torch.compile the UNet (CUDA: faster steady state, minutes of warm-up): True, or a mode or
    #: backend name (`compile_setting`)
    compile: bool | str = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> dict[str, Any]:
        """The switches the EDITFLOW_* environment variables set (the driver puts them in the run's
        config, so they reach Ray actors whatever their environment)."""
        defaults, env = cls(), cls.from_options({})
        return {name: getattr(env, name) for name in SWITCH_ENV
                if os.environ.get(SWITCH_ENV[name], "").strip() and getattr(env, name) != getattr(defaults, name)}

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RuntimeOptions:
        """Engine kwargs first, then EDITFLOW_* environment variables, then defaults."""
        def pick(key: str, env: str, cast: Callable[[Any], Any], default: Any) -> Any:
            if options.get(key) is not None:
                return cast(options[key])
            raw = os.environ.get(env)
            if raw is not None and raw.strip() != "":
                return cast(raw)
            return default

        def as_bool(v: Any) -> bool:
            return v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes", "on")

        known = {"dtype", "attention_slicing", "vae_tiling", "cpu_offload", "sdpa", "micro_batch", "safety_checker",
                 "compile", "shared_models"}
        return cls(
            dtype=pick("dtype", SWITCH_ENV["dtype"], str, None),
            attention_slicing=pick("attention_slicing", SWITCH_ENV["attention_slicing"], as_bool, False),
            vae_tiling=pick("vae_tiling", SWITCH_ENV["vae_tiling"], as_bool, False),
            cpu_offload=pick("cpu_offload", SWITCH_ENV["cpu_offload"], as_bool, False),
            sdpa=pick("sdpa", SWITCH_ENV["sdpa"], as_bool, True),
            micro_batch=pick("micro_batch", SWITCH_ENV["micro_batch"], int, None),
            safety_checker=pick("safety_checker", SWITCH_ENV["safety_checker"], as_bool, False),
            compile=pick("compile", SWITCH_ENV["compile"], compile_setting, False),
            extra={k: v for k, v in options.items() if k not in known},
        )

    @property
    def slices_attention(self) -> bool:
        """Whether attention is sliced: asked for, and SDPA off. SDPA already computes attention in
        blocks without the full attention matrix (as xFormers does) and faster, so slicing would
        only replace it with diffusers' slower sliced classic attention (`SLICING_NOT_NEEDED`)."""
        return self.attention_slicing and not self.sdpa

    def switch_key(self) -> tuple:
        """What a loaded pipeline depends on (engines with equal keys may share one)."""
        return (self.dtype, self.attention_slicing, self.vae_tiling, self.cpu_offload, self.sdpa, self.compile)

    def rows_per_call(self, device: str) -> int | None:
        """Rows per network call: `micro_batch`, else 1 on CPU (batch-invariant bytes), else all."""
        if self.micro_batch:
            return max(1, int(self.micro_batch))
        return 1 if str(device).startswith("cpu") else None


#: what a run that asks for attention slicing with SDPA on is told (CLI, and the library log)
SLICING_NOT_NEEDED = ("attention slicing is not applied while SDPA is on: SDPA already computes attention without "
                      "the full attention matrix, and faster; add --no-sdpa (EDITFLOW_SDPA=0) to slice instead")


def apply_switches(pipe: Any, options: RuntimeOptions, device: str) -> list[str]:
    """Apply the switches to a diffusers pipeline and move it to `device`; return what was applied."""
    applied: list[str] = []
    if not options.sdpa:  # before slicing, which would otherwise be overwritten
        from diffusers.models.attention_processor import AttnProcessor

        for name in ("unet", "vae"):
            module = getattr(pipe, name, None)
            if module is not None and hasattr(module, "set_attn_processor"):
                module.set_attn_processor(AttnProcessor())
        applied.append("classic_attention")
    if options.attention_slicing and not options.slices_attention:
        logging.getLogger(__name__).warning(SLICING_NOT_NEEDED)
    if options.slices_attention and hasattr(pipe, "enable_attention_slicing"):
        pipe.enable_attention_slicing()
        applied.append("attention_slicing")
    vae = getattr(pipe, "vae", None)
    if options.vae_tiling and vae is not None and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
        applied.append("vae_tiling")
    if options.cpu_offload and str(device).startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
        applied.append("model_cpu_offload")
    else:
        pipe.to(device)
    if options.compile and getattr(pipe, "unet", None) is not None:
        import torch

        # the wrapper (OptimizedModule) forwards attributes, hooks and set_attn_processor to the
        # UNet; a processor swap (IP-Adapter load/unload) fails dynamo's guards and recompiles
        pipe.unet = torch.compile(pipe.unet, dynamic=False, **compile_kwargs(options.compile))
        applied.append("compile")
    return applied


# ---------------------------------------------------------------------------------------------
# Loaders


def single_file_layout(path: str | Path) -> dict[str, Any]:
    """Read a .safetensors header (no tensors) and tell SD from SDXL and 9- from 4-channel UNets."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return {"xl": None, "in_channels": None}
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    key = "model.diffusion_model.input_blocks.0.0.weight"
    in_channels = header.get(key, {}).get("shape", [None, None])[1]
    xl = any(k.startswith("conditioner.embedders.1") for k in header)
    return {"xl": xl, "in_channels": in_channels}


def _hub_kwargs(source: ModelSource) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"cache_dir": str(hub_cache_dir())}
    if source.revision:
        kwargs["revision"] = source.revision
    return kwargs


def load_sd_pipeline(spec: str, dtype: Any) -> tuple[Any, ModelSource, str | None]:
    """Load an SD / SDXL pipeline (inpaint or not) from a hub id, a folder or a single file.

    Returns (pipeline on the CPU, source, resolved revision). Missing hub weights raise
    `ModelNotAvailableError`; other failures (corrupt files, wrong layout) propagate as they are.
    """
    from diffusers import DiffusionPipeline

    source = parse_model_spec(spec)
    if source.kind == "dir":
        return DiffusionPipeline.from_pretrained(source.location, dtype=dtype, local_files_only=True), source, None
    if source.kind == "file":
        return _load_single_file(source, dtype), source, None
    status = local_status(spec)
    if not status.available and is_offline():
        raise not_available(source, status.detail)
    try:
        pipe = DiffusionPipeline.from_pretrained(
            source.location, dtype=dtype, local_files_only=is_offline(), **_hub_kwargs(source)
        )
    except Exception as exc:
        if local_status(spec).available:
            raise
        raise not_available(source, exc) from exc
    return pipe, source, local_status(spec).revision


def _load_single_file(source: ModelSource, dtype: Any) -> Any:
    from diffusers import (
        StableDiffusionInpaintPipeline, StableDiffusionPipeline, StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
    )

    layout = single_file_layout(source.location)
    inpaint = layout["in_channels"] == 9
    if layout["xl"]:
        cls = StableDiffusionXLInpaintPipeline if inpaint else StableDiffusionXLPipeline
    else:
        cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    kwargs: dict[str, Any] = {"torch_dtype": dtype, "local_files_only": is_offline()}
    config = os.environ.get("EDITFLOW_SINGLE_FILE_CONFIG")
    if config:
        kwargs["config"] = config
    try:
        return cls.from_single_file(source.location, **kwargs)
    except Exception as exc:
        raise ModelNotAvailableError(
            f"could not load single-file checkpoint {source.location!r} as {cls.__name__}: {str(exc)[:300]}. "
            "diffusers needs the matching diffusers configs (fetched from the hub unless cached): set "
            "EDITFLOW_SINGLE_FILE_CONFIG to a local diffusers folder of the same architecture, or convert the "
            "checkpoint once with `from_single_file(...).save_pretrained(folder)` and pass the folder"
        ) from exc


def load_pixel_unet(spec: str, dtype: Any) -> tuple[Any, dict[str, Any], ModelSource, str | None]:
    """Load a pixel-space `UNet2DModel` and its scheduler config (DDPMPipeline or bare-model layout)."""
    from diffusers import DDPMScheduler, UNet2DModel

    source = parse_model_spec(spec)
    revision = None
    if source.kind == "file":
        raise ModelNotAvailableError(f"engine ddpm needs a diffusers folder or hub id, not a single file ({spec!r})")
    if source.kind == "hub":
        status = local_status(spec)
        if not status.available and is_offline():
            raise not_available(source, status.detail)
        revision = status.revision
    location = source.location
    kwargs: dict[str, Any] = {"local_files_only": source.kind == "dir" or is_offline()}
    if source.kind == "hub":
        kwargs.update(_hub_kwargs(source))
    errors: list[BaseException] = []
    unet = None
    for sub in ("unet", None):
        try:
            unet = UNet2DModel.from_pretrained(location, subfolder=sub, dtype=dtype, **kwargs)
            break
        except Exception as exc:  # try the other layout
            errors.append(exc)
    if unet is None:
        if source.kind == "hub" and not local_status(spec).available:
            raise not_available(source, errors[-1]) from errors[-1]
        raise errors[-1]
    schedule: dict[str, Any] = {}
    for sub in ("scheduler", None):
        try:
            schedule = dict(DDPMScheduler.load_config(location, subfolder=sub, **kwargs))
            break
        except Exception:
            continue
    return unet, schedule, source, revision


def model_entry(engine: str, spec: str, kind: str, default: bool) -> dict[str, Any]:
    """What `editflow models` says about one (engine, model): availability, where, how to fetch."""
    status = local_status(spec)
    fetch = fetch_command(status.source) if status.source is not None and status.source.kind == "hub" else ""
    return {"engine": engine, "model": spec, "kind": kind, "default": default, "available": status.available,
            "where": status.where, "revision": status.revision, "fetch": "" if status.available else fetch,
            "detail": status.detail}
