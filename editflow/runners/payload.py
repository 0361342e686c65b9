"""Rows <-> Arrow tables for Ray Data: fixed schemas, arrays carried as .npy bytes.

Ray moves blocks between stages through its object store; a fixed schema keeps all-error batches
from changing column types, and arrays travel as bytes (never Python objects, which Ray cannot
size) with their shape and dtype in the .npy header; a dict of named arrays (a host step's) as
one uncompressed .npz.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa

from editflow.manifest import RAW_SCHEMA
from editflow.results import RESULT_SCHEMA
from editflow.runners.stages import BYTES_PAYLOAD_KEYS, NAMED_PAYLOAD_KEYS, PAYLOAD_KEYS, Row

INFLIGHT_SCHEMA = pa.schema(
    list(RESULT_SCHEMA)
    + [pa.field("manifest", pa.struct(list(RAW_SCHEMA)))]
    + [pa.field(key, pa.binary()) for key in PAYLOAD_KEYS]
)


def array_to_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def bytes_to_array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def arrays_to_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **{name: np.ascontiguousarray(a) for name, a in arrays.items()})
    return buffer.getvalue()


def bytes_to_arrays(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _encode(key: str, value: Any) -> bytes:
    if key in BYTES_PAYLOAD_KEYS:
        return value
    return arrays_to_bytes(value) if key in NAMED_PAYLOAD_KEYS else array_to_bytes(value)


def _decode(key: str, data: bytes) -> Any:
    if key in BYTES_PAYLOAD_KEYS:
        return data
    return bytes_to_arrays(data) if key in NAMED_PAYLOAD_KEYS else bytes_to_array(data)


def rows_to_table(rows: list[Row]) -> pa.Table:
    """Encode in-flight rows with the fixed in-flight schema."""
    records = []
    for row in rows:
        record: dict[str, Any] = {name: row.get(name) for name in INFLIGHT_SCHEMA.names}
        for key in PAYLOAD_KEYS:
            if row.get(key) is not None:
                record[key] = _encode(key, row[key])
        records.append(record)
    return pa.Table.from_pylist(records, schema=INFLIGHT_SCHEMA)


def table_to_rows(table: pa.Table) -> list[Row]:
    """Decode an in-flight table back to rows with numpy arrays."""
    rows = table.to_pylist()
    for row in rows:
        for key in PAYLOAD_KEYS:
            if row.get(key) is None:
                row.pop(key, None)
            else:
                row[key] = _decode(key, row[key])
    return rows
