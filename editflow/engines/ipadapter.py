"""IP-Adapter for the reference-conditioned SD engines (`sd-ipadapter` try-on, `sd` makeup).

What is loaded, and from where (row ``params`` first, then engine options, then the defaults):

| key | default | meaning |
|---|---|---|
| ``ip_adapter`` | ``h94/IP-Adapter`` | hub id (``org/name[@rev]``), a local folder, or a ``.safetensors`` file |
| ``ip_adapter_weight`` | ``models/ip-adapter_sd15.safetensors`` (try-on: ``models/ip-adapter-plus_sd15.safetensors`` when present locally) | the weight file inside the repo / folder |
| ``image_encoder`` | ``models/image_encoder`` next to the weights | CLIP vision folder (``config.json``), hub id, or a subfolder of the IP-Adapter repo |
| ``ip_adapter_scale`` | 0.7 | strength of the image prompt (diffusers' ``set_ip_adapter_scale``) |

The weights are read with safetensors into diffusers' two-part layout (``image_proj.*`` and
``ip_adapter.<n>.to_k_ip/to_v_ip``), checked against the UNet (number of cross-attention layers,
their widths, the projection's output width) so that a mismatched adapter fails with a message
that says which base model it belongs to, and handed to diffusers' ``load_ip_adapter`` as a state
dict; the CLIP image encoder is ``CLIPVisionModelWithProjection.from_pretrained``. Offline rules
follow editflow.models: with HF_HUB_OFFLINE nothing is fetched, and a missing file raises
`ModelNotAvailableError` naming the ``hf download`` command.

Image embeddings (the CLIP image embeds, or penultimate hidden states for IP-Adapter-plus) are
computed one reference at a time and kept per worker in an `LRUCache`, keyed by the
reference's content hash (``EditRequest.reference_key``), the adapter and the crop, so a catalog
run encodes each garment (or makeup face) once per actor, not once per pair.

The image embeddings ride in `LatentCondition.image_embeds`; `LatentUNetDenoiser` passes them to
the UNet (``added_cond_kwargs["image_embeds"]``), classifier-free guidance pairing each row's negative
text with its negative image embedding (zeros, as diffusers does). `IPAdapterSDEngine` is the
shared base of the two engines: SDEngine's loading, windows and grouping, the masked sampler
(optionally from an SDEdit `init`), and a reference hook per subclass.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from editflow.diffusion.sampler import SamplerConfig, masked_sample
from editflow.diffusion.unets import LatentCondition, LatentUNetDenoiser
from editflow.engines.base import EditRequest, EditResult, EngineError, is_out_of_memory
from editflow.diffusion.device import execution_device, freeze, has_offload_hooks, plain_attention, slice_attention
from editflow.engines.params import param
from editflow.engines.sd import SDEngine, release_adapter
from editflow.engines.window import Job, WindowParams, generators
from editflow.lru import LRUCache
from editflow.models import (
    ModelNotAvailableError, hub_cache_dir, is_offline, parse_model_spec,
)

__all__ = [
    "DEFAULT_IP_ADAPTER", "DEFAULT_IP_ADAPTER_WEIGHT", "PLUS_IP_ADAPTER_WEIGHT", "weight_present", "DEFAULT_IMAGE_ENCODER_SUBFOLDER", "DEFAULT_IP_SCALE",
    "IPAdapterSpec", "IPAdapterFiles", "resolve_ip_adapter", "read_ip_adapter", "check_ip_adapter",
    "load_image_encoder", "IPAdapter", "IPAdapterParams", "RefJob",
    "IPAdapterSDEngine", "pad_to_square", "array_key",
]

DEFAULT_IP_ADAPTER = "h94/IP-Adapter"
DEFAULT_IP_ADAPTER_WEIGHT = "models/ip-adapter_sd15.safetensors"
#: IP-Adapter-plus (16 tokens from CLIP's penultimate patch features: keeps prints, logos, stripes)
PLUS_IP_ADAPTER_WEIGHT = "models/ip-adapter-plus_sd15.safetensors"
DEFAULT_IMAGE_ENCODER_SUBFOLDER = "models/image_encoder"
DEFAULT_IP_SCALE = 0.7
FETCH_HINT = (
    "hf download h94/IP-Adapter models/ip-adapter_sd15.safetensors models/image_encoder/config.json "
    "models/image_encoder/model.safetensors"
)


@dataclass(frozen=True)
class IPAdapterParams(WindowParams):
    """Row params of the IP-Adapter engines (row first, then the engine option of the same name, then
    the default)."""

    ip_adapter: str | None = param(None, f"hub id, folder or .safetensors (default {DEFAULT_IP_ADAPTER})")
    ip_adapter_weight: str | None = param(None, f"weight file inside the repo / folder (default {DEFAULT_IP_ADAPTER_WEIGHT})")
    image_encoder: str | None = param(None, "CLIP vision folder, hub id or subfolder (default: next to the weights)")
    ip_adapter_scale: float | None = param(None, f"strength of the image prompt (default {DEFAULT_IP_SCALE})")


# ---------------------------------------------------------------------------------------------
# Where the weights are


@dataclass(frozen=True)
class IPAdapterSpec:
    """Which IP-Adapter and image encoder a row asks for, and how strongly."""

    ip_adapter: str = DEFAULT_IP_ADAPTER
    weight_name: str = DEFAULT_IP_ADAPTER_WEIGHT
    image_encoder: str | None = None  # None: next to the weights
    scale: float = DEFAULT_IP_SCALE

    @classmethod
    def from_params(cls, params: dict[str, Any] | None, options: dict[str, Any] | None = None,
                    default_weight: str | None = None) -> IPAdapterSpec:
        """Row params win over engine options, which win over the defaults (`default_weight`: the
        weight file when neither names one; a callable gets the ``ip_adapter`` location)."""
        params, options = params or {}, options or {}

        def pick(key: str, default: Any) -> Any:
            for source in (params, options):
                if source.get(key) not in (None, ""):
                    return source[key]
            return default

        try:
            scale = float(pick("ip_adapter_scale", DEFAULT_IP_SCALE))
        except (TypeError, ValueError):
            raise EngineError(f"ip_adapter_scale must be a number, got {pick('ip_adapter_scale', None)!r}") from None
        if not 0.0 <= scale <= 10.0:
            raise EngineError(f"ip_adapter_scale must be in [0, 10], got {scale}")
        encoder = pick("image_encoder", None)
        location = str(pick("ip_adapter", DEFAULT_IP_ADAPTER))
        weight = pick("ip_adapter_weight", None)
        if weight is None:
            weight = default_weight(location) if callable(default_weight) else (default_weight or DEFAULT_IP_ADAPTER_WEIGHT)
        return cls(location, str(weight), None if encoder is None else str(encoder), scale)

    def describe(self) -> str:
        """What the row ran with, for the results' ``adapter`` column."""
        return f"ip-adapter {self.ip_adapter} {self.weight_name} scale={self.scale:g}"

    @property
    def weights_key(self) -> tuple[str, str, str | None]:
        """What has to be loaded (the scale is set without reloading)."""
        return (self.ip_adapter, self.weight_name, self.image_encoder)


