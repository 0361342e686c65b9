"""`editflow validate` in bulk: each distinct row shape parsed once, each distinct path checked once.

A row's verdict depends on its cells, not on its id, and a catalog repeats the same task, mask,
numbers and images across thousands of rows. So, per record batch: the cells other than id and
the paths form a key, `parse_row` runs once per distinct key, every distinct image / reference /
mask file is checked once, and the verdicts reach the rows through Arrow `take`. Python work grows
with distinct values, never with rows; memory is one batch plus the verdict caches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from editflow.manifest import COLUMNS, Manifest, RowError, parse_row
from editflow.media import MediaError, MediaPolicy, check_uri_allowed, decode_image, read_bytes, resolve_uri

BATCH_ROWS = 65536
#: columns whose values decide parse_row's verdict (paths count only as present / absent)
SHAPE_COLUMNS = tuple(c for c in COLUMNS if c not in ("id", "image", "reference"))
_SEP, _NULL = "\x1f", "\x00"


@dataclass
class ValidationCounts:
    rows: int = 0
    invalid: int = 0

    @property
    def ok(self) -> int:
        return self.rows - self.invalid


class ManifestValidator:
    """Verdicts for a manifest's rows: None (valid) or the reason, cached per distinct value."""

    def __init__(self, base_dir: str, policy: MediaPolicy, check_images: bool = False) -> None:
        self.base_dir = base_dir
        self.policy = policy
        self.check_images = check_images
        self._shapes: dict[str, str | None] = {}
        self._paths: dict[tuple[str, str], str | None] = {}

    def batch_verdicts(self, batch: pa.RecordBatch | pa.Table) -> pa.Array:
        """One verdict per row of a RAW_SCHEMA batch: null when valid, else the reason."""
        shape = self._shape_verdicts(batch)
        image = self._path_verdicts(batch.column("image"), "image")
        reference = self._path_verdicts(batch.column("reference"), "reference")
        # parse errors first, then image, reference, mask file: the order the row would fail in
        return pc.coalesce(shape[0], image, reference, shape[1])

    def _shape_verdicts(self, batch: pa.RecordBatch | pa.Table) -> tuple[pa.Array, pa.Array]:
        parts = [batch.column(name) for name in SHAPE_COLUMNS]
        parts += [pc.is_valid(batch.column("image")).cast(pa.string()),
                  pc.is_valid(batch.column("reference")).cast(pa.string())]
        keys = pc.binary_join_element_wise(*parts, _SEP, null_handling="replace", null_replacement=_NULL)
        encoded = pc.dictionary_encode(keys).combine_chunks() if isinstance(keys, pa.ChunkedArray) else \
            pc.dictionary_encode(keys)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        distinct, first_rows = np.unique(codes, return_index=True)
        parse_messages: list[str | None] = [None] * len(encoded.dictionary)
        mask_messages: list[str | None] = [None] * len(encoded.dictionary)
        for code, row_index in zip(distinct.tolist(), first_rows.tolist()):
            key = encoded.dictionary[code].as_py()
            if key not in self._shapes:
                self._shapes[key] = self._check_shape(batch.slice(row_index, 1).to_pylist()[0])
            message = self._shapes[key]
            if message and message.startswith("mask file: "):
                mask_messages[code] = message[len("mask file: "):]
            else:
                parse_messages[code] = message
        indices = encoded.indices
        return (pc.take(pa.array(parse_messages, pa.string()), indices),
                pc.take(pa.array(mask_messages, pa.string()), indices))

    def _check_shape(self, raw: dict) -> str | None:
        if not raw.get("id"):
            raw = {**raw, "id": "row"}  # ids are checked for the whole manifest; the shape needs one
        try:
            row = parse_row(raw)
        except RowError as exc:
            return str(exc)
        if row.mask.uri:
            problem = self._check_path(row.mask.uri, "mask")
            if problem:
                return "mask file: " + problem
        return None

    def _path_verdicts(self, column: pa.Array | pa.ChunkedArray, label: str) -> pa.Array:
        encoded = pc.dictionary_encode(column)
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        messages = [self._check_path(uri, label) for uri in encoded.dictionary.to_pylist()]
        return pc.take(pa.array(messages, pa.string()), encoded.indices)

    def _check_path(self, uri: str, label: str) -> str | None:
        key = (label, uri)
        if key not in self._paths:
            try:
                resolved = resolve_uri(uri, self.base_dir)
                check_uri_allowed(resolved, self.policy)
                if "://" not in resolved and not Path(resolved).is_file():
                    raise RowError(f"{label} not found: {resolved}")
                if self.check_images:
                    decode_image(read_bytes(resolved, self.policy), self.policy, name=uri)
                self._paths[key] = None
            except (RowError, MediaError) as exc:
                self._paths[key] = str(exc)
        return self._paths[key]


def validate_manifest(
    manifest: Manifest,
    policy: MediaPolicy,
    check_images: bool = False,
    report: Callable[[str, str | None], None] | None = None,
    verbose: bool = False,
    batch_rows: int = BATCH_ROWS,
) -> ValidationCounts:
    """Check every row; `report(id, reason)` is called for each invalid row (each row when `verbose`)."""
    validator = ManifestValidator(manifest.base_dir, policy, check_images)
    counts = ValidationCounts()
    for batch in _batches(manifest.table, batch_rows):
        verdicts = validator.batch_verdicts(batch)
        counts.rows += batch.num_rows
        invalid = pc.is_valid(verdicts)
        counts.invalid += pc.sum(invalid).as_py() or 0
        if report is None:
            continue
        ids, reasons = batch.column("id"), verdicts
        if not verbose:
            ids, reasons = ids.filter(invalid), reasons.filter(invalid)
        for row_id, reason in zip(ids.to_pylist(), reasons.to_pylist()):
            report(row_id, reason)
    return counts


def _batches(table: pa.Table, rows: int) -> Iterator[pa.RecordBatch]:
    yield from table.to_batches(max_chunksize=max(1, rows))

