"""Catalog try-on manifests: every compatible person x garment pair as one manifest row.

Persons and garments are Parquet/CSV/JSONL tables with `id` and `image` (paths relative to their
own file); garments also carry a category (upper, lower, dress). A person may limit what it
accepts with an optional `categories` column ("upper,dress"); pairs that do not fit, and garments
without a valid category, are left out and counted. Rows are ordered person by person so a
worker sees one person's pairs together and masks each person once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from editflow.manifest import ManifestError, raw_column, read_table_file
from editflow.tasks import CATEGORIES

PAIR_SEPARATOR = "+"
#: pairs built and written per step: bounded memory whatever the catalog's size
PAIRS_PER_STEP = 262_144
MANIFEST_COLUMNS = ("id", "task", "image", "reference", "category", "mask", "engine", "prompt")


@dataclass
class CatalogStats:
    """What `build_tryon_manifest` kept and left out."""

    persons: int = 0
    garments: int = 0
    pairs: int = 0
    incompatible_pairs: int = 0
    garments_without_category: list[str] = field(default_factory=list)


def _table(path: str | os.PathLike, what: str, required: tuple[str, ...]) -> tuple[pa.Table, Path]:
    table = read_table_file(path, what)
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ManifestError(f"{what} file {path} is missing column(s) {', '.join(missing)}")
    ids = pc.cast(table.column("id"), pa.string())
    if pc.any(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(ids), ""), True)).as_py():
        raise ManifestError(f"{what} file {path} has empty ids")
    if len(pc.unique(ids)) != len(ids):
        raise ManifestError(f"{what} file {path} has duplicate ids")
    return table.set_column(table.column_names.index("id"), "id", ids), Path(path).resolve().parent


def _relocate(image: str, source_dir: Path, target_dir: Path) -> str:
    """A path relative to its table's folder, rewritten relative to the new manifest's folder."""
    if "://" in image or Path(image).is_absolute():
        return image
    absolute = (source_dir / image).resolve()
    try:
        return os.path.relpath(absolute, target_dir)
    except ValueError:  # another drive
        return str(absolute)


def _accepted(text: str | None) -> set[str]:
    if text is None or not str(text).strip():
        return set(CATEGORIES)
    return {c.strip().lower() for c in str(text).replace(";", ",").split(",") if c.strip()}


def build_tryon_manifest(
    persons_path: str | os.PathLike,
    garments_path: str | os.PathLike,
    output_path: str | os.PathLike,
    category_column: str = "category",
    engine: str | None = None,
    prompt: str | None = None,
) -> CatalogStats:
    """Write the manifest of every compatible person x garment pair to `output_path`.

    The cross product is built with Arrow index arrays (repeat persons, tile garments, keep the
    compatible pairs) and written a step of rows at a time; Python touches each person and each
    garment once, never each pair.
    """
    persons, persons_dir = _table(persons_path, "persons", ("id", "image"))
    garments, garments_dir = _table(garments_path, "garments", ("id", "image", category_column))
    out = Path(output_path)
    out_dir = out.resolve().parent
    stats = CatalogStats(persons=persons.num_rows, garments=garments.num_rows)

    categories = pc.utf8_lower(pc.utf8_trim_whitespace(pc.fill_null(raw_column(garments.column(category_column)), "")))
    usable_mask = pc.is_in(categories, value_set=pa.array(CATEGORIES))
    stats.garments_without_category = garments.column("id").filter(pc.invert(usable_mask)).to_pylist()
    usable = garments.filter(usable_mask)
    garment_ids = usable.column("id").combine_chunks()
    garment_images = pa.array([_relocate(str(v), garments_dir, out_dir) for v in usable.column("image").to_pylist()],
                              pa.string())
    garment_category = categories.filter(usable_mask)
    garment_code = np.array([CATEGORIES.index(c) for c in garment_category.to_pylist()], dtype=np.int64)

    person_ids = persons.column("id").combine_chunks()
    person_images = pa.array([_relocate(str(v), persons_dir, out_dir) for v in persons.column("image").to_pylist()],
                             pa.string())
    accepts_text = (raw_column(persons.column("categories")).to_pylist() if "categories" in persons.column_names
                    else [None] * persons.num_rows)
    accepts = np.array([[c in _accepted(t) for c in CATEGORIES] for t in accepts_text], dtype=bool).reshape(-1, 3)

    m = len(garment_ids)
    step_persons = max(1, PAIRS_PER_STEP // max(1, m))
    id_chunks: list[pa.Array] = []
    with _ManifestWriter(out) as writer:
        for first in range(0, persons.num_rows, step_persons):
            person_index = np.repeat(np.arange(first, min(first + step_persons, persons.num_rows)), m)
            garment_index = np.tile(np.arange(m), len(person_index) // max(1, m))
            keep = accepts[person_index, garment_code[garment_index]]
            stats.incompatible_pairs += int((~keep).sum())
            person_index, garment_index = pa.array(person_index[keep]), pa.array(garment_index[keep])
            ids = pc.binary_join_element_wise(person_ids.take(person_index), garment_ids.take(garment_index),
                                              PAIR_SEPARATOR)
            id_chunks.append(ids)
            n = len(ids)
            writer.write(pa.table({
                "id": ids,
                "task": pa.array(["tryon"] * n, pa.string()),
                "image": person_images.take(person_index),
                "reference": garment_images.take(garment_index),
                "category": garment_category.take(garment_index),
                "mask": pa.array(["auto"] * n, pa.string()),
                "engine": pa.array([engine] * n, pa.string()),
                "prompt": pa.array([prompt] * n, pa.string()),
            }))
            stats.pairs += n
        all_ids = pa.chunked_array(id_chunks, pa.string())
        if len(pc.unique(all_ids)) != len(all_ids):
            raise ManifestError(f"person and garment ids make duplicate pair ids; avoid {PAIR_SEPARATOR!r} in ids")
    return stats


class _ManifestWriter:
    """Writes a manifest in steps to a temp file, renamed into place only when complete."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.tmp = out.with_name(f".{out.name}.tmp")
        self.suffix = out.suffix.lower()
        if self.suffix not in (".parquet", ".pq", ".csv", ".jsonl", ".ndjson", ".json"):
            raise ManifestError(f"unknown manifest format {self.suffix!r} for {out}: use .parquet, .csv or .jsonl")
        self._writer = None
        self._file = None

    def __enter__(self) -> "_ManifestWriter":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        schema = pa.schema([(c, pa.string()) for c in MANIFEST_COLUMNS])
        if self.suffix in (".parquet", ".pq"):
            self._writer = pq.ParquetWriter(self.tmp, schema)
        elif self.suffix == ".csv":
            self._writer = pacsv.CSVWriter(self.tmp, schema)
        else:
            self._file = open(self.tmp, "wb")
        return self

    def write(self, table: pa.Table) -> None:
        if self._writer is not None:
            self._writer.write_table(table)
        else:
            self._file.write(_json_lines(table))

    def __exit__(self, kind, value, traceback) -> None:
        (self._writer or self._file).close()
        if kind is None:
            os.replace(self.tmp, self.out)
        elif self.tmp.exists():
            self.tmp.unlink()


