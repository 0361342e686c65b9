"""The four stages of an edit: prepare -> mask -> edit -> write, over batches of rows.

A row is a dict: the raw manifest cells under "manifest", the result columns at the top level,
and in-flight arrays under "_image", "_mask", "_reference", "_output" (and what the mask stage
found or made for the engine: "_faces", "_host"; see PAYLOAD_KEYS). Every stage catches errors
per row, marks that row (status "error", the stage, the exception type and a readable message)
and passes rows that already failed through untouched. Stages are plain Python: the local runner
calls them directly and the Ray runner wraps them in `map_batches`.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
import socket
import time
from collections import defaultdict
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import numpy as np

from editflow import storage
from editflow.version import __version__
from editflow.config import RunConfig
from editflow.engines import HOST_STEPS, EditRequest, Engine, engine_target, get_engine_class, host_step_class
from editflow.engines.base import NSFWContentError, composite_unmasked, unmasked_max_diff
from editflow.infotext import format_infotext
from editflow.manifest import EditRow, RowError, parse_row
from editflow.masks import ops
from editflow.masks.render import render_geometric
from editflow.masks.spec import MaskSpec, parse_mask_spec
from editflow.tasks import AUTO_MASK_KINDS, auto_mask_text
from editflow.media import (
    decode_image, encode_image, load_mask_file, read_bytes, resolve_uri, safe_output_name, sha256_hex,
)

Row = dict[str, Any]
#: in-flight arrays; "_faces" = face landmarks the mask stage found (N × 478 × 2), for the engine;
#: "_host" = the arrays of the engine's host step (engines/host.py) the mask stage ran, by name
PAYLOAD_KEYS = ("_image", "_mask", "_reference", "_output", "_icc", "_faces", "_host")
BYTES_PAYLOAD_KEYS = ("_icc",)  # in-flight bytes (the input's ICC profile)
NAMED_PAYLOAD_KEYS = ("_host",)  # in-flight dicts of named arrays; the other keys hold one array each
MAX_ERROR_CHARS = 1000


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


@lru_cache(maxsize=None)
def worker_name(pid: int) -> str:
    """host:pid of this process, computed once per process (keyed by pid so a fork recomputes it)."""
    return f"{socket.gethostname()}:{pid}"


def new_row(raw: dict[str, Any], run_id: str) -> Row:
    """The starting state of a row: its raw manifest cells and identity columns."""
    return {
        "manifest": dict(raw),
        "id": raw.get("id"),
        "task": raw.get("task"),
        "image": raw.get("image"),
        "reference": raw.get("reference"),
        "mask_spec": raw.get("mask"),
        "prompt": raw.get("prompt"),
        "negative_prompt": raw.get("negative_prompt"),
        "category": raw.get("category"),
        "status": "ok",
        "run_id": run_id,
        "attempt": 1,
        "editflow_version": __version__,
        "worker": worker_name(os.getpid()),
        "started_at": now_utc(),
    }


def mark_error(row: Row, stage: str, exc: BaseException) -> None:
    """Turn a row into an error row and drop its in-flight arrays."""
    message = str(exc) or exc.__class__.__name__
    row.update(
        status="error",
        error_stage=stage,
        error_type=exc.__class__.__name__,
        error_message=message[:MAX_ERROR_CHARS],
        finished_at=now_utc(),
    )
    for key in PAYLOAD_KEYS:
        row.pop(key, None)


def _parsed(row: Row) -> EditRow:
    """The row's typed manifest cells, parsed once per row and process (kept under "_edit")."""
    edit = row.get("_edit")
    if edit is None:
        edit = row["_edit"] = parse_row(row["manifest"])
    return edit


def row_request(row: Row) -> EditRequest:
    """The engine's view of a row that has its image and final mask (what the mask stage found
    and the host arrays it made included)."""
    edit = _parsed(row)
    return EditRequest(
        id=edit.id, task=edit.task, image=row["_image"], mask=row["_mask"], seed=edit.seed,
        reference=row.get("_reference"), prompt=edit.prompt, negative_prompt=edit.negative_prompt,
        steps=edit.steps, strength=edit.strength, guidance_scale=edit.guidance_scale,
        jump_length=edit.jump_length, jump_n_sample=edit.jump_n_sample, category=edit.category,
        params=edit.params, image_key=row.get("input_sha256"), reference_key=row.get("reference_sha256"),
        faces=row.get("_faces"), host=row.get("_host"),
    )


