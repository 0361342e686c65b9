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
from editflow.manifest import Manifest, read_manifest
from editflow.manifest_index import ManifestIndex
from editflow.results import prepare_resume, results_dir, scan_results, summarize
from editflow.runners.local import ProgressCallback, run_local, stderr_progress
from editflow.errors import EditflowError

EXECUTORS = ("ray", "local")


class RunError(EditflowError):
    """The run cannot start (for example OUT holds another run's results without --resume)."""


def run_manifest(
    manifest: Manifest | ManifestIndex,
    config: RunConfig,
    executor: str = "ray",
    resume: bool = False,
    workers: int | None = None,
    rows_per_block: int = 8,
    progress: bool | ProgressCallback = True,
) -> dict[str, Any]:
    """Edit every row of `manifest` into `config.out_dir`; return the summary (also in summary.json).

    A `ManifestIndex` (ids only) lets Ray read the rows on its workers; the local executor reads
    the rows here. `progress` is True (lines on stderr), False, or a
    `progress(rows_done, rows_total, ok, errors)` callback.
    """
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
    done_ids = done if isinstance(done, (pa.Array, pa.ChunkedArray)) else pa.array(sorted(done), pa.string())
    ids = manifest.ids if isinstance(manifest, ManifestIndex) else manifest.table.column("id")
    already = (pc.sum(pc.is_in(ids, value_set=done_ids)).as_py() or 0) if len(done_ids) else 0
    to_run = len(ids) - already
    callback = stderr_progress("editflow") if progress is True else (progress or None)
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if to_run:
        if executor == "local":
            table = manifest.table if isinstance(manifest, Manifest) else read_manifest(manifest.path).table
            if len(done_ids):
                table = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=done_ids)))
            run_local(table, config, progress=callback)
        else:
            from editflow.runners.ray import RayOptions, run_ray

            source = manifest if isinstance(manifest, ManifestIndex) else manifest.table
            extra = run_ray(source, config, RayOptions(workers=workers, rows_per_block=rows_per_block,
                                                       progress=False), rows_total=to_run, done_ids=done_ids,
                           progress=callback)
    wall = time.perf_counter() - started
    run_info = {
        "run_id": config.run_id,
        "manifest": manifest.path,
        "out_dir": str(out.resolve()),
        "executor": executor,
        "engine": config.engine,
        "editflow_version": __version__,
        "resumed_ok_rows": already,
        "rows_this_run": to_run,
        "wall_s": round(wall, 3),
        "rows_per_s": round(to_run / wall, 3) if wall > 0 and to_run else None,
        "config": {k: v for k, v in asdict(config).items() if k not in ("out_dir", "base_dir")},
        **extra,
    }
    return summarize(out, ids.to_pylist(), run_info)
