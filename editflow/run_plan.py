"""`run --dry-run`: what a run would do, read from the manifest table alone (nothing edited or written).

The rows are grouped once with pyarrow (task x engine x model x mask kind), so the Python below runs
per distinct group, never per row: a million-row catalog of one task and engine is one group.
Checked without opening an image: tasks and engine names, which models the rows need and whether
their weights are on this machine (`models.local_status`, no network), which masks must be computed
and whether their models are installed. `editflow validate` checks every row in full.
"""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from editflow.engines import DEFAULT_ENGINE, EngineError, engine_target
from editflow.manifest import TASKS, Manifest
from editflow.masks.spec import URI_SCHEMES
from editflow.tasks import AUTO_MASK_KINDS, AUTO_MASKS
SPEC_KINDS = ("box", "polygon", "sam", "face", "garment")  # written kind:...
BARE_KINDS = ("auto", "full", "person")  # written alone


@dataclass
class RunPlan:
    """Rows per task and engine, models needed (and whether here), masks to compute, problems."""

    manifest: str
    rows: int
    tasks: list[dict[str, Any]] = field(default_factory=list)  # task, engine, rows
    models: list[dict[str, Any]] = field(default_factory=list)  # engine, model, rows, available, where, fetch
    masks: list[dict[str, Any]] = field(default_factory=list)  # kind, rows, needs, available
    problems: list[str] = field(default_factory=list)  # rows that would fail, and why

    @property
    def runnable(self) -> bool:
        """No invalid rows and every model and mask model present."""
        return not self.problems and all(m["available"] for m in self.models + self.masks)

    def lines(self) -> list[str]:
        """The plan as printed by `editflow run --dry-run`."""
        out = [f"editflow: dry run of {self.manifest}: {self.rows} rows; nothing is edited or written"]
        out.append("rows by task and engine:")
        out += [f"  {t['task']:<9} {t['engine']:<13} {t['rows']:>8}" for t in self.tasks]
        out.append("models:")
        for m in self.models:
            state = "no weights needed" if m["model"] is None else (
                f"here ({m['where']})" if m["available"] else f"MISSING: {m['detail']}" + (
                    f"; fetch with `{m['fetch']}`" if m["fetch"] else ""))
            out.append(f"  {m['engine']:<13} {m['model'] or '-':<52} {m['rows']:>8} rows  {state}")
        out.append("masks to compute:")
        for k in self.masks:
            needs = f"  needs {k['needs']}: {'installed' if k['available'] else 'MISSING'}" if k["needs"] else ""
            out.append(f"  {k['kind']:<9} {k['rows']:>8} rows{needs}")
        out.append("problems:" + ("" if self.problems else " none"))
        out += [f"  {p}" for p in self.problems]
        out.append("editflow: ready to run" if self.runnable else "editflow: some rows would fail (see above)")
        return out


def _cells(table: pa.Table, name: str, default: str) -> pa.ChunkedArray:
    """A column trimmed, with null and empty cells replaced by `default`."""
    column = pc.utf8_trim_whitespace(table.column(name))
    return pc.fill_null(pc.if_else(pc.equal(column, ""), None, column), default)


def _groups(manifest: Manifest, engine: str, model: str) -> list[dict[str, Any]]:
    """Distinct (task, engine, model, mask head, has colon) with their row counts."""
    table = manifest.table
    mask = _cells(table, "mask", "auto")
    parts = pc.split_pattern(mask, ":", max_splits=1)
    keys = pa.table({
        "task": pc.utf8_lower(_cells(table, "task", "")),
        "engine": _cells(table, "engine", engine),
        "model": _cells(table, "model", model),
        "head": pc.utf8_lower(pc.utf8_trim_whitespace(pc.list_element(parts, 0))),
        "colon": pc.greater(pc.list_value_length(parts), 1),
    })
    counted = keys.group_by(keys.column_names).aggregate([([], "count_all")])
    return counted.to_pylist()