class Stage(ABC):
    """Per-row error isolation around `process_row`; subclasses may override `process`."""

    name = "stage"

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def __call__(self, rows: list[Row]) -> list[Row]:
        pending = [r for r in rows if r["status"] == "ok"]
        if pending:
            self.process(pending)
        return rows

    def process(self, rows: list[Row]) -> None:
        for row in rows:
            try:
                self.process_row(row)
            except Exception as exc:  # one bad row never stops the others
                mark_error(row, self.name, exc)

    @abstractmethod
    def process_row(self, row: Row) -> None:
        """Fill in this stage's columns of one row, or raise: the row becomes an error row."""

    def close(self) -> None:
        """Free what the stage holds (models, detectors) when its worker finishes."""


class PrepareStage(Stage):
    """Validate the row, read and decode the image (and reference) under the media policy."""

    name = "prepare"

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        self.policy = config.media_policy()

    def process_row(self, row: Row) -> None:
        started = time.perf_counter()
        edit = _parsed(row)
        row.update(seed=edit.seed, mask_spec=edit.mask.text, task=edit.task, category=edit.category)
        uri = resolve_uri(edit.image, self.config.base_dir)
        data = read_bytes(uri, self.policy)
        decoded = decode_image(data, self.policy, name=edit.image)
        row["_image"] = decoded.array
        if decoded.icc_profile:
            row["_icc"] = decoded.icc_profile
        row["input_sha256"] = sha256_hex(data)
        row["height"], row["width"] = decoded.array.shape[:2]
        if edit.reference:
            ref_uri = resolve_uri(edit.reference, self.config.base_dir)
            ref_data = read_bytes(ref_uri, self.policy)
            row["_reference"] = decode_image(ref_data, self.policy, name=edit.reference).array
            row["reference_sha256"] = sha256_hex(ref_data)
        row["t_load_s"] = time.perf_counter() - started


def resolve_auto(spec: MaskSpec, edit: EditRow) -> MaskSpec:
    """What `auto` means for each task."""
    if spec.kind != "auto":
        return spec
    text = auto_mask_text(edit.task, edit.category)
    if text is not None:
        return parse_mask_spec(text)
    raise RowError(f"task {edit.task} needs a mask: box:x0,y0,x1,y1, polygon:..., sam:..., or a mask image")


class MaskStage(Stage):
    """Make the row's float mask (1 = edit) at the image's size, then grow and feather it; then run
    the host step of the row's engine, if it has one (its CPU work before the accelerator's)."""

    name = "mask"

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        self.policy = config.media_policy()
        self._auto = None  # model-backed masks: made on first use, kept for the actor's life
        self.host_steps: dict[str, Any] = {}  # "module:Class" -> host step, built on first use

    @property
    def auto(self):
        if self._auto is None:
            from editflow.masks.auto import AutoMasker

            self._auto = AutoMasker(self.config.mask_settings())
        return self._auto

    def process_row(self, row: Row) -> None:
        started = time.perf_counter()
        edit = _parsed(row)
        spec = resolve_auto(edit.mask, edit)
        height, width = row["_image"].shape[:2]
        if spec.kind in ("box", "polygon", "full"):
            mask = render_geometric(spec, width, height)
        elif spec.kind == "file":
            mask = load_mask_file(resolve_uri(spec.uri, self.config.base_dir), self.policy, (width, height))
        elif spec.kind in AUTO_MASK_KINDS:
            from editflow.masks.auto import MaskContext, mask_options

            context = MaskContext(image_key=row.get("input_sha256"), options=mask_options(edit.params))
            hits = self.auto.stats["mask_hits"]
            mask = self.auto.make(spec, row["_image"], context)
            row["mask_cached"] = self.auto.stats["mask_hits"] > hits
            faces = self.auto.faces_found(row["_image"], context)
            if faces is not None:  # the engine reuses them (makeup) instead of looking again
                row["_faces"] = faces
        else:
            raise RowError(f"cannot make a mask from {spec.text!r}")
        mask = ops.feather(ops.grow(mask, edit.mask_grow), edit.mask_feather)
        if not (mask > 0).any():
            raise RowError(f"mask {spec.text!r} is empty after mask_grow={edit.mask_grow}")
        row["_mask"] = mask.astype(np.float32)
        row["mask_spec"] = spec.text
        row["mask_area"] = ops.area_fraction(mask)
        self.run_host_step(row, edit)
        row["t_mask_s"] = time.perf_counter() - started

    def run_host_step(self, row: Row, edit: EditRow) -> None:
        """The row's engine's host step (engines/host.py), its arrays carried as "_host". A step that
        fails leaves the row without them: the engine runs it again and reports the row's error
        (stage, type and message as when the engine does all the work)."""
        target = HOST_STEPS.get((edit.engine or self.config.engine, edit.task))
        if target is None:
            return
        try:
            step = self.host_steps.get(target)
            if step is None:
                step_class = host_step_class(edit.engine or self.config.engine, edit.task)
                step = self.host_steps[target] = step_class(cache=self.config.cache, **self.config.engine_options())
            row["_host"] = step.run(row_request(row))
        except Exception:  # the engine's to report (see above)
            pass

    def close(self) -> None:
        if self._auto is not None:
            self._auto.close()
            self._auto = None
        steps, self.host_steps = self.host_steps, {}
        for step in steps.values():
            step.close()