def _json_lines(table: pa.Table) -> bytes:
    """JSON Lines (UTF-8) for a table of strings, keys with null values left out, built column-wise."""
    if any(0 < column.null_count < len(column) for column in table.columns):  # mixed nulls: row by row
        return "".join(json.dumps({k: v for k, v in r.items() if v is not None}, ensure_ascii=False) + "\n"
                       for r in table.to_pylist()).encode("utf-8")
    pieces = [pc.binary_join_element_wise(json.dumps(name) + ": ", _json_strings(column), "")
              for name, column in zip(table.column_names, table.columns) if column.null_count == 0]
    if not pieces or not len(table):
        return b"{}\n" * len(table)
    lines = pc.binary_join_element_wise("{", pc.binary_join_element_wise(*pieces, ", "), "}\n", "")
    # the lines lie back to back in each chunk's data buffer: write them without a Python str per row
    return b"".join(_string_bytes(chunk) for chunk in lines.chunks)


def _string_bytes(array: pa.StringArray) -> bytes:
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset:array.offset + len(array) + 1]
    return array.buffers()[2].to_pybytes()[offsets[0]:offsets[-1]] if len(array) else b""


def _json_strings(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Each string as a JSON string literal (quotes, backslashes and control characters escaped)."""
    if pc.any(pc.match_substring_regex(column, r"[\x00-\x1f]")).as_py():
        encoded = [json.dumps(v, ensure_ascii=False) for v in column.to_pylist()]
        return pa.chunked_array([pa.array(encoded, pa.string())])
    escaped = pc.replace_substring(pc.replace_substring(column, "\\", "\\\\"), '"', '\\"')
    return pc.binary_join_element_wise('"', escaped, '"', "")
