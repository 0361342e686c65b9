"""Result rows: the schema, Parquet files under OUT/results/, resume and the run summary.

Every manifest row ends as exactly one result row, ok or not. OUT may be any storage location
(editflow.storage). Result files are written whole (temp + rename locally, one PUT on object stores;
Ray's sink is not atomic), so readers check each file's footer and set aside files that do not read.

The bookkeeping (scan, dedupe, resume, summary) runs in pyarrow compute over narrow columns: linear in
rows, no per-row Python, memory bounded by a few columns of the result rows.
"""

from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from editflow import storage

RESULT_SCHEMA = pa.schema(
    [
        ("id", pa.string()), ("task", pa.string()), ("status", pa.string()),
        ("error_stage", pa.string()), ("error_type", pa.string()), ("error_message", pa.string()),
        ("image", pa.string()), ("reference", pa.string()), ("output", pa.string()),
        ("mask_output", pa.string()), ("mask_spec", pa.string()), ("mask_area", pa.float64()),
        ("prompt", pa.string()), ("negative_prompt", pa.string()), ("category", pa.string()),
        ("engine", pa.string()), ("model", pa.string()), ("model_revision", pa.string()),
        ("adapter", pa.string()),
        ("scheduler", pa.string()), ("steps", pa.int32()), ("strength", pa.float64()),
        ("guidance_scale", pa.float64()), ("jump_length", pa.int32()), ("jump_n_sample", pa.int32()),
        ("nfe", pa.int32()), ("seed", pa.int64()), ("width", pa.int32()), ("height", pa.int32()),
        ("proc_width", pa.int32()), ("proc_height", pa.int32()), ("unmasked_max_diff", pa.int32()),
        ("input_sha256", pa.string()), ("reference_sha256", pa.string()), ("output_sha256", pa.string()),
        ("mask_cached", pa.bool_()), ("reference_cached", pa.bool_()),
        ("t_load_s", pa.float64()), ("t_mask_s", pa.float64()), ("t_edit_s", pa.float64()),
        ("t_write_s", pa.float64()), ("device", pa.string()), ("worker", pa.string()),
        ("editflow_version", pa.string()), ("torch_version", pa.string()),
        ("diffusers_version", pa.string()), ("run_id", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")), ("finished_at", pa.timestamp("us", tz="UTC")),
        ("attempt", pa.int32()), ("nsfw", pa.bool_()),
    ]
)
RESULT_COLUMNS = tuple(RESULT_SCHEMA.names)
STATUSES = ("ok", "error", "skipped")
UNREADABLE_DIR = "_unreadable"


#: what the scan reads by default: enough to pick each id's winning row
KEY_COLUMNS = ("id", "status", "finished_at")
SUMMARY_COLUMNS = (*KEY_COLUMNS, "error_type", "error_stage", "error_message",
                   "t_load_s", "t_mask_s", "t_edit_s", "t_write_s")
TIMING_COLUMNS = ("t_load_s", "t_mask_s", "t_edit_s", "t_write_s")
_FILE, _ROW = "_file", "_row"  # where a scanned row came from: file index, row index in that file
_READ_THREADS = 8  # result files are read concurrently (object stores: latency-bound GETs)


def results_dir(out_dir: str | os.PathLike) -> str:
    """OUT/results as a location (local path or URI)."""
    return storage.join(os.fspath(out_dir), "results")


def to_result_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Project rows onto the result schema (extra keys dropped, missing ones null)."""
    return pa.Table.from_pylist([{k: r.get(k) for k in RESULT_COLUMNS} for r in rows], schema=RESULT_SCHEMA)


def write_result_file(out_dir: str | os.PathLike, rows: list[dict[str, Any]], run_id: str) -> str | None:
    """Write rows as one new Parquet file in OUT/results/, atomically; None when there are no rows."""
    if not rows:
        return None
    return write_result_table(out_dir, to_result_table(rows), run_id)


def write_result_table(out_dir: str | os.PathLike, table: pa.Table, run_id: str) -> str:
    """Write a RESULT_SCHEMA table as one new Parquet file in OUT/results/ (whole or not at all)."""
    directory = results_dir(out_dir)
    storage.makedirs(directory)
    location = storage.join(directory, f"part-{run_id}-{uuid.uuid4().hex[:12]}.parquet")
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes(location, sink.getvalue().to_pybytes())
    return location


@dataclass
class ResultScan:
    """What OUT/results holds: sound files, unreadable ones, and each id's winning row.

    `table` has the scanned columns plus `_file` (index into `files`) and `_row` (row in that file),
    one row per id.
    """

    files: list[str]
    unreadable: list[str]
    table: pa.Table
    file_rows: list[int] = field(default_factory=list)  # rows in each sound file

    def ok_id_array(self) -> pa.Array:
        """The ids whose winning row is ok (string array)."""
        return pc.filter(self.table.column("id"), _is_ok(self.table)).combine_chunks()

    def ok_ids(self) -> set[str]:
        """The ok ids as a Python set (small outputs and tests; use ok_id_array at scale)."""
        return set(self.ok_id_array().to_pylist())


def scan_results(out_dir: str | os.PathLike, columns: Sequence[str] = KEY_COLUMNS) -> ResultScan:
    """Read `columns` of every result file whose footer is sound; keep each id's winning row.

    The winner: an ok row beats an error row; otherwise the later `finished_at` (null = earliest),
    then the later file. Files that fail to read (torn writes) are listed in `unreadable`.
    """
    wanted = list(dict.fromkeys(["id", "status", "finished_at", *columns]))
    files = storage.list_files(results_dir(out_dir), ".parquet")

    def read(location: str) -> pa.Table | None:
        try:
            with storage.open_input_file(location) as f:
                parquet = pq.ParquetFile(f)  # footer check: truncated files fail here
                present = [c for c in wanted if c in parquet.schema_arrow.names]
                return _conform(parquet.read(columns=present), wanted)
        except Exception:
            return None

    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        tables = list(pool.map(read, files))
    sound = [(loc, t) for loc, t in zip(files, tables) if t is not None]
    unreadable = [loc for loc, t in zip(files, tables) if t is None]
    parts = [t.append_column(_FILE, pa.array(np.full(t.num_rows, i, np.int32)))
              .append_column(_ROW, pa.array(np.arange(t.num_rows, dtype=np.int64)))
             for i, (_, t) in enumerate(sound)]
    schema = pa.schema([RESULT_SCHEMA.field(c) for c in wanted] + [(_FILE, pa.int32()), (_ROW, pa.int64())])
    table = pa.concat_tables(parts) if parts else schema.empty_table()
    return ResultScan(files=[loc for loc, _ in sound], unreadable=unreadable, table=_latest_per_id(table),
                      file_rows=[t.num_rows for _, t in sound])


def _conform(table: pa.Table, names: Sequence[str]) -> pa.Table:
    """`names` columns in result-schema types; columns a file lacks come back null."""
    columns = []
    for name in names:
        f = RESULT_SCHEMA.field(name)
        if name in table.column_names:
            columns.append(table.column(name).cast(f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=pa.schema([RESULT_SCHEMA.field(n) for n in names]))


def _is_ok(table: pa.Table) -> pa.ChunkedArray:
    return pc.fill_null(pc.equal(table.column("status"), "ok"), False)


def _latest_per_id(table: pa.Table) -> pa.Table:
    """One row per id: ok first, then the latest finish, then the later file and row.

    Ids seen once (the usual case) are kept by a hash pass; only rows of ids seen more than once
    are sorted to pick their winner.
    """
    if table.num_rows == 0:
        return table
    ids = table.column("id")
    counts = pc.value_counts(ids)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(repeated) == 0:
        return table
    is_repeated = pc.is_in(ids, value_set=repeated)
    contested = table.filter(is_repeated)
    ranked = contested.append_column("_ok", _is_ok(contested)).sort_by(
        [("id", "ascending"), ("_ok", "descending"), ("finished_at", "descending"),
         (_FILE, "descending"), (_ROW, "descending")])  # nulls sort last (pyarrow default): earliest
    ranked_ids = ranked.column("id").combine_chunks()
    first = np.ones(len(ranked_ids), dtype=bool)
    first[1:] = pc.not_equal(ranked_ids[1:], ranked_ids[:-1]).fill_null(True).to_numpy(zero_copy_only=False)
    winners = ranked.filter(pa.array(first)).drop_columns(["_ok"])
    return pa.concat_tables([table.filter(pc.invert(is_repeated)), winners])


def prepare_resume(out_dir: str | os.PathLike, run_id: str) -> pa.Array:
    """Leave OUT/results holding each ok id exactly once and nothing else; return those ids.

    Rows that failed before are re-run, so their old rows go; so do the losing copies of an id that
    was written twice (a retried block, a run killed mid-write). Only files holding such rows are
    rewritten: each survivor file is written before its original is deleted, so a crash here loses
    nothing (the next scan dedupes again). Files that do not read move to results/_unreadable/.
    """
    scan = scan_results(out_dir)
    directory = results_dir(out_dir)
    for location in scan.unreadable:
        storage.makedirs(storage.join(directory, UNREADABLE_DIR))
        storage.move(location, storage.join(directory, UNREADABLE_DIR, location.rsplit("/", 1)[-1]))
    keep = scan.table.filter(_is_ok(scan.table)).sort_by([(_FILE, "ascending"), (_ROW, "ascending")])
    file_of = keep.column(_FILE).to_numpy()
    rows_of = keep.column(_ROW).to_numpy()
    bounds = np.searchsorted(file_of, np.arange(len(scan.files) + 1))
    # files whose every row is a winning ok row stay as they are; the others are rewritten
    plan = [(location, rows_of[bounds[i]:bounds[i + 1]]) for i, location in enumerate(scan.files)
            if bounds[i + 1] - bounds[i] != scan.file_rows[i]]

    def rewrite(item: tuple[str, np.ndarray]) -> None:
        location, kept = item
        if len(kept):
            with storage.open_input_file(location) as f:
                whole = _conform(pq.ParquetFile(f).read(), RESULT_COLUMNS)
            write_result_table(out_dir, whole.take(pa.array(kept)), f"{run_id}-resume")

    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        list(pool.map(rewrite, plan))  # every survivor is written (and synced) before any original goes
        list(pool.map(lambda item: storage.delete(item[0]), plan))
    return keep.column("id").combine_chunks() if keep.num_rows else pa.array([], pa.string())


def summarize(out_dir: str | os.PathLike, manifest_ids: Sequence[str] | pa.Array | pa.ChunkedArray,
              run_info: dict[str, Any]) -> dict[str, Any]:
    """Build OUT/summary.json from the results in OUT, reconciled against the manifest's ids."""
    ids = manifest_ids if isinstance(manifest_ids, (pa.Array, pa.ChunkedArray)) else pa.array(manifest_ids, pa.string())
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    scan = scan_results(out_dir, SUMMARY_COLUMNS)
    rows = scan.table.filter(pc.is_in(scan.table.column("id"), value_set=ids))
    # ids are unique on both sides, so the count needs no second pass; the ids only when some miss
    missing_count = len(ids) - rows.num_rows
    missing = ids.filter(pc.invert(pc.is_in(ids, value_set=rows.column("id").combine_chunks()))) \
        if missing_count else pa.array([], pa.string())
    statuses = _counts(rows, "status")
    errors = rows.filter(pc.equal(rows.column("status"), "error"))
    message = pc.fill_null(pc.cast(errors.column("error_message"), pa.string()), "None")
    examples = errors.append_column("_example", pc.binary_join_element_wise(errors.column("id"), message, ": "))
    # the first message of each type reaches the terminal (e.g. how to fetch a model)
    first = examples.group_by("error_type", use_threads=False).aggregate([("_example", "first")])
    timings = {}
    for name in TIMING_COLUMNS:
        column = rows.column(name)
        total = pc.sum(column).as_py()
        mean = pc.mean(column).as_py()
        timings[name] = {"total": round(total or 0.0, 4), "mean": round(mean, 4) if mean is not None else None}
    summary = {
        **run_info,
        "rows": len(ids),
        "status": {s: statuses.get(s, 0) for s in STATUSES},
        "missing": missing_count,
        "missing_ids": missing.slice(0, 100).to_pylist(),
        "error_types": _counts(errors, "error_type"),
        "error_stages": _counts(errors, "error_stage"),
        "error_examples": dict(zip(first.column("error_type").to_pylist(), first.column("_example_first").to_pylist())),
        "timings": timings,
        "result_files": len(scan.files),
        "unreadable_result_files": list(scan.unreadable),
    }
    summary["exit_code"] = 0 if summary["status"]["error"] == 0 and not missing_count else 2
    storage.write_bytes(storage.join(os.fspath(out_dir), "summary.json"),
                        (json.dumps(summary, indent=2, default=str) + "\n").encode())
    return summary


def _counts(table: pa.Table, column: str) -> dict[Any, int]:
    """{value: rows} of one column, in first-seen order (a handful of distinct values)."""
    if table.num_rows == 0:
        return {}
    counted = table.select([column]).group_by(column, use_threads=False).aggregate([([], "count_all")])
    return dict(zip(counted.column(column).to_pylist(), counted.column("count_all").to_pylist()))