class EditStage(Stage):
    """Run each row's engine over batches of rows, then paste unmasked pixels back exactly."""

    name = "edit"

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        self.engines: dict[tuple[str, str | None], Engine] = {}  # (module:Class, model) -> engine
        self.shared_models: dict = {}  # loaded pipelines the engines of one model share (editflow.engines.sd)
        self.device = config.device or _default_device()
        if self.device == "cpu":
            _pin_cpu_threads(config.cpu_threads or os.cpu_count() or 1)

    def engine(self, name: str, task: str, model: str | None) -> Engine:
        key = (engine_target(name, task), model)
        if key not in self.engines:  # models load once per worker
            self.engines[key] = get_engine_class(name, task).from_pretrained(
                model=model, device=self.device, cache=self.config.cache, shared_models=self.shared_models,
                **self.config.engine_options())
        return self.engines[key]

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()

    def process(self, rows: list[Row]) -> None:
        groups: dict[tuple[str, str, str | None], list[Row]] = defaultdict(list)
        for row in rows:
            edit = _parsed(row)
            groups[(edit.engine or self.config.engine, edit.task, edit.model or self.config.model)].append(row)
        for (name, task, model), group in groups.items():
            try:
                engine = self.engine(name, task, model)
            except Exception as exc:
                for row in group:
                    mark_error(row, self.name, exc)
                continue
            # rows of one size and settings next to each other: they share the engine's batched calls
            group.sort(key=_bucket)
            size = max(1, self.config.batch_size)
            for start in range(0, len(group), size):
                self._run(engine, name, group[start:start + size])

    def process_row(self, row: Row) -> None:
        self.process([row])

    def _run(self, engine: Engine, name: str, rows: list[Row]) -> None:
        started = time.perf_counter()
        requests = [row_request(row) for row in rows]
        try:
            results = engine.edit_batch(requests)
        except Exception as exc:
            results = [exc] * len(rows)
        elapsed = (time.perf_counter() - started) / len(rows)
        for row, request, result in zip(rows, requests, results):
            if isinstance(result, Exception):
                mark_error(row, self.name, result)
                continue
            row["nsfw"] = result.nsfw
            if result.nsfw:  # the opt-in safety checker flagged it: nothing is written, the row says why
                mark_error(row, self.name, NSFWContentError(
                    f"the {name} engine's safety checker flagged this output; it was not written"))
                continue
            try:
                output = composite_unmasked(request.image, result.image, request.mask)
            except Exception as exc:
                mark_error(row, self.name, exc)
                continue
            row["_output"] = output
            row.update(
                engine=name, model=result.model or engine.model, reference_cached=result.reference_cached, model_revision=result.model_revision,
                adapter=result.adapter,
                scheduler=result.scheduler, steps=result.steps, strength=result.strength,
                guidance_scale=result.guidance_scale, jump_length=result.jump_length,
                jump_n_sample=result.jump_n_sample, nfe=result.nfe,
                proc_width=result.proc_width or request.image.shape[1],
                proc_height=result.proc_height or request.image.shape[0],
                unmasked_max_diff=unmasked_max_diff(request.image, output, request.mask),
                device=engine.device_name, t_edit_s=elapsed,
                torch_version=_version("torch"), diffusers_version=_version("diffusers"),
            )


