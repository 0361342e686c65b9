"""The Python API: `edit`, `Editor`, `make_mask`, `run`, `plan` over the same stages as the CLI and runners.

In a notebook, after importing the package:

    out = editflow.edit("photo.jpg", mask="box:10,10,90,90", task="inpaint", seed=1)
    out.image, out.mask, out.info["nfe"]            # PIL image, PIL mask, the result row's fields

    editor = editflow.Editor(engine="sd", model="stable-diffusion-v1-5/stable-diffusion-inpainting")
    for path in photos:                               # the model loads once, on the first edit
        editor.edit(path, mask="face:lips", task="makeup", reference="ref.png").image.save(...)

    summary = editflow.run("manifest.jsonl", "out/", executor="local")
    summary.ok, summary.error, summary.exit_code

An edit is one manifest row pushed through the runners' own stages (prepare -> mask -> edit, and the
write stage when saved), so a row edited here and in `editflow run` gives the same pixels and the
same result columns. Images, references and masks may be a path, a URI (under the media policy's
allowed schemes), a PIL image or a numpy array; in-memory ones are handed to the stages as PNG files
in the editor's scratch folder (lossless). Every error is an `editflow.errors.EditflowError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np
from PIL import Image

from editflow.config import RunConfig
from editflow.errors import EditflowError
from editflow.manifest import COLUMNS, Manifest, read_manifest
from editflow.media import MediaError, sha256_hex
from editflow.progress import ProgressFn, progress_reporter

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]
#: edit() keywords that are manifest columns; any other keyword goes to the row's `params`
ROW_OPTIONS = ("steps", "strength", "guidance_scale", "jump_length", "jump_n_sample", "mask_grow", "mask_feather")
CONFIG_FIELDS = {f.name for f in dataclasses.fields(RunConfig)} - {"out_dir", "base_dir", "run_id"}


class EditFailed(EditflowError, RuntimeError):
    """An edit's row failed in a stage; `stage`, `error_type` and `info` (the result row) say how."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.stage = info.get("error_stage")
        self.error_type = info.get("error_type")
        super().__init__(f"{info.get('id')}: {self.stage} failed ({self.error_type}): {info.get('error_message')}")


@dataclass
class EditOutput:
    """One edited image: `.image` (PIL RGB), `.mask` (PIL L, 255 = edited) and `.info` (the result row)."""

    image: Image.Image
    mask: Image.Image
    info: dict[str, Any]
    _row: dict[str, Any] = field(repr=False, default_factory=dict)
    _editor: Editor | None = field(repr=False, default=None)

    def save(self, path: str | os.PathLike, output_format: str | None = None, **write_settings: Any) -> str:
        """Write the image as `editflow run` would (same encoder, metadata and ICC profile) to a path
        or storage URI; the format comes from the name (`output_format` may repeat, not contradict it).
        `write_settings`: RunConfig write settings such as quality."""
        from editflow import storage
        from editflow.config import format_for_path

        assert self._editor is not None
        target = os.fspath(path)
        data = self._editor._encode(self, format_for_path(target, output_format), write_settings)
        storage.makedirs(storage.parent(target))
        storage.write_bytes(target, data)
        self.info.update(output=target, output_sha256=sha256_hex(data))
        return target


