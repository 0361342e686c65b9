"""Manifests: one row = one edit. Parquet, CSV or JSONL in; validated rows out.

Manifest-level problems (unreadable file, missing required column, duplicate or empty ids) raise
`ManifestError` before any work starts. Row-level problems (unknown task, bad numbers, malformed
mask spec) are reported per row by `parse_row` so the run turns them into error result rows.

Every manifest column travels as a string (`RAW_SCHEMA`) until `parse_row` types it, so a
wrongly typed cell fails its own row instead of the whole file.
"""

from __future__ import annotations

import csv
import io
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Iterator
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from editflow import storage
from editflow.masks.spec import MaskSpec, MaskSpecError, parse_mask_spec
from editflow.errors import EditflowError
from editflow.tasks import CATEGORIES, TASKS
REQUIRED_COLUMNS = ("id", "task", "image")
#: every manifest column, in order; all are carried as strings until `parse_row`.
COLUMNS = (
    "id", "task", "image", "mask", "prompt", "negative_prompt", "reference", "category", "seed",
    "steps", "strength", "guidance_scale", "jump_length", "jump_n_sample", "engine", "model",
    "mask_grow", "mask_feather", "params",
)
RAW_SCHEMA = pa.schema([pa.field(name, pa.string()) for name in COLUMNS])
MAX_SEED = 2**63 - 1


class ManifestError(EditflowError):
    """The manifest as a whole cannot be used; nothing has run."""


class RowError(EditflowError, ValueError):
    """One row is invalid; it becomes an error result row."""


@dataclass
class EditRow:
    """A validated manifest row with typed values (paths not yet resolved or opened)."""

    id: str
    task: str
    image: str
    mask: MaskSpec
    seed: int
    prompt: str | None = None
    negative_prompt: str | None = None
    reference: str | None = None
    category: str | None = None
    steps: int | None = None
    strength: float | None = None
    guidance_scale: float | None = None
    jump_length: int | None = None
    jump_n_sample: int | None = None
    engine: str | None = None
    model: str | None = None
    mask_grow: int = 0
    mask_feather: int = 0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    """Raw rows (all strings) plus where relative paths resolve from."""

    table: pa.Table  # RAW_SCHEMA
    base_dir: str
    path: str
    extra_columns: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.table.num_rows

    def rows(self) -> list[dict[str, str | None]]:
        return self.table.to_pylist()


