"""Result rows: the schema, Parquet files under OUT/results/, resume and the run summary.

Every manifest row ends as exactly one result row, ok or not. Result files are written whole
(temp + rename locally; Ray's sink is not atomic), so readers check each file's footer and set
aside files that do not read.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

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
        ("attempt", pa.int32()),
    ]
)
RESULT_COLUMNS = tuple(RESULT_SCHEMA.names)
STATUSES = ("ok", "error", "skipped")
UNREADABLE_DIR = "_unreadable"


def results_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "results"


def to_result_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Project rows onto the result schema (extra keys dropped, missing ones null)."""
    return pa.Table.from_pylist([{k: r.get(k) for k in RESULT_COLUMNS} for r in rows], schema=RESULT_SCHEMA)


def write_result_file(out_dir: str | os.PathLike, rows: list[dict[str, Any]], run_id: str) -> Path | None:
    """Write rows as one new Parquet file in OUT/results/, atomically; None when there are no rows."""
    if not rows:
        return None
    directory = results_dir(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"part-{run_id}-{uuid.uuid4().hex[:12]}.parquet"
    tmp = directory / f".{path.name}.tmp"
    try:
        pq.write_table(to_result_table(rows), tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


@dataclass
class ResultScan:
    """What OUT/results holds: sound files, unreadable ones, and their rows (latest per id)."""

    files: list[Path]
    unreadable: list[Path]
    table: pa.Table  # one row per id: the one that finished last

    def ok_ids(self) -> set[str]:
        ids = self.table.column("id").to_pylist()
        statuses = self.table.column("status").to_pylist()
        return {i for i, s in zip(ids, statuses) if s == "ok"}


def scan_results(out_dir: str | os.PathLike) -> ResultScan:
    """Read every result file whose footer is sound; keep each id's last-finished row."""
    directory = results_dir(out_dir)
    files: list[Path] = []
    unreadable: list[Path] = []
    tables: list[pa.Table] = []
    if directory.is_dir():
        for path in sorted(directory.glob("*.parquet")):
            try:
                pq.ParquetFile(path).metadata  # footer check: truncated files fail here
                table = pq.read_table(path)
            except Exception:
                unreadable.append(path)
                continue
            files.append(path)
            tables.append(_conform(table))
    table = pa.concat_tables(tables) if tables else RESULT_SCHEMA.empty_table()
    return ResultScan(files=files, unreadable=unreadable, table=_latest_per_id(table))


def _conform(table: pa.Table) -> pa.Table:
    columns = []
    for f in RESULT_SCHEMA:
        if f.name in table.column_names:
            columns.append(table.column(f.name).cast(f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=RESULT_SCHEMA)


def _latest_per_id(table: pa.Table) -> pa.Table:
    if table.num_rows == 0:
        return table
    rows = table.to_pylist()
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        current = best.get(row["id"])
        # ok beats error for the same id; otherwise the later finish wins
        key = (row["status"] == "ok", row["finished_at"] or 0)
        if current is None or key >= (current["status"] == "ok", current["finished_at"] or 0):
            best[row["id"]] = row
    return to_result_table(best.values())


def prepare_resume(out_dir: str | os.PathLike, run_id: str) -> set[str]:
    """Consolidate OUT/results to the ok rows only and return their ids.

    Rows that failed before are re-run, so their old rows are dropped; files that do not read are
    moved to results/_unreadable/. The consolidated file is written before old files are removed,
    so a crash here loses nothing (the next scan dedupes).
    """
    scan = scan_results(out_dir)
    directory = results_dir(out_dir)
    if scan.unreadable:
        (directory / UNREADABLE_DIR).mkdir(parents=True, exist_ok=True)
        for path in scan.unreadable:
            os.replace(path, directory / UNREADABLE_DIR / path.name)
    ok_ids = scan.ok_ids()
    if scan.files:
        ok_rows = [r for r in scan.table.to_pylist() if r["status"] == "ok"]
        kept = write_result_file(out_dir, ok_rows, f"{run_id}-resume")
        for path in scan.files:
            if path != kept:
                path.unlink()
    return ok_ids


def summarize(out_dir: str | os.PathLike, manifest_ids: list[str], run_info: dict[str, Any]) -> dict[str, Any]:
    """Build OUT/summary.json from the results on disk, reconciled against the manifest's ids."""
    scan = scan_results(out_dir)
    rows = [r for r in scan.table.to_pylist() if r["id"] in set(manifest_ids)]
    by_id = {r["id"]: r for r in rows}
    missing = [i for i in manifest_ids if i not in by_id]
    statuses = Counter(r["status"] for r in rows)
    error_types = Counter(r["error_type"] for r in rows if r["status"] == "error")
    error_stages = Counter(r["error_stage"] for r in rows if r["status"] == "error")
    error_examples: dict[str, str] = {}
    for r in rows:  # the first message of each type reaches the terminal (e.g. how to fetch a model)
        if r["status"] == "error":
            error_examples.setdefault(r["error_type"], f"{r['id']}: {r['error_message']}")
    timings = {}
    for name in ("t_load_s", "t_mask_s", "t_edit_s", "t_write_s"):
        values = [r[name] for r in rows if r[name] is not None]
        timings[name] = {"total": round(sum(values), 4), "mean": round(sum(values) / len(values), 4) if values else None}
    summary = {
        **run_info,
        "rows": len(manifest_ids),
        "status": {s: statuses.get(s, 0) for s in STATUSES},
        "missing": len(missing),
        "missing_ids": missing[:100],
        "error_types": dict(error_types),
        "error_stages": dict(error_stages),
        "error_examples": error_examples,
        "timings": timings,
        "result_files": len(scan.files),
        "unreadable_result_files": [str(p) for p in scan.unreadable],
    }
    summary["exit_code"] = 0 if summary["status"]["error"] == 0 and not missing else 2
    path = Path(out_dir) / "summary.json"
    tmp = path.with_name(".summary.json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return summary