class Editor:
    """Holds the stages (and so the loaded engines and mask models) across edits.

    `engine` / `model` are the defaults for edits that name none; `device` is cuda, cpu or mps (default:
    cuda when present). Other keywords are `RunConfig` settings (batch_size, cpu_threads,
    allowed_schemes, allow_private_hosts, max_pixels, sam_checkpoint, sam_refine, cache...)."""

    def __init__(self, engine: str | None = None, model: str | None = None, device: str | None = None,
                 **settings: Any) -> None:
        from editflow.runners.stages import EditStage, MaskStage, PrepareStage

        unknown = sorted(set(settings) - CONFIG_FIELDS)
        if unknown:
            raise TypeError(f"unknown Editor setting(s) {', '.join(unknown)}; known: {', '.join(sorted(CONFIG_FIELDS))}")
        if "allowed_schemes" in settings:
            settings["allowed_schemes"] = tuple(dict.fromkeys(("file", *settings["allowed_schemes"])))
        self._scratch = tempfile.TemporaryDirectory(prefix="editflow-editor-")
        self.config = RunConfig(out_dir=self._scratch.name, base_dir=os.getcwd(), device=device, model=model,
                                **({"engine": engine} if engine else {}), **settings)
        self._prepare = PrepareStage(self.config)
        self._mask = MaskStage(self.config)
        self._edit = EditStage(self.config)

    # public ------------------------------------------------------------------------------------
    def edit(self, image: ImageInput, mask: ImageInput | None = None, task: str = "inpaint", *,
             reference: ImageInput | None = None, prompt: str | None = None, negative_prompt: str | None = None,
             seed: int | None = None, engine: str | None = None, model: str | None = None,
             category: str | None = None, id: str | None = None, **options: Any) -> EditOutput:
        """Edit one image. `mask`: a spec (box:..., face:lips, garment:upper, auto...) or a mask image;
        `options`: steps, strength, guidance_scale, jump_length, jump_n_sample, mask_grow, mask_feather,
        and engine extras (they become the row's params). Raises `EditFailed` when the row fails."""
        return self.edit_batch([dict(image=image, mask=mask, task=task, reference=reference, prompt=prompt,
                                     negative_prompt=negative_prompt, seed=seed, engine=engine, model=model,
                                     category=category, id=id, **options)])[0]

    def edit_batch(self, items: Iterable[dict[str, Any]], return_exceptions: bool = False
                   ) -> list[EditOutput | EditFailed]:
        """Edit several images in one pass (rows sharing an engine run in engine batches).

        Each item holds `edit`'s keywords. A failed item raises its `EditFailed` after the batch, or
        with `return_exceptions=True` takes its place in the returned list."""
        from editflow.runners.stages import new_row

        with self._inputs() as stash:
            rows = [new_row(self._raw(stash, index, **item), self.config.run_id) for index, item in enumerate(items)]
            rows = self._edit(self._mask(self._prepare(rows)))
        outputs = [self._output(row) for row in rows]
        if not return_exceptions:
            for output in outputs:
                if isinstance(output, EditFailed):
                    raise output
        return outputs

    def make_mask(self, image: ImageInput, spec: str | ImageInput = "auto", task: str = "inpaint", *,
                  category: str | None = None, mask_grow: int | None = None, mask_feather: int | None = None,
                  **params: Any) -> Image.Image:
        """The mask an edit would use (PIL L, 255 = edit), made by the same mask stage as a run."""
        from editflow.runners.stages import new_row

        options = {k: v for k, v in (("mask_grow", mask_grow), ("mask_feather", mask_feather)) if v is not None}
        with self._inputs() as stash:
            raw = self._raw(stash, 0, image=image, mask=spec, task=task, category=category, **options, **params)
            if task in ("tryon", "makeup"):
                raw["reference"] = raw["image"]  # masks never read the reference; the row check wants one
            row = self._mask(self._prepare([new_row(raw, self.config.run_id)]))[0]
        if row["status"] != "ok":
            raise EditFailed(_info(row))
        return _mask_image(row["_mask"])

    def close(self) -> None:
        """Drop the loaded models and the scratch folder (also done when the editor is collected)."""
        if self._mask._auto is not None:
            self._mask._auto.close()
        self._edit.engines.clear()
        self._scratch.cleanup()

    def __enter__(self) -> Editor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # internals ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _inputs(self):
        folder = Path(self._scratch.name) / f"inputs-{uuid.uuid4().hex[:8]}"
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _raw(self, stash: Path, index: int, *, image: ImageInput, mask: ImageInput | None = None,
             task: str = "inpaint", reference: ImageInput | None = None, id: str | None = None,
             **options: Any) -> dict[str, str | None]:
        """One raw manifest row (all strings, as a manifest file would give)."""
        row_id = id or (_stem(image) if isinstance(image, (str, os.PathLike)) else f"edit-{index}")
        raw: dict[str, str | None] = {name: None for name in COLUMNS}
        raw.update(id=row_id, task=task, image=_as_uri(image, stash, f"{index}-image", "image"),
                   reference=None if reference is None else _as_uri(reference, stash, f"{index}-reference", "reference"),
                   mask=None if mask is None else _as_mask(mask, stash, f"{index}-mask"))
        params = {}
        for key, value in options.items():
            if value is None:
                continue
            if key in ("prompt", "negative_prompt", "engine", "model", "category"):
                raw[key] = str(value)
            elif key == "seed" or key in ROW_OPTIONS:
                raw[key] = str(value)
            elif key == "params":
                params.update(json.loads(value) if isinstance(value, str) else value)
            else:
                params[key] = value
        if params:
            raw["params"] = json.dumps(params)
        return raw

    def _output(self, row: dict[str, Any]) -> EditOutput | EditFailed:
        if row["status"] != "ok":
            return EditFailed(_info(row))
        from editflow.runners.stages import now_utc

        output, mask = row.pop("_output"), row.pop("_mask")
        row["finished_at"] = now_utc()
        kept = {k: v for k, v in row.items() if k not in ("_image", "_reference")}  # _icc stays for save()
        image = Image.fromarray(output)
        if row.get("_icc"):
            image.info["icc_profile"] = row["_icc"]  # PIL's save() keeps it
        return EditOutput(image=image, mask=_mask_image(mask), info=_info(row),
                          _row={**kept, "_output": output, "_mask": mask}, _editor=self)

    def _encode(self, output: EditOutput, fmt: str, write_settings: dict[str, Any]) -> bytes:
        """Run the write stage on the edited row into a scratch folder and return the file's bytes."""
        from editflow.runners.stages import WriteStage

        folder = Path(self._scratch.name) / f"write-{uuid.uuid4().hex[:8]}"
        config = dataclasses.replace(self.config, out_dir=str(folder), output_format=fmt, write_masks=False,
                                     **write_settings)
        try:
            row = WriteStage(config)([dict(output._row)])[0]
            if row["status"] != "ok":
                raise EditFailed(_info(row))
            return (folder / row["output"]).read_bytes()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _info(row: dict[str, Any]) -> dict[str, Any]:
    from editflow.results import RESULT_COLUMNS

    return {k: row.get(k) for k in RESULT_COLUMNS}


