"""The in-process runner: the same stages as on Ray, looped over chunks of rows.

Finished rows are buffered and written as one Parquet result file per `file_rows` rows or per
`file_seconds`, whichever comes first (and at the end, and on Ctrl-C), so a million-row run
leaves about a thousand result files. A killed run loses at most that buffer's bookkeeping: its
images are already on disk under id-derived names, and `--resume` re-runs those rows, rewriting
the same files.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import pyarrow as pa

from editflow.config import RunConfig
from editflow.progress import ProgressFn
from editflow.results import write_result_file
from editflow.runners.stages import (
    EditStage, MaskStage, PrepareStage, Row, WriteStage, close_stages, new_row, run_stages,
)

FILE_ROWS = 1000
FILE_SECONDS = 60.0


def build_stages(config: RunConfig) -> list:
    return [PrepareStage(config), MaskStage(config), EditStage(config), WriteStage(config)]


def _chunks(raw_rows: pa.Table | list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    if isinstance(raw_rows, pa.Table):  # only one chunk of Python dicts at a time
        for batch in raw_rows.to_batches(max_chunksize=size):
            yield batch.to_pylist()
    else:
        for start in range(0, len(raw_rows), size):
            yield raw_rows[start:start + size]


def run_local(
    raw_rows: pa.Table | list[dict[str, Any]],
    config: RunConfig,
    chunk_rows: int = 16,
    progress: ProgressFn | None = None,
    file_rows: int = FILE_ROWS,
    file_seconds: float = FILE_SECONDS,
) -> None:
    """Edit `raw_rows` (a RAW_SCHEMA table or raw dicts) in this process; results go to OUT/results."""
    stages = build_stages(config)
    writer: WriteStage = stages[-1]
    writer.sync_per_batch = False  # one round of fsyncs per result file, just before it is written
    total = len(raw_rows) if not isinstance(raw_rows, pa.Table) else raw_rows.num_rows
    done = ok = 0
    buffer: list[Row] = []
    last_write = time.monotonic()
    try:
        for raw_chunk in _chunks(raw_rows, chunk_rows):
            finished = run_stages([new_row(raw, config.run_id) for raw in raw_chunk], stages)
            buffer.extend(finished)
            done += len(finished)
            ok += sum(1 for row in finished if row["status"] == "ok")
            if len(buffer) >= file_rows or time.monotonic() - last_write >= file_seconds:
                _commit(writer, buffer, config)
                buffer, last_write = [], time.monotonic()
            if progress:
                progress(done, total, ok, done - ok)
    finally:  # also on Ctrl-C: finished rows are kept, and the stages free their models
        if buffer:
            _commit(writer, buffer, config)
        close_stages(stages)


def _commit(writer: WriteStage, rows: list[Row], config: RunConfig) -> None:
    """The buffered rows' images made durable, then their result file written (the commit)."""
    writer.sync(rows)
    write_result_file(config.out_dir, rows, config.run_id)