@dataclass(frozen=True)
class IPAdapterFiles:
    """Resolved locations: the weight file, and the image encoder as from_pretrained arguments."""

    weights: Path
    encoder_location: str
    encoder_subfolder: str | None
    encoder_hub: bool
    revision: str | None = None


def _not_available(what: str, repo: str, files: str, cause: BaseException | None = None) -> ModelNotAvailableError:
    where = hub_cache_dir() / ("models--" + repo.replace("/", "--"))
    why = "HF_HUB_OFFLINE is set" if is_offline() else "it could not be downloaded"
    hint = FETCH_HINT if repo == DEFAULT_IP_ADAPTER else f"hf download {repo} {files}"
    msg = (f"{what} {repo!r} ({files}) not found: not available locally and {why}; looked in the Hugging Face "
           f"cache at {where} (HF_HUB_CACHE / HF_HOME). Fetch it with `{hint}` where there is network (then copy "
           f"{where} here), or point params.ip_adapter / params.image_encoder at local files.")
    if cause is not None:
        msg += f" [{type(cause).__name__}: {str(cause)[:200]}]"
    return ModelNotAvailableError(msg)


def resolve_ip_adapter(spec: IPAdapterSpec) -> IPAdapterFiles:
    """Find the weight file and the image encoder for `spec` (downloads only when online)."""
    try:
        source = parse_model_spec(spec.ip_adapter)
    except ModelNotAvailableError as exc:
        # parse_model_spec speaks of diffusers folders; an IP-Adapter folder has no model_index.json
        path = Path(os.path.expanduser(spec.ip_adapter))
        if not path.is_dir():
            raise ModelNotAvailableError(
                f"IP-Adapter {spec.ip_adapter!r} not found: give a hub id (default {DEFAULT_IP_ADAPTER}), a folder "
                f"holding {spec.weight_name}, or a .safetensors file ({exc})") from None
        source = None
    if source is None or source.kind == "dir":
        folder = Path(os.path.expanduser(spec.ip_adapter)).resolve()
        weights = folder / spec.weight_name
        if not weights.is_file() and (folder / Path(spec.weight_name).name).is_file():
            weights = folder / Path(spec.weight_name).name
        if not weights.is_file():
            raise ModelNotAvailableError(
                f"IP-Adapter weights {spec.weight_name!r} not found in folder {str(folder)!r}; set params.ip_adapter_weight "
                f"to the file's path inside the folder, or fetch them with `{FETCH_HINT}`")
        return _local_encoder(spec, weights, [weights.parent / "image_encoder", folder / DEFAULT_IMAGE_ENCODER_SUBFOLDER,
                                              folder / "image_encoder"])
    if source.kind == "file":
        weights = Path(source.location)
        return _local_encoder(spec, weights, [weights.parent / "image_encoder"])
    # hub id
    from huggingface_hub import hf_hub_download

    repo = source.location
    try:
        weights = Path(hf_hub_download(repo, spec.weight_name, revision=source.revision, cache_dir=str(hub_cache_dir()),
                                       local_files_only=is_offline()))
    except Exception as exc:
        raise _not_available("IP-Adapter", repo, spec.weight_name, exc) from exc
    if spec.image_encoder is not None and not _is_subfolder_name(spec.image_encoder):
        return _encoder_from_spec(spec, weights)
    subfolder = spec.image_encoder or str(Path(spec.weight_name).parent / "image_encoder").lstrip("./")
    if subfolder in ("", "image_encoder") and spec.weight_name == DEFAULT_IP_ADAPTER_WEIGHT:
        subfolder = DEFAULT_IMAGE_ENCODER_SUBFOLDER
    return IPAdapterFiles(weights, repo, subfolder, True, source.revision)


