"""The engine interface: a batch of edit requests in, a batch of edited images out.

An engine never writes files and never pastes back: the edit stage composites the result over
the original so that unmasked pixels stay exact for every engine (`composite_unmasked`).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from editflow.engines.host import host_step_class
from editflow.engines.params import EngineParams
from editflow.errors import EditflowError
from editflow.models import ModelInfo

log = logging.getLogger(__name__)


@dataclass
class EditRequest:
    """One edit, fully resolved: decoded image, float mask (1 = edit), seed and parameters.

    Parameters left as None take the engine's defaults; the engine reports what it used.
    """

    id: str
    task: str
    image: np.ndarray  # H x W x 3 uint8 RGB
    mask: np.ndarray  # H x W float32 in [0, 1], 1 = edit
    seed: int
    reference: np.ndarray | None = None  # H' x W' x 3 uint8 RGB (garment, makeup face)
    prompt: str | None = None
    negative_prompt: str | None = None
    steps: int | None = None
    strength: float | None = None
    guidance_scale: float | None = None
    jump_length: int | None = None
    jump_n_sample: int | None = None
    category: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    #: content hashes (sha256 of the input files): keys for per-worker caches of encodings
    image_key: str | None = None
    reference_key: str | None = None
    #: facts the mask stage found in `image`, so the engine does not look again:
    #: face landmarks (N × 478 × 2 float32 px, largest face first), or None
    faces: np.ndarray | None = None
    #: the engine's host step's arrays for this row (engines/host.py), computed by the mask stage;
    #: None: the engine computes them itself (`Engine.with_host`)
    host: dict[str, np.ndarray] | None = None
    #: `params` parsed into the engine's `Params` (set by the batch loop; None until then)
    typed_params: EngineParams | None = None


@dataclass
class EditResult:
    """What an engine made of one request. `image` has the request's height and width."""

    image: np.ndarray  # H x W x 3 uint8 RGB
    nfe: int = 0  # denoiser evaluations
    scheduler: str | None = None
    steps: int | None = None
    strength: float | None = None
    guidance_scale: float | None = None
    jump_length: int | None = None
    jump_n_sample: int | None = None
    proc_width: int | None = None
    proc_height: int | None = None
    model: str | None = None
    model_revision: str | None = None
    #: True when the reference's encoding came from the engine's per-worker cache
    reference_cached: bool | None = None
    #: the safety checker's verdict when it ran (opt-in), else None
    nsfw: bool | None = None
    #: conditioning adapters the row ran with (IP-Adapter weight file and scale, ControlNet), if any
    adapter: str | None = None


class Engine(ABC):
    """Base class of editing engines. Build once per worker with `from_pretrained`; call `edit_batch`
    many times; `close` when the worker is done."""

    #: registry name, e.g. "opencv", "builtin".
    name: ClassVar[str] = ""
    #: tasks this engine can run.
    tasks: ClassVar[frozenset[str]] = frozenset()
    #: the models this engine is known to work with; the first is its default (none: weight-free).
    models: ClassVar[tuple[ModelInfo, ...]] = ()
    #: the row params this engine reads: their names, types, defaults and docs.
    Params: ClassVar[type[EngineParams]] = EngineParams
    #: what it does and what weights it needs, for the README's engine table (`editflow models --markdown`).
    summary: ClassVar[str] = ""
    weights: ClassVar[str] = "none"

    def __init__(self, model: str | None = None, device: str | None = None, **options: Any) -> None:
        self.model = model
        self.device = device or "cpu"
        self.options = options

    @classmethod
    def default_model(cls) -> str | None:
        """The model a row without one gets (None for weight-free engines)."""
        return cls.models[0].id if cls.models else None

    @classmethod
    def from_pretrained(cls, model: str | None = None, device: str | None = None, **options: Any) -> Engine:
        """Load what the engine needs for `model` and build it (weight-free engines load nothing)."""
        return cls(model=model, device=device, **options)

    @property
    def device_name(self) -> str:
        return str(self.device)

    def params_of(self, request: EditRequest) -> Any:
        """The request's params parsed into this engine's `Params` (ParamsError when they do not fit)."""
        if isinstance(request.typed_params, self.Params):
            return request.typed_params
        return self.Params.parse(request.params, self.name)

    def with_host(self, request: EditRequest) -> EditRequest:
        """`request` with its host step's arrays: as the mask stage made them, else made here (the
        same step, so the bytes are the same); unchanged when the engine has no host step."""
        if request.host is not None:
            return request
        step = self.host_step(request.task)
        return request if step is None else dataclasses.replace(request, host=step.run(request))

    def host_step(self, task: str) -> Any:
        """This engine's host step for `task` (engines/host.py), built on first use; None if it has none."""
        steps = self.__dict__.setdefault("_host_steps", {})
        if task not in steps:
            step_class = host_step_class(self.name, task)
            steps[task] = None if step_class is None else step_class(**self.options)
        return steps[task]

    def close(self) -> None:
        """Free what the engine holds beyond memory (detectors, native handles); called when a worker ends.
        Subclasses that override it call ``super().close()``."""
        for step in self.__dict__.pop("_host_steps", {}).values():
            if step is not None:
                step.close()

    @abstractmethod
    def edit_batch(self, requests: list[EditRequest]) -> list[EditResult | Exception]:
        """Edit every request; a failure of one request is returned as its exception."""


