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

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from editflow import storage
from editflow.manifest import ManifestError, read_table_file
from editflow.tasks import CATEGORIES

PAIR_SEPARATOR = "+"


@dataclass
class CatalogStats:
    """What `build_tryon_manifest` kept and left out."""

    persons: int = 0
    garments: int = 0
    pairs: int = 0
    incompatible_pairs: int = 0
    garments_without_category: list[str] = field(default_factory=list)


def _rows(path: str | os.PathLike, what: str, required: tuple[str, ...]) -> tuple[list[dict], Path]:
    table = read_table_file(path, what)
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ManifestError(f"{what} file {path} is missing column(s) {', '.join(missing)}")
    rows = table.to_pylist()
    ids = [str(r["id"]) for r in rows]
    if len(set(ids)) != len(ids):
        raise ManifestError(f"{what} file {path} has duplicate ids")
    if any(not i.strip() for i in ids):
        raise ManifestError(f"{what} file {path} has empty ids")
    return rows, Path(path).resolve().parent


def _relocate(image: str, source_dir: Path, target_dir: Path) -> str:
    """A path relative to its table's folder, rewritten relative to the new manifest's folder."""
    if "://" in image or Path(image).is_absolute():
        return image
    absolute = (source_dir / image).resolve()
    try:
        return os.path.relpath(absolute, target_dir)
    except ValueError:  # another drive
        return str(absolute)


def _accepted(person: dict) -> set[str]:
    text = person.get("categories")
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
    """Write the manifest of every compatible person x garment pair to `output_path`."""
    persons, persons_dir = _rows(persons_path, "persons", ("id", "image"))
    garments, garments_dir = _rows(garments_path, "garments", ("id", "image", category_column))
    out = Path(output_path)
    out_dir = out.resolve().parent
    stats = CatalogStats(persons=len(persons), garments=len(garments))
    usable = []
    for garment in garments:
        category = str(garment.get(category_column) or "").strip().lower()
        if category not in CATEGORIES:
            stats.garments_without_category.append(str(garment["id"]))
        else:
            usable.append((garment, category))
    rows = []
    for person in persons:
        accepted = _accepted(person)
        for garment, category in usable:
            if category not in accepted:
                stats.incompatible_pairs += 1
                continue
            rows.append({
                "id": f"{person['id']}{PAIR_SEPARATOR}{garment['id']}",
                "task": "tryon",
                "image": _relocate(str(person["image"]), persons_dir, out_dir),
                "reference": _relocate(str(garment["image"]), garments_dir, out_dir),
                "category": category,
                "mask": "auto",
                "engine": engine,
                "prompt": prompt,
            })
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ManifestError(f"person and garment ids make duplicate pair ids; avoid {PAIR_SEPARATOR!r} in ids")
    stats.pairs = len(rows)
    _write(rows, out)
    return stats


def _write(rows: list[dict], out: Path) -> None:
    """The manifest, encoded in memory and written whole (editflow.storage)."""
    columns = ["id", "task", "image", "reference", "category", "mask", "engine", "prompt"]
    table = pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in columns})
    suffix = out.suffix.lower()
    sink = pa.BufferOutputStream()
    if suffix in (".parquet", ".pq"):
        pq.write_table(table, sink)
    elif suffix == ".csv":
        pacsv.write_csv(table, sink)
    elif suffix in (".jsonl", ".ndjson", ".json"):
        sink.write("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows).encode())
    else:
        raise ManifestError(f"unknown manifest format {suffix!r} for {out}: use .parquet, .csv or .jsonl")
    storage.makedirs(storage.parent(out))
    storage.write_bytes(out, sink.getvalue().to_pybytes())