def _mask_image(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(np.rint(np.clip(mask, 0, 1) * 255).astype(np.uint8), "L")


def _stem(value: str | os.PathLike) -> str:
    name = Path(str(value).split("?")[0]).stem
    return name or "edit"


def _as_uri(value: ImageInput, stash: Path, name: str, what: str) -> str:
    """A path/URI as the stages read it (local paths made absolute); in-memory images as a PNG file."""
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        return text if "://" in text else str(Path(text).expanduser().resolve())
    return _stash_png(_to_pil(value, what), stash, name)


def _as_mask(value: ImageInput, stash: Path, name: str) -> str:
    """A mask spec string, a mask file (absolute), or an in-memory mask (PIL, bool/0-1/uint8 array)."""
    from editflow.masks.spec import parse_mask_spec

    if isinstance(value, os.PathLike):
        return str(Path(value).expanduser().resolve())
    if isinstance(value, str):
        spec = parse_mask_spec(value)  # a malformed spec fails here with its own message
        if spec.kind == "file" and "://" not in value:
            return str(Path(value).expanduser().resolve())
        return value
    if isinstance(value, np.ndarray) and value.dtype != np.uint8:
        value = np.rint(np.clip(value.astype(np.float32), 0, 1) * 255).astype(np.uint8)
    return _stash_png(_to_pil(value, "mask"), stash, name)


def _to_pil(value: Any, what: str) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim not in (2, 3) or (value.ndim == 3 and value.shape[2] not in (1, 3, 4)):
            raise MediaError(f"{what} array must be uint8 H x W, H x W x 3 or H x W x 4; got {value.dtype} {value.shape}")
        return Image.fromarray(value[..., 0] if value.ndim == 3 and value.shape[2] == 1 else value)
    raise MediaError(f"{what} must be a path, a URI, a PIL image or a numpy array; got {type(value).__name__}")


def _stash_png(image: Image.Image, stash: Path, name: str) -> str:
    stash.mkdir(parents=True, exist_ok=True)
    path = stash / f"{name}.png"
    image.save(path, format="PNG")
    return str(path)


# module-level conveniences ---------------------------------------------------------------------
_shared: tuple[tuple, Editor] | None = None


def _editor_for(device: str | None, settings: dict[str, Any]) -> Editor:
    """The last Editor with these settings (so `editflow.edit` in a loop loads each model once)."""
    global _shared
    key = (device, tuple(sorted((k, repr(v)) for k, v in settings.items())))
    if _shared is None or _shared[0] != key:
        if _shared is not None:
            _shared[1].close()
        _shared = (key, Editor(device=device, **settings))
    return _shared[1]


def edit(image: ImageInput, mask: ImageInput | None = None, task: str = "inpaint", *,
         engine: str | None = None, model: str | None = None, reference: ImageInput | None = None,
         prompt: str | None = None, seed: int | None = None, device: str | None = None,
         settings: dict[str, Any] | None = None, **options: Any) -> EditOutput:
    """Edit one image (see `Editor.edit`); reuses one Editor per device and settings across calls."""
    return _editor_for(device, settings or {}).edit(image, mask, task, engine=engine, model=model,
                                                    reference=reference, prompt=prompt, seed=seed, **options)


def make_mask(image: ImageInput, spec: str | ImageInput = "auto", task: str = "inpaint", *,
              device: str | None = None, settings: dict[str, Any] | None = None, **options: Any) -> Image.Image:
    """The mask an edit of `image` with mask `spec` would use (PIL L, 255 = edit); see `Editor.make_mask`."""
    return _editor_for(device, settings or {}).make_mask(image, spec, task, **options)


@dataclass(frozen=True)
class Summary:
    """What a run ended with (OUT/summary.json): counts, exit code and where things are."""

    out_dir: str  # a local folder or a storage URI
    rows: int
    ok: int
    error: int
    skipped: int
    missing: int
    exit_code: int
    executor: str | None
    run_id: str | None
    wall_s: float | None
    error_types: dict[str, int]
    error_examples: dict[str, str]
    data: dict[str, Any] = field(repr=False)  # the whole summary.json

    @classmethod
    def from_dict(cls, data: dict[str, Any], out_dir: str | os.PathLike) -> Summary:
        status = data.get("status", {})
        return cls(out_dir=os.fspath(out_dir), rows=data["rows"], ok=status.get("ok", 0), error=status.get("error", 0),
                   skipped=status.get("skipped", 0), missing=data.get("missing", 0), exit_code=data["exit_code"],
                   executor=data.get("executor"), run_id=data.get("run_id"), wall_s=data.get("wall_s"), error_types=data.get("error_types", {}),
                   error_examples=data.get("error_examples", {}), data=data)

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> Summary:
        """The summary of a finished run in `out_dir`."""
        from editflow import storage

        path = storage.join(out_dir, "summary.json")
        try:
            return cls.from_dict(json.loads(storage.read_bytes(path)), out_dir)
        except (OSError, ValueError, KeyError) as exc:
            raise EditflowError(f"no readable run summary at {path}: {exc}") from None

    def _join(self, name: str) -> str:
        from editflow import storage

        return storage.join(self.out_dir, name)

    @property
    def images(self) -> str:
        return self._join("images")

    @property
    def results(self) -> str:
        return self._join("results")

    @property
    def summary_path(self) -> str:
        return self._join("summary.json")

    @property
    def report(self) -> str:
        """Where `editflow report` / `run --report` writes the HTML contact sheet."""
        return self._join("report/index.html")


def run(manifest: str | os.PathLike | Manifest, out: str | os.PathLike, executor: str = "ray", resume: bool = False,
        *, engine: str | None = None, model: str | None = None, device: str | None = None,
        workers: int | None = None, rows_per_block: int = 8, progress: bool | ProgressFn | None = True,
        progress_interval: float | None = None, verbose: bool = False, force_unlock: bool = False,
        gpus_per_worker: float | None = None, rows_per_file: int | None = None, **settings: Any) -> Summary:
    """Edit every row of a manifest into `out` (as `editflow run`); return its `Summary`.

    `progress`: True for the bar (on a terminal) or a plain line every `progress_interval` seconds on
    stderr, False for none, or your own ``fn(rows_done, rows_total, ok, errors)``. Library logs go to
    OUT/logs/libraries.log unless `verbose`. `force_unlock` takes OUT's lease even from a run that
    seems alive. `gpus_per_worker`: GPUs per Ray edit actor for diffusers engines (0.5 shares one).
    `rows_per_file`: result rows per Parquet file (default 1000). On Ray a manifest given by path
    is streamed: the driver checks its id column and the workers read the rows.
    Other keywords are `RunConfig` settings (batch_size, cpu_threads, output_format, quality, and
    the engine switches dtype, micro_batch, cpu_offload...).
    Raises `RunError` / `ManifestError` (both `EditflowError`) when the run cannot start."""
    from editflow.logs import default_log_path, library_logs
    from editflow.runners.driver import run_manifest

    unknown = sorted(set(settings) - CONFIG_FIELDS)
    if unknown:
        raise TypeError(f"unknown run setting(s) {', '.join(unknown)}; known: {', '.join(sorted(CONFIG_FIELDS))}")
    if isinstance(manifest, Manifest):
        table = manifest
    elif executor == "ray":  # Ray's readers take the rows on the workers; here only the ids
        from editflow.manifest_index import index_manifest

        table = index_manifest(manifest)
    else:
        table = read_manifest(manifest)
    if "allowed_schemes" in settings:
        settings["allowed_schemes"] = tuple(dict.fromkeys(("file", *settings["allowed_schemes"])))
    config = RunConfig(out_dir=os.fspath(out), base_dir=table.base_dir, model=model, device=device,
                       **({"engine": engine} if engine else {}), **settings)
    with library_logs(default_log_path(out), verbose=verbose):
        own = progress_reporter(interval=progress_interval) if progress is True else None  # made here: it writes to the terminal
        try:
            data = run_manifest(table, config, executor=executor, resume=resume, workers=workers,
                                rows_per_block=rows_per_block, force_unlock=force_unlock,
                                progress=own or (progress if callable(progress) else None),
                                gpus_per_worker=gpus_per_worker, rows_per_file=rows_per_file)
        finally:
            if own is not None:
                own.close()
    return Summary.from_dict(data, out)


def plan(manifest: str | os.PathLike | Manifest, engine: str | None = None, model: str | None = None,
         **settings: Any):
    """What `run` would do with a manifest (rows per task and engine, models and whether their
    weights are here, masks by kind) without reading an image; see `editflow.run_plan.RunPlan`."""
    from editflow.run_plan import make_plan

    table = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    return make_plan(table, engine=engine, model=model, sam_checkpoint=settings.get("sam_checkpoint"))


__all__ = ["EditFailed", "EditOutput", "Editor", "ImageInput", "Summary", "edit", "make_mask", "plan", "run"]