def read_table_file(path: str | os.PathLike, what: str = "manifest") -> pa.Table:
    """Read a Parquet, CSV or JSONL table (CSV and JSONL cells as strings) from any storage location."""
    location = os.fspath(path)
    try:
        if not storage.exists(location):
            raise ManifestError(f"{what} not found: {location}")
        if storage.is_dir(location):
            raise ManifestError(f"{what} is a directory, expected a .parquet, .csv or .jsonl file: {location}")
    except storage.StorageError as exc:
        raise ManifestError(f"cannot read {what} {location}: {exc}") from None
    suffix = PurePosixPath(urlsplit(location).path if "://" in location else location).suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            filesystem, inner = storage.resolve(location)
            return pq.read_table(inner, filesystem=filesystem)
        if suffix == ".csv":
            return _read_csv(location)
        if suffix in (".jsonl", ".ndjson", ".json"):
            return _read_jsonl(location)
    except ManifestError:
        raise
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise ManifestError(f"cannot read {what} {location}: {exc}") from exc
    raise ManifestError(f"unknown {what} format {suffix!r} for {location}: use .parquet, .csv or .jsonl")


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a Parquet, CSV or JSONL manifest (local path or URI) and check its manifest-level rules.

    Relative paths in its rows resolve against its own folder (`base_dir`), also under a URI."""
    p = os.fspath(path)
    table = read_table_file(p)

    check_required_columns(table.column_names, p)
    extra = [c for c in table.column_names if c not in COLUMNS]
    raw = _to_raw(table)
    _check_ids(raw, p)
    return Manifest(table=raw, base_dir=storage.parent(p), path=storage.absolute(p), extra_columns=extra)


def _read_csv(location: str) -> pa.Table:
    with storage.open_input(location) as stream, io.TextIOWrapper(stream, encoding="utf-8", newline="") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        raise ManifestError(f"manifest {location} is empty (no header line)")
    options = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in header}, strings_can_be_null=True, null_values=[""]
    )
    with storage.open_input(location) as stream:
        return pacsv.read_csv(stream, convert_options=options)


def _read_jsonl(location: str) -> pa.Table:
    table = _read_jsonl_strings(location)
    return table if table is not None else _read_jsonl_cells(location)


def _read_jsonl_strings(location: str) -> pa.Table | None:
    """Arrow's JSON reader, when every cell of the file is a string or null (a catalog's manifest):
    C++ speed and no Python object per row. None for anything else (numbers, objects, a bad line),
    which the cell-by-cell reader handles with its own conversions and messages."""
    import pyarrow.json as pajson

    try:
        with storage.open_input(location) as stream:
            table = pajson.read_json(stream)
    except (pa.ArrowInvalid, OSError, ValueError):
        return None
    if not all(pa.types.is_string(t) or pa.types.is_null(t) for t in table.schema.types):
        return None
    return table.cast(pa.schema([pa.field(name, pa.string()) for name in table.column_names]))


def jsonl_objects(stream: Any, location: str) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL byte stream, one per non-blank line; anything else is a ManifestError."""
    for number, line in enumerate(io.TextIOWrapper(stream, encoding="utf-8"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"manifest {location} line {number} is not valid JSON: {exc.msg}") from exc
        if not isinstance(value, dict):
            raise ManifestError(f"manifest {location} line {number} is not a JSON object")
        yield value


def _read_jsonl_cells(location: str) -> pa.Table:
    with storage.open_input(location) as stream:
        rows = list(jsonl_objects(stream, location))
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    columns = {n: [_cell_to_str(r.get(n)) for r in rows] for n in names}
    return pa.table({n: pa.array(v, pa.string()) for n, v in columns.items()})


def _cell_to_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _to_raw(table: pa.Table) -> pa.Table:
    """Cast known columns to string (nulls and empty strings -> null); add missing ones as null."""
    arrays = []
    for name in COLUMNS:
        if name in table.column_names:
            arrays.append(raw_column(table.column(name)))
        else:
            arrays.append(pa.nulls(table.num_rows, pa.string()))
    return pa.Table.from_arrays(arrays, schema=RAW_SCHEMA)


def raw_column(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """One manifest column as strings (empty strings -> null), whatever type its file gave it."""
    if not pa.types.is_string(column.type):
        if pa.types.is_floating(column.type):
            # whole floats would print as "30.0"; keep them readable and integral
            column = pa.array([_cell_to_str(_tidy_number(v)) for v in column.to_pylist()], pa.string())
        else:
            try:
                column = pc.cast(column, pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                column = pa.array([_cell_to_str(v) for v in column.to_pylist()], pa.string())
    return pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)


def _tidy_number(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _check_ids(table: pa.Table, p: str) -> None:
    check_ids(table.column("id"), p)


def check_required_columns(names: list[str], p: str) -> None:
    """Stop when the manifest lacks a required column."""
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ManifestError(
            f"manifest {p} is missing required column(s) {', '.join(missing)}; "
            f"it has: {', '.join(names) or '(none)'}"
        )


def check_ids(ids: pa.Array | pa.ChunkedArray, p: str) -> None:
    """Stop on empty or duplicate ids; vectorised (a hash count), linear in rows."""
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(ids), ""), True)
    empty_count = pc.sum(empty).as_py() or 0
    if empty_count:
        first = pc.index(empty, True).as_py()
        raise ManifestError(f"manifest {p}: {empty_count} row(s) have an empty id (first at row {first + 1})")
    counts = pc.value_counts(ids)  # in order of first appearance
    duplicates = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(duplicates):
        shown = ", ".join(repr(d) for d in duplicates[:5].to_pylist())
        raise ManifestError(f"manifest {p}: duplicate id(s) {shown}" + (" ..." if len(duplicates) > 5 else ""))


def seed_for_id(row_id: str) -> int:
    """The default seed of a row: the first 8 bytes of sha256(id), as a non-negative int64."""
    return int.from_bytes(hashlib.sha256(row_id.encode("utf-8")).digest()[:8], "big") & MAX_SEED


def parse_row(raw: dict[str, Any]) -> EditRow:
    """Type and check one raw manifest row; raise `RowError` with a readable reason."""
    row_id = raw.get("id")
    if not row_id:
        raise RowError("row has no id")
    task = (raw.get("task") or "").strip().lower()
    if task not in TASKS:
        raise RowError(f"unknown task {raw.get('task')!r}; expected one of {', '.join(TASKS)}")
    image = raw.get("image")
    if not image:
        raise RowError("row has no image")
    try:
        mask = parse_mask_spec(raw.get("mask"))
    except MaskSpecError as exc:
        raise RowError(f"mask: {exc}") from None

    steps = _int(raw, "steps", minimum=1)
    strength = _float(raw, "strength")
    if strength is not None and not 0.0 < strength <= 1.0:
        raise RowError(f"strength must be in (0, 1], got {strength}")
    guidance = _float(raw, "guidance_scale")
    if guidance is not None and guidance < 0:
        raise RowError(f"guidance_scale must be >= 0, got {guidance}")
    seed = _int(raw, "seed", minimum=0)
    if seed is not None and seed > MAX_SEED:
        raise RowError(f"seed must fit in int64, got {seed}")
    category = raw.get("category")
    if category is not None:
        category = category.strip().lower()
        if category not in CATEGORIES:
            raise RowError(f"unknown category {raw.get('category')!r}; expected one of {', '.join(CATEGORIES)}")
    if task in ("tryon", "makeup") and not raw.get("reference"):
        raise RowError(f"task {task} needs a reference image (column 'reference')")
    if task == "tryon" and category is None:
        raise RowError("task tryon needs a category (upper, lower or dress)")
    params_text = raw.get("params")
    params: dict[str, Any] = {}
    if params_text:
        try:
            params = json.loads(params_text)
        except json.JSONDecodeError as exc:
            raise RowError(f"params is not valid JSON: {exc.msg}") from None
        if not isinstance(params, dict):
            raise RowError("params must be a JSON object")

    return EditRow(
        id=str(row_id),
        task=task,
        image=image,
        mask=mask,
        seed=seed_for_id(str(row_id)) if seed is None else seed,
        prompt=raw.get("prompt"),
        negative_prompt=raw.get("negative_prompt"),
        reference=raw.get("reference"),
        category=category,
        steps=steps,
        strength=strength,
        guidance_scale=guidance,
        jump_length=_int(raw, "jump_length", minimum=1),
        jump_n_sample=_int(raw, "jump_n_sample", minimum=1),
        engine=(raw.get("engine") or None),
        model=(raw.get("model") or None),
        mask_grow=_int(raw, "mask_grow") or 0,
        mask_feather=_int(raw, "mask_feather", minimum=0) or 0,
        params=params,
    )


def _number(raw: dict[str, Any], name: str) -> float | None:
    value = raw.get(name)
    if value is None:
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        raise RowError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise RowError(f"{name} must be finite, got {value!r}")
    return number


def _float(raw: dict[str, Any], name: str) -> float | None:
    return _number(raw, name)


def _int(raw: dict[str, Any], name: str, minimum: int | None = None) -> int | None:
    number = _number(raw, name)
    if number is None:
        return None
    if not number.is_integer():
        raise RowError(f"{name} must be an integer, got {raw.get(name)!r}")
    value = int(str(raw.get(name)).strip()) if str(raw.get(name)).strip().lstrip("-").isdigit() else int(number)
    if minimum is not None and value < minimum:
        raise RowError(f"{name} must be >= {minimum}, got {value}")
    return value