class EngineError(EditflowError, ValueError):
    """A request the engine cannot run (wrong task, missing reference, bad params)."""


class NSFWContentError(EditflowError):
    """The (opt-in) safety checker flagged the row's output: nothing is written for it."""


class RowLimits:
    """How many rows of a kind of call fit in accelerator memory, learnt from out-of-memory splits.

    Per engine instance and per memory key (a job's `memory_key()`: what the memory of a call
    depends on, e.g. the path and processing size; else its `key()`). Once a call of n rows ran
    out of memory, later groups of that key start at the largest size that has run without it
    (and is below n), instead of running out of memory again on every batch."""

    def __init__(self, owner: str = "") -> None:
        self.owner = owner
        self._failed: dict[Any, int] = {}  # smallest row count that ran out of memory
        self._ran: dict[Any, set[int]] = {}  # row counts that ran

    def rows(self, key: Any) -> int | None:
        """The most rows per call for `key` (None: no limit learnt)."""
        failed = self._failed.get(key)
        if failed is None:
            return None
        fits = [n for n in self._ran.get(key, ()) if n < failed]
        return max(fits) if fits else None

    def out_of_memory(self, key: Any, rows: int) -> None:
        self._failed[key] = min(rows, self._failed.get(key, rows))

    def ran(self, key: Any, rows: int) -> None:
        before = self.rows(key)
        self._ran.setdefault(key, set()).add(rows)
        after = self.rows(key)
        if after is not None and after != before:
            log.warning("%s ran out of memory at %d rows per call (%r); from now on calls take at most %d rows",
                        self.owner or "engine", self._failed[key], key, after)


def memory_key(job: Any) -> Any:
    """What the memory of a call of `job`'s group depends on (`RowLimits`)."""
    key = getattr(job, "memory_key", None)
    return key() if key is not None else job.key()


def run_grouped(jobs: list[Any], run: Any, results: list, limits: RowLimits | None = None) -> None:
    """Group jobs by `job.key()`, call `run(group) -> list[EditResult]`, scatter into `results[job.index]`.

    A failure inside one group's call becomes every row of that group's error, not the batch's;
    a group that runs out of accelerator memory is split in halves and retried, so only rows that
    do not fit even alone fail. With `limits`, the size that fitted is remembered and later groups
    are cut to it before they run.
    """
    groups: dict[tuple, list[Any]] = {}
    for job in jobs:
        groups.setdefault(job.key(), []).append(job)
    for group in groups.values():
        key = memory_key(group[0])
        size = limits.rows(key) if limits is not None else None
        step = size or len(group)
        for start in range(0, len(group), step):
            _run_group(group[start:start + step], run, results, limits, key)


