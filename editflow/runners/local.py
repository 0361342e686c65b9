"""The in-process runner: the same stages as on Ray, looped over chunks of rows.

Each chunk's result rows are written as one Parquet file as soon as the chunk is done, so an
interrupted run keeps everything finished before the interruption.
"""

from __future__ import annotations

from typing import Any

from editflow.config import RunConfig
from editflow.progress import ProgressFn
from editflow.results import write_result_file
from editflow.runners.stages import (
    EditStage, MaskStage, PrepareStage, Row, WriteStage, close_stages, new_row, run_stages,
)


def build_stages(config: RunConfig) -> list:
    return [PrepareStage(config), MaskStage(config), EditStage(config), WriteStage(config)]


def run_local(
    raw_rows: list[dict[str, Any]],
    config: RunConfig,
    chunk_rows: int = 16,
    progress: ProgressFn | None = None,
) -> None:
    """Edit `raw_rows` in this process, writing result files under OUT/results as it goes."""
    stages = build_stages(config)
    total = len(raw_rows)
    done = ok = 0
    try:
        for start in range(0, total, chunk_rows):
            chunk = [new_row(raw, config.run_id) for raw in raw_rows[start:start + chunk_rows]]
            finished: list[Row] = run_stages(chunk, stages)
            write_result_file(config.out_dir, finished, config.run_id)
            done += len(chunk)
            ok += sum(row["status"] == "ok" for row in finished)
            if progress:
                progress(done, total, ok, done - ok)
    finally:
        close_stages(stages)