def _mask_kind(head: str, colon: bool, task: str) -> str:
    if colon:
        if head in SPEC_KINDS:
            return head
        if head in URI_SCHEMES or len(head) == 1:  # a URI, or a Windows drive letter
            return "file"
        return "invalid"
    if head in BARE_KINDS:
        return AUTO_MASKS[task].partition(":")[0] if head == "auto" and task in AUTO_MASKS else \
            ("auto?" if head == "auto" else head)
    return "file"


def _model_spec(engine: str, model: str) -> str | None:
    """The model a group of rows needs: theirs, else the engine's default; None for weight-free engines."""
    from editflow.engines import get_engine_class

    try:
        cls = get_engine_class(engine)
    except EngineError:
        return model or None
    if not cls.models:
        return None
    return model or cls.default_model()


def _mask_model(kind: str, sam_checkpoint: str | None, sam_model_type: str) -> tuple[str | None, bool]:
    if kind == "sam":
        from editflow.masks.sam import SamCheckpointError, resolve_checkpoint

        try:
            return f"a segment-anything checkpoint ({resolve_checkpoint(sam_checkpoint, sam_model_type)})", True
        except SamCheckpointError:
            return "a segment-anything checkpoint (--sam-checkpoint)", False
    if kind in AUTO_MASK_KINDS:
        return "MediaPipe (editflow[masks])", importlib.util.find_spec("mediapipe") is not None
    return None, True


def make_plan(manifest: Manifest, engine: str | None = None, model: str | None = None,
              sam_checkpoint: str | None = None, sam_model_type: str = "vit_b") -> RunPlan:
    """The plan for `manifest` with the run's default `engine` / `model` for rows that name none."""
    from editflow.models import fetch_command, local_status

    plan = RunPlan(manifest=manifest.path, rows=len(manifest))
    tasks: dict[tuple[str, str], int] = defaultdict(int)
    models: dict[tuple[str, str | None], int] = defaultdict(int)
    masks: dict[str, int] = defaultdict(int)
    problems: dict[str, int] = defaultdict(int)
    for group in _groups(manifest, engine or DEFAULT_ENGINE, model or ""):
        task, name, rows = group["task"], group["engine"], group["count_all"]
        tasks[(task or "?", name)] += rows
        if task not in TASKS:
            problems[f"unknown task {task!r} (expected one of {', '.join(TASKS)})"] += rows
            continue
        try:
            engine_target(name, task)
        except EngineError as exc:
            problems[str(exc)] += rows
            continue
        spec = _model_spec(name, group["model"])
        models[(name, spec)] += rows
        kind = _mask_kind(group["head"], group["colon"], task)
        if kind == "invalid":
            problems[f"mask spec {group['head']}:... is not a known kind"] += rows
        elif kind == "auto?":
            problems[f"task {task} has no automatic mask: give box:, polygon:, sam:, face:, a file..."] += rows
        else:
            masks[kind] += rows
    plan.tasks = [{"task": t, "engine": e, "rows": n} for (t, e), n in sorted(tasks.items())]
    for (name, spec), rows in sorted(models.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        entry = {"engine": name, "model": spec, "rows": rows, "available": True, "where": "", "fetch": "", "detail": ""}
        if spec is not None:
            status = local_status(spec)
            hub = status.source is not None and status.source.kind == "hub"
            entry.update(available=status.available, where=status.where, detail=status.detail or "not found",
                         fetch=fetch_command(status.source) if hub and not status.available else "")
        plan.models.append(entry)
    for kind, rows in sorted(masks.items()):
        needs, available = _mask_model(kind, sam_checkpoint, sam_model_type)
        plan.masks.append({"kind": kind, "rows": rows, "needs": needs, "available": available})
    plan.problems = [f"{rows} row(s): {why}" for why, rows in sorted(problems.items())]
    return plan