def weight_present(location: str, weight_name: str) -> bool:
    """Whether `weight_name` of the IP-Adapter at `location` (hub id, folder) is on this machine; never downloads."""
    path = Path(os.path.expanduser(location))
    if path.is_dir():
        return (path / weight_name).is_file() or (path / Path(weight_name).name).is_file()
    if path.suffix.lower() == ".safetensors" or location.startswith((".", "/", "~")):
        return False  # a file names its own weights
    repo, _, revision = location.partition("@")
    if repo.count("/") != 1:
        return False
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, weight_name, cache_dir=str(hub_cache_dir()), revision=revision or None)
    return isinstance(found, str) and Path(found).is_file()


def _is_subfolder_name(value: str) -> bool:
    """'models/image_encoder' (a folder inside the IP-Adapter repo) rather than a path or another hub id."""
    return not Path(os.path.expanduser(value)).exists() and value.count("/") != 1 and not value.startswith(("/", "."))


def _local_encoder(spec: IPAdapterSpec, weights: Path, candidates: list[Path]) -> IPAdapterFiles:
    if spec.image_encoder is not None:
        return _encoder_from_spec(spec, weights)
    for folder in candidates:
        if (folder / "config.json").is_file():
            return IPAdapterFiles(weights, str(folder), None, False)
    raise ModelNotAvailableError(
        f"no CLIP image encoder found next to the IP-Adapter weights {str(weights)!r} (looked for "
        f"{', '.join(str(c) for c in candidates)}); set params.image_encoder to a CLIPVisionModelWithProjection "
        f"folder or hub id (h94/IP-Adapter keeps it in {DEFAULT_IMAGE_ENCODER_SUBFOLDER}; `{FETCH_HINT}`)")


