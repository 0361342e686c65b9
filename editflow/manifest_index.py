"""The whole-manifest checks without the whole manifest: column names and the id column only.

A streaming run (Ray reads the rows on its workers) still refuses a manifest with a missing
required column, an empty id or a duplicate id before any work starts. Only the ids are held,
as one Arrow string array, so the driver's memory grows with the ids, never with the rows.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from editflow import storage
from editflow.manifest import (
    COLUMNS, ManifestError, _cell_to_str, check_ids, check_required_columns, jsonl_objects, raw_column,
)

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl"}


@dataclass
class ManifestIndex:
    """Where a manifest is, its format and columns, and its ids (checked: non-empty, unique)."""

    path: str  # an absolute local path or a URI
    base_dir: str
    format: str  # parquet | csv | jsonl
    ids: pa.ChunkedArray
    columns: list[str] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)
    engines: set[str | None] = field(default_factory=set)  # distinct `engine` cells (placement needs them)

    def __len__(self) -> int:
        return len(self.ids)


def index_manifest(path: str | os.PathLike) -> ManifestIndex:
    """Read a manifest's column names and id column, and check the manifest-level rules."""
    text = os.fspath(path)
    suffix = posixpath.splitext(urlsplit(text).path if "://" in text else text)[1].lower()
    if suffix not in FORMATS:
        raise ManifestError(f"unknown manifest format {suffix!r} for {text}: use .parquet, .csv or .jsonl")
    fmt = FORMATS[suffix]
    try:
        fs, inner = storage.resolve(text)
        info = fs.get_file_info(inner)
    except (OSError, ValueError) as exc:  # StorageError is an OSError; ArrowInvalid a ValueError
        raise ManifestError(f"cannot open manifest {text}: {exc}") from exc
    if info.type == pafs.FileType.NotFound:
        raise ManifestError(f"manifest not found: {text}")
    if info.type == pafs.FileType.Directory:
        raise ManifestError(f"manifest is a directory, expected a .parquet, .csv or .jsonl file: {text}")
    try:
        columns, ids, engines = _READERS[fmt](fs, inner)
    except ManifestError:
        raise
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise ManifestError(f"cannot read manifest {text}: {exc}") from exc
    check_required_columns(columns, text)
    ids = pa.chunked_array([raw_column(chunk) for chunk in ids.chunks], pa.string()) if ids.num_chunks else \
        pa.chunked_array([], pa.string())
    check_ids(ids, text)
    return ManifestIndex(path=storage.absolute(text), base_dir=storage.parent(text), format=fmt, ids=ids,
                         columns=columns, engines=engines,
                         extra_columns=[c for c in columns if c not in COLUMNS])


def _parquet_ids(fs: pafs.FileSystem, inner: str) -> tuple[list[str], pa.ChunkedArray, set]:
    with fs.open_input_file(inner) as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        if "id" not in names:
            return names, pa.chunked_array([], pa.string()), set()
        table = parquet.read(columns=[c for c in ("id", "engine") if c in names])
        return names, table.column("id"), _distinct(table, "engine")


def _csv_ids(fs: pafs.FileSystem, inner: str) -> tuple[list[str], pa.ChunkedArray, set]:
    with fs.open_input_stream(inner) as f:
        first = f.read(1 << 16).decode("utf-8", errors="replace").splitlines()
    header = next(csv.reader(io.StringIO(first[0] if first else "")), None)
    if not header:
        raise ManifestError(f"manifest {inner} is empty (no header line)")
    if "id" not in header:
        return header, pa.chunked_array([], pa.string()), set()
    wanted = [c for c in ("id", "engine") if c in header]
    with fs.open_input_stream(inner) as f:
        table = pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(
            include_columns=wanted, column_types={c: pa.string() for c in wanted}, strings_can_be_null=True,
            null_values=[""]))
    return header, table.column("id"), _distinct(table, "engine")


def _jsonl_ids(fs: pafs.FileSystem, inner: str) -> tuple[list[str], pa.ChunkedArray, set]:
    names: dict[str, None] = {}
    engines: set[str | None] = set()
    chunks: list[pa.Array] = []
    ids: list[str | None] = []
    with fs.open_input_stream(inner) as raw:
        for value in jsonl_objects(raw, inner):
            if len(value) != len(names) or not names.keys() >= value.keys():
                names.update(dict.fromkeys(value))
            ids.append(_cell_to_str(value.get("id")))
            engines.add(_cell_to_str(value.get("engine")) or None)
            if len(ids) >= 65536:  # bounded Python list; the ids live in Arrow
                chunks.append(pa.array(ids, pa.string()))
                ids = []
    chunks.append(pa.array(ids, pa.string()))
    return list(names), pa.chunked_array(chunks, pa.string()), engines


def _distinct(table: pa.Table, name: str) -> set:
    if name not in table.column_names:
        return {None}
    return set(pc.unique(raw_column(table.column(name))).to_pylist())


_READERS = {"parquet": _parquet_ids, "csv": _csv_ids, "jsonl": _jsonl_ids}