class WriteStage(Stage):
    """Encode and atomically write the output image and its mask inside OUT; finish the row.

    Files are made durable together (one round of fsyncs per batch, or per `sync` call when the
    caller syncs before it commits its result file), before any result row names them.
    """

    name = "write"

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        self.images = storage.join(config.out_dir, "images")  # OUT may be any storage location
        self.masks = storage.join(config.out_dir, "masks")
        storage.makedirs(self.images)
        if config.write_masks:
            storage.makedirs(self.masks)
        self._written: list[str] = []
        self.sync_per_batch = True  # the local runner syncs once per result file instead

    def __call__(self, rows: list[Row]) -> list[Row]:
        rows = super().__call__(rows)
        if self.sync_per_batch:
            self.sync(rows)
        for row in rows:  # nothing in flight leaves the pipeline
            for key in (*PAYLOAD_KEYS, "_edit"):
                row.pop(key, None)
        return rows

    def sync(self, rows: list[Row]) -> None:
        """Make every file written since the last sync durable; if that fails, `rows` are not ok."""
        written, self._written = self._written, []
        try:
            storage.sync_files(written)
        except OSError as exc:  # a file that cannot be made durable is not reported as done
            for row in rows:
                if row["status"] == "ok":
                    mark_error(row, self.name, exc)

    def _write(self, folder: str, name: str, data: bytes) -> None:
        location = storage.child(folder, name)
        storage.write_bytes(location, data, durable=False)  # made durable per batch in __call__
        self._written.append(location)

    def process_row(self, row: Row) -> None:
        started = time.perf_counter()
        fmt = self.config.output_format
        name = safe_output_name(row["id"], "." + ("jpg" if fmt == "jpeg" else fmt))
        data = encode_image(row["_output"], fmt, metadata={"editflow": json.dumps(_parameters(row), sort_keys=True)},
                            parameters=format_infotext(row), icc_profile=row.get("_icc"), quality=self.config.quality)
        self._write(self.images, name, data)
        row["output"] = f"images/{name}"
        row["output_sha256"] = sha256_hex(data)
        if self.config.write_masks:
            mask_name = safe_output_name(row["id"], ".png")
            self._write(self.masks, mask_name, encode_image(np.rint(row["_mask"] * 255).astype(np.uint8), "png"))
            row["mask_output"] = f"masks/{mask_name}"
        row["t_write_s"] = time.perf_counter() - started
        row["finished_at"] = now_utc()


PARAMETER_KEYS = (
    "id", "task", "engine", "model", "model_revision", "scheduler", "steps", "strength", "guidance_scale",
    "jump_length", "jump_n_sample", "seed", "mask_spec", "prompt", "negative_prompt", "nfe", "editflow_version",
)


def _parameters(row: Row) -> dict[str, Any]:
    return {k: row.get(k) for k in PARAMETER_KEYS if row.get(k) is not None}


def _bucket(row: Row) -> tuple:
    """What decides whether two rows can share a network call: image size and sampler settings."""
    edit = _parsed(row)
    h, w = row["_image"].shape[:2]
    return (h, w, edit.task, edit.steps or 0, edit.strength if edit.strength is not None else -1.0,
            edit.guidance_scale if edit.guidance_scale is not None else -1.0)


def _default_device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    except ImportError:
        pass
    return "cpu"


def _pin_cpu_threads(threads: int) -> None:
    try:
        import torch
    except ImportError:
        return
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@lru_cache(maxsize=None)
def _version(package: str) -> str | None:
    """An installed package's version, looked up once per process (importlib.metadata scans sys.path)."""
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:
        return None


def run_stages(rows: list[Row], stages: list[Stage]) -> list[Row]:
    """Pass rows through the stages in order (the in-process pipeline)."""
    for stage in stages:
        rows = stage(rows)
    return rows


def close_stages(stages: list[Stage]) -> None:
    """Call every stage's `close` (a worker is done), even when one of them fails."""
    errors = []
    for stage in stages:
        try:
            stage.close()
        except Exception as exc:  # the others still close
            errors.append(exc)
    if errors:
        raise errors[0]
