"""One run of a manifest, whatever the executor: resume, execute, reconcile, summarise."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from editflow import __version__
from editflow.config import RunConfig
from editflow.manifest import Manifest
from editflow.results import prepare_resume, results_dir, scan_results, summarize
from editflow.runners.local import run_local
from editflow.errors import EditflowError
from editflow.progress import ProgressFn

EXECUTORS = ("ray", "local")


class RunError(EditflowError):
    """The run cannot start (for example OUT holds another run's results without --resume)."""


def run_manifest(
    manifest: Manifest,
    config: RunConfig,
    executor: str = "ray",
    resume: bool = False,
    workers: int | None = None,
    rows_per_block: int = 8,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Edit every row of `manifest` into `config.out_dir`; return the summary (also in summary.json).

    `progress(rows_done, rows_total, ok, errors)` is called as rows complete (editflow.progress)."""
    if executor not in EXECUTORS:
        raise RunError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        done = prepare_resume(out, config.run_id)
    else:
        if scan_results(out).files or any(results_dir(out).glob("*.parquet")):
            raise RunError(f"{out} already holds results; pass --resume to continue that run, or choose a new folder")
        done = set()
    table = manifest.table
    if done:
        table = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=pa.array(sorted(done), pa.string()))))
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if table.num_rows:
        if executor == "local":
            run_local(table.to_pylist(), config, progress=progress)
        else:
            from editflow.runners.ray import RayOptions, run_ray

            extra = run_ray(table, config, RayOptions(workers=workers, rows_per_block=rows_per_block))
    wall = time.perf_counter() - started
    run_info = {
        "run_id": config.run_id,
        "manifest": manifest.path,
        "out_dir": str(out.resolve()),
        "executor": executor,
        "engine": config.engine,
        "editflow_version": __version__,
        "resumed_ok_rows": len(done),
        "rows_this_run": table.num_rows,
        "wall_s": round(wall, 3),
        "rows_per_s": round(table.num_rows / wall, 3) if wall > 0 and table.num_rows else None,
        "config": {k: v for k, v in asdict(config).items() if k not in ("out_dir", "base_dir")},
        **extra,
    }
    ids = manifest.table.column("id").to_pylist()
    summary = summarize(out, ids, run_info)
    if progress and executor == "ray" and table.num_rows:  # until the Ray runner reports rows as they finish
        progress(table.num_rows, table.num_rows, summary["status"]["ok"] - len(done), summary["status"]["error"])
    return summary