def _encoder_from_spec(spec: IPAdapterSpec, weights: Path) -> IPAdapterFiles:
    value = spec.image_encoder or ""
    path = Path(os.path.expanduser(value))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"image encoder folder {str(path)!r} has no config.json (a CLIPVisionModelWithProjection "
                                         f"saved with save_pretrained)")
        return IPAdapterFiles(weights, str(path.resolve()), None, False)
    repo, _, revision = value.partition("@")
    if repo.count("/") == 1 and all(repo.split("/")):
        return IPAdapterFiles(weights, repo, None, True, revision or None)
    if repo.count("/") >= 2 and not value.startswith(("/", ".", "~")):  # org/name/sub/folder
        org, name, sub = repo.split("/", 2)
        return IPAdapterFiles(weights, f"{org}/{name}", sub, True, revision or None)
    raise ModelNotAvailableError(f"image encoder {value!r} not found: give a local folder or a hub id")


def read_ip_adapter(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """A .safetensors IP-Adapter -> {"image_proj": {...}, "ip_adapter": {...}} (diffusers' layout)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelNotAvailableError(
            f"IP-Adapter weights must be a .safetensors file (got {path.name}); h94/IP-Adapter ships "
            f"{DEFAULT_IP_ADAPTER_WEIGHT}")
    from safetensors import safe_open

    state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            for key in fh.keys():
                part, _, rest = key.partition(".")
                if part in state:
                    state[part][rest] = fh.get_tensor(key)
    except Exception as exc:
        raise ModelNotAvailableError(f"cannot read IP-Adapter weights {str(path)!r}: {exc}") from exc
    if not state["image_proj"] or not state["ip_adapter"]:
        raise EngineError(f"{str(path)!r} is not an IP-Adapter: it needs image_proj.* and ip_adapter.* tensors")
    return state


def _cross_attention_layers(unet: Any) -> list[tuple[str, int]]:
    """(processor name, hidden size) of every cross-attention layer, in diffusers' IP-Adapter key order."""
    cfg = unet.config
    layers = []
    for name in unet.attn_processors.keys():
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        if name.startswith("mid_block"):
            hidden = cfg.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(cfg.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = cfg.block_out_channels[int(name[len("down_blocks.")])]
        layers.append((name, int(hidden)))
    return layers


def check_ip_adapter(state: dict[str, dict[str, torch.Tensor]], unet: Any, source: str = "IP-Adapter") -> str:
    """Raise EngineError unless `state` fits `unet`; return the adapter kind ("base" or "plus")."""
    hint = ("use the IP-Adapter made for this base model (SD 1.5: models/ip-adapter_sd15.safetensors; "
            "SDXL: sdxl_models/ip-adapter_sdxl.safetensors)")
    cross = int(unet.config.cross_attention_dim if not isinstance(unet.config.cross_attention_dim, (list, tuple))
                else unet.config.cross_attention_dim[0])
    proj = state["image_proj"]
    if "proj.weight" in proj:
        kind, out = "base", int(proj["proj.weight"].shape[0]) // 4
    elif "latents" in proj and "proj_out.weight" in proj:
        kind, out = "plus", int(proj["proj_out.weight"].shape[0])
    else:
        raise EngineError(f"{source}: unsupported image projection (keys {sorted(proj)[:4]}...); "
                          "plain IP-Adapter and IP-Adapter-plus are supported")
    if out != cross:
        raise EngineError(f"{source} projects images to {out} features but the UNet's cross-attention takes {cross}; {hint}")
    layers = _cross_attention_layers(unet)
    for i, (name, hidden) in enumerate(layers):
        for part in ("to_k_ip", "to_v_ip"):
            key = f"{2 * i + 1}.{part}.weight"
            w = state["ip_adapter"].get(key)
            if w is None:
                raise EngineError(f"{source} has no {key} for the UNet's cross-attention layer {i} ({name}); it has "
                                  f"{len(state['ip_adapter']) // 2} layers, the UNet {len(layers)}; {hint}")
            if tuple(w.shape) != (hidden, cross):
                raise EngineError(f"{source}: {key} is {tuple(w.shape)}, the UNet's {name} needs {(hidden, cross)}; {hint}")
    extra = len(state["ip_adapter"]) - 2 * len(layers)
    if extra > 0 and not any("lora" in k for k in state["ip_adapter"]):
        raise EngineError(f"{source} has {len(state['ip_adapter']) // 2} cross-attention layers, the UNet {len(layers)}; {hint}")
    return kind


def load_image_encoder(files: IPAdapterFiles, dtype: Any) -> Any:
    from transformers import CLIPVisionModelWithProjection

    kwargs: dict[str, Any] = {"dtype": dtype}
    if files.encoder_subfolder:
        kwargs["subfolder"] = files.encoder_subfolder
    if files.encoder_hub:
        kwargs.update(cache_dir=str(hub_cache_dir()), local_files_only=is_offline())
        if files.revision:
            kwargs["revision"] = files.revision
    else:
        kwargs["local_files_only"] = True
    try:
        return CLIPVisionModelWithProjection.from_pretrained(files.encoder_location, **kwargs).eval()
    except Exception as exc:
        if files.encoder_hub:
            sub = f"{files.encoder_subfolder}/" if files.encoder_subfolder else ""
            raise _not_available("image encoder", files.encoder_location,
                                 f"{sub}config.json {sub}model.safetensors", exc) from exc
        raise ModelNotAvailableError(f"cannot load the CLIP image encoder from {files.encoder_location!r}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Loaded adapter and its embeddings


def array_key(array: np.ndarray) -> str:
    """Content hash of an image array (the cache key when a request carries no reference_key)."""
    h = hashlib.sha256()
    h.update(repr((array.shape, str(array.dtype))).encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def pad_to_square(image: np.ndarray, fill: int = 255) -> np.ndarray:
    """Pad H×W×3 to a square around the centre (so CLIP's centre crop never cuts the reference)."""
    h, w = image.shape[:2]
    side = max(h, w)
    out = np.full((side, side, 3), fill, dtype=np.uint8)
    y, x = (side - h) // 2, (side - w) // 2
    out[y:y + h, x:x + w] = image
    return out


class IPAdapter:
    """An IP-Adapter loaded into one pipeline (its UNet's processors) plus its CLIP image encoder."""

    def __init__(self, pipe: Any, spec: IPAdapterSpec, device: str, dtype: Any, sliced: bool = False,
                 sdpa: bool = True) -> None:
        self.spec = spec
        self.sliced, self.sdpa = sliced, sdpa
        self.files = resolve_ip_adapter(spec)
        state = read_ip_adapter(self.files.weights)
        self.kind = check_ip_adapter(state, pipe.unet, f"IP-Adapter {self.files.weights.name}")
        try:  # transformers 5 without torchvision: the PIL processor (CLIPImageProcessor would warn and fall back)
            from transformers import CLIPImageProcessorPil as CLIPImageProcessor
        except ImportError:
            from transformers import CLIPImageProcessor

        encoder = load_image_encoder(self.files, dtype).to(device)
        freeze(encoder)
        size = int(encoder.config.image_size)
        self.state = state  # kept: engines sharing the pipeline unload and reload it from memory
        self.pipe = pipe
        self.encoder = encoder
        self.processor = CLIPImageProcessor(size=size, crop_size=size)
        self.device = device
        self._scale: float | None = None
        self.load()

    def load(self) -> None:
        """Put the adapter into the pipeline's UNet (and its encoder into the pipeline)."""
        pipe = self.pipe
        # register first: diffusers' load_ip_adapter then neither warns nor tries to load one itself
        pipe.register_modules(image_encoder=self.encoder, feature_extractor=self.processor)
        state = {part: dict(tensors) for part, tensors in self.state.items()}
        # diffusers rebuilds the other layers' processors with __class__(): sliced ones cannot be
        self._around_processors(lambda: pipe.load_ip_adapter(state, subfolder="", weight_name="",
                                                             image_encoder_folder=None), pipe.unet)
        if not has_offload_hooks(pipe.unet):  # offload hooks place the new adapter weights themselves
            pipe.unet.to(self.device)
        freeze(pipe.unet)
        self._scale = None
        pipe._editflow_adapter = self

    def set_scale(self, scale: float) -> None:
        if scale != self._scale:
            self.pipe.set_ip_adapter_scale(float(scale))
            self._scale = float(scale)

    def unload(self) -> None:
        self._around_processors(self.pipe.unload_ip_adapter, self.pipe.unet)
        if getattr(self.pipe, "_editflow_adapter", None) is self:
            self.pipe._editflow_adapter = None

    def _around_processors(self, change: Any, unet: Any) -> None:
        """Run diffusers' adapter load/unload on plain processors, then slice attention again."""
        if self.sliced:
            plain_attention(unet, self.sdpa)
        try:
            change()
        finally:
            if self.sliced:
                slice_attention(unet)

    @torch.no_grad()
    def embed(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One reference (H×W×3 uint8) -> (embedding, negative embedding), CPU float32, batch dim 1.

        Plain IP-Adapter: CLIP image_embeds [1, D], negative zeros (diffusers' encode_image);
        plus: penultimate hidden states [1, S, D], negative from an all-zero image.
        """
        from PIL import Image

        pixels = self.processor(Image.fromarray(image), return_tensors="pt").pixel_values
        pixels = pixels.to(device=execution_device(self.encoder), dtype=self.encoder.dtype)
        if self.kind == "plus":
            pos = self.encoder(pixels, output_hidden_states=True).hidden_states[-2]
            neg = self.encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        else:
            pos = self.encoder(pixels).image_embeds
            neg = torch.zeros_like(pos)
        return pos.float().cpu(), neg.float().cpu()


@dataclass
class IPCondition(LatentCondition):
    """`LatentCondition` (text and IP-Adapter image embeddings) plus a ControlNet's condition."""

    #: ControlNet condition images [B, 3, H, W] in [0, 1] at the window's pixel size; None = no ControlNet
    control_image: torch.Tensor | None = None
    control_scale: float = 1.0


class IPAdapterDenoiser(LatentUNetDenoiser):
    """`LatentUNetDenoiser` whose UNet also takes IP-Adapter image embeddings, and optionally the
    residuals of a ControlNet (``controlnet``, called once per UNet call on the same batch, as
    diffusers' ControlNet pipelines do: the noisy latents, the text states, the condition image)."""

    controlnet: Any = None

    def control_residuals(self, x: torch.Tensor, ts: torch.Tensor, states: torch.Tensor, condition: IPCondition,
                          sl: slice, cfg: bool) -> dict[str, Any]:
        """``down_block_additional_residuals`` / ``mid_block_additional_residual`` for the UNet call."""
        if self.controlnet is None or getattr(condition, "control_image", None) is None:
            return {}
        net = self.controlnet
        image = condition.control_image[sl]
        if cfg:
            image = torch.cat([image, image])
        if int(net.config.in_channels) != x.shape[1]:  # an SD ControlNet beside an inpainting UNet: the latents only
            x = x[:, : int(net.config.in_channels)]
        device = execution_device(net)
        down, mid = net(x.to(device=device, dtype=net.dtype), ts.to(device),
                        encoder_hidden_states=states.to(device=device, dtype=net.dtype),
                        controlnet_cond=image.to(device=device, dtype=net.dtype),
                        conditioning_scale=float(condition.control_scale), return_dict=False)
        return {"down_block_additional_residuals": [d.to(self.unet.dtype) for d in down],
                "mid_block_additional_residual": mid.to(self.unet.dtype)}


# ---------------------------------------------------------------------------------------------
# The shared engine base


def sampler_settings(request: EditRequest, p: WindowParams, default_guidance: float, default_steps: int,
                     default_strength: float = 1.0) -> dict[str, Any]:
    """The sampler settings a row asks for (engine defaults filled in), checked before any work."""
    strength = float(request.strength if request.strength is not None else default_strength)
    steps = int(request.steps or default_steps)
    jumps = (int(request.jump_length or 1), int(request.jump_n_sample or 1))
    scheduler = p.scheduler.lower()
    eta = float(p.eta)
    SamplerConfig(steps=steps, strength=strength, scheduler=scheduler, eta=eta, jump_length=jumps[0],
                  jump_n_sample=jumps[1]).validate()
    guidance = float(request.guidance_scale if request.guidance_scale is not None else default_guidance)
    return dict(steps=steps, strength=strength, guidance=guidance, jumps=jumps, scheduler=scheduler, eta=eta)


@dataclass
class RefJob(Job):
    """A Job with a reference: the image the adapter sees, an SDEdit start, and the cache outcome."""

    spec: IPAdapterSpec = field(default_factory=IPAdapterSpec)
    reference: np.ndarray | None = None
    reference_key: str | None = None
    init: torch.Tensor | None = None  # [1, 3, h, w] in [-1, 1] at the job's window, or None
    reference_cached: bool | None = None

    def key(self) -> tuple:
        return (*super().key(), self.spec, self.init is not None)


class IPAdapterSDEngine(SDEngine):
    """SD (any UNet the `sd` engine takes) + IP-Adapter through the masked sampler. Subclasses
    implement `_prepare(index, request) -> RefJob`."""

    Params = IPAdapterParams
    weights = ("SD inpainting + IP-Adapter (`params`: `ip_adapter`, `ip_adapter_weight`, `image_encoder`, "
               "`ip_adapter_scale`; default `h94/IP-Adapter` `models/ip-adapter_sd15.safetensors`)")

    def __init__(self, pipe: Any, model: str = "in-memory", device: str | None = None, **options: Any) -> None:
        super().__init__(pipe, model=model, device=device, **options)
        self.cache: LRUCache = LRUCache(int(options.get("cache_size", 512)), enabled=bool(options.get("cache", True)))
        self.adapter: IPAdapter | None = None
        self._failed: dict[tuple, Exception] = {}

    def _denoiser(self, pipe: Any) -> IPAdapterDenoiser:
        return IPAdapterDenoiser(pipe.unet, pipe.vae, pipe.scheduler.config.get("prediction_type", "epsilon"),
                                 self.rows_per_call)

    def ip_adapter(self, spec: IPAdapterSpec) -> IPAdapter:
        """The loaded adapter for `spec` (loaded on first use; another spec replaces it)."""
        loaded = getattr(self.pipe, "_editflow_adapter", None)
        if self.adapter is not None and self.adapter.spec.weights_key == spec.weights_key:
            if loaded is not self.adapter:  # an engine sharing the pipeline ran without it (or with another)
                release_adapter(self.pipe)
                self.adapter.load()
        else:
            if spec.weights_key in self._failed:  # a load that failed is not retried from disk per group
                raise self._failed[spec.weights_key]
            release_adapter(self.pipe)
            self.adapter = None
            try:
                self.adapter = self._load_adapter(spec)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    self._failed[spec.weights_key] = exc
                raise
        self.adapter.set_scale(spec.scale)
        return self.adapter

    def _load_adapter(self, spec: IPAdapterSpec) -> IPAdapter:
        return IPAdapter(self.pipe, spec, self.device, self.dtype,
                         sliced=self.runtime.slices_attention, sdpa=self.runtime.sdpa)

    def spec_for(self, request: EditRequest) -> IPAdapterSpec:
        return IPAdapterSpec.from_params(self.params_of(request).given(), self.options)

    def adapter_description(self, job: RefJob) -> str:
        """The conditioning adapters a row ran with (the results' ``adapter`` column)."""
        return job.spec.describe()

    def embeddings(self, job: RefJob, adapter: IPAdapter) -> tuple[torch.Tensor, torch.Tensor]:
        key = (job.reference_key or array_key(job.reference), job.spec.weights_key)
        (pos, neg), cached = self.cache.get_or_make(key, lambda: adapter.embed(job.reference))
        job.reference_cached = cached
        return pos, neg

    def _run(self, jobs: list[Job]) -> list[EditResult]:
        return self._run_sampler(jobs)

    def _run_sampler(self, jobs: list[RefJob]) -> list[EditResult]:  # type: ignore[override]
        first = jobs[0]
        device = torch.device(self.device)
        adapter = self.ip_adapter(first.spec)
        images = torch.cat([j.image for j in jobs]).to(device)
        masks = torch.cat([j.mask for j in jobs]).to(device)
        base = self.condition(jobs, images, masks)
        pairs = [self.embeddings(j, adapter) for j in jobs]
        condition = IPCondition(**{**vars(base), "image_embeds": torch.cat([p for p, _ in pairs]).to(device),
                                   "negative_image_embeds": torch.cat([n for _, n in pairs]).to(device)})
        if getattr(first, "control", None) is not None:  # a ControlNet condition per row (makeup)
            condition.control_image = torch.cat([j.control for j in jobs]).to(device)
            condition.control_scale = float(first.control_scale)
        init = None
        if any(j.init is not None for j in jobs):
            init = torch.cat([j.init if j.init is not None else j.image for j in jobs]).to(device)
        config = SamplerConfig(
            steps=first.steps, strength=first.strength, scheduler=first.scheduler, eta=first.eta,
            jump_length=first.jumps[0], jump_n_sample=first.jumps[1], schedule=dict(self.pipe.scheduler.config),
        )
        out = masked_sample(self.denoiser, images, masks, generators(jobs), config, condition=condition, init=init)
        results = []
        for i, job in enumerate(jobs):
            result = self._result(job, job.plan.paste(job.request.image, out.images[i]), out.nfe, first.scheduler)
            result.reference_cached = job.reference_cached
            result.adapter = self.adapter_description(job)
            results.append(result)
        return results