def _run_group(group: list[Any], run: Any, results: list, limits: RowLimits | None, key: Any) -> None:
    try:
        for job, result in zip(group, run(group), strict=True):
            results[job.index] = result
    except Exception as exc:
        if len(group) > 1 and is_out_of_memory(exc):
            del exc  # drop the traceback's frames (and the tensors they hold) before retrying
            _release_memory()
            if limits is not None:
                limits.out_of_memory(key, len(group))
            half = len(group) // 2
            _run_group(group[:half], run, results, limits, key)
            _run_group(group[half:], run, results, limits, key)
            return
        for job in group:
            results[job.index] = exc
        return
    if limits is not None:
        limits.ran(key, len(group))


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's out-of-memory error (CUDA or another accelerator); torch stays unimported."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


def _release_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class RowJob:
    """A request as a job of its own (engines whose rows never share a call)."""

    index: int
    request: EditRequest

    def key(self) -> tuple:
        return (self.index,)


class JobEngine(Engine):
    """An engine that checks each request into a job (`_prepare`), then runs compatible jobs
    together (`_run`): rows that share a size and settings share one batched call.

    The loop per row: params parsed into `Params` -> `before` (a subclass's own first step, e.g.
    a try-on's garment start) -> `_prepare` -> grouped `_run` -> `after` (e.g. shading put back).
    A failure at any step is that row's error only."""

    def edit_batch(self, requests: list[EditRequest]) -> list[EditResult | Exception]:
        results: list[Any] = [None] * len(requests)
        staged: dict[int, tuple[EditRequest, Any]] = {}
        for i, request in enumerate(requests):
            try:
                request = dataclasses.replace(request, typed_params=self.params_of(request))
                staged[i] = self.before(request)
            except Exception as exc:
                results[i] = exc
        outputs = self.sample([request for request, _ in staged.values()])
        for (i, (_, state)), output in zip(staged.items(), outputs):
            if isinstance(output, EditResult):
                try:
                    output = self.after(requests[i], output, state)
                except Exception as exc:
                    output = exc
            results[i] = output
        return results

    def sample(self, requests: list[EditRequest]) -> list[EditResult | Exception]:
        """Prepare and run `requests` as they are (no hooks): one result, or the row's exception, each."""
        results: list[Any] = [None] * len(requests)
        jobs = []
        for i, request in enumerate(requests):
            try:
                jobs.append(self._prepare(i, request))
            except Exception as exc:
                results[i] = exc
        run_grouped(jobs, self._run, results, self.row_limits)
        return [r if r is not None else EngineError("no result") for r in results]

    @property
    def row_limits(self) -> RowLimits:
        """The rows per call this engine learnt fit in memory (kept for the engine's life)."""
        limits = self.__dict__.get("_row_limits")
        if limits is None:
            limits = self.__dict__["_row_limits"] = RowLimits(f"engine {self.name} ({self.model})")
        return limits

    def before(self, request: EditRequest) -> tuple[EditRequest, Any]:
        """A row's own first step: the request the sampler sees and a state for `after`."""
        return request, None

    def after(self, request: EditRequest, result: EditResult, state: Any) -> EditResult:
        """A row's own last step on its result (`request` is the row as it came in)."""
        return result

    def _prepare(self, index: int, request: EditRequest) -> Any:
        """Check one request and turn it into a job with `.index` and `.key()` (default: a job of its own)."""
        return RowJob(index, request)

    @abstractmethod
    def _run(self, jobs: list[Any]) -> list[EditResult]:
        """Edit a group of jobs that share a key; one result per job, in order."""


def composite_unmasked(original: np.ndarray, edited: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend `edited` over `original` by `mask`; where the mask is 0 the original is kept exactly."""
    if edited.shape != original.shape:
        raise ValueError(f"engine returned {edited.shape}, expected {original.shape}")
    alpha = np.clip(mask, 0.0, 1.0)[..., None].astype(np.float32)
    blended = original.astype(np.float32) * (1.0 - alpha) + edited.astype(np.float32) * alpha
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    keep = mask <= 0
    out[keep] = original[keep]
    return out


def unmasked_max_diff(original: np.ndarray, output: np.ndarray, mask: np.ndarray) -> int:
    """Largest absolute pixel difference outside the mask (0 when paste-back is exact)."""
    keep = mask <= 0
    if not keep.any():
        return 0
    diff = np.abs(original[keep].astype(np.int16) - output[keep].astype(np.int16))
    return int(diff.max()) if diff.size else 0
