"""One run of a manifest, whatever the executor: lease, resume, execute, reconcile, summarise."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import asdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from editflow import __version__, storage
from editflow.config import RunConfig
from editflow.errors import EditflowError
from editflow.lease import LeaseHeld, acquire
from editflow.manifest import Manifest
from editflow.results import prepare_resume, results_dir, summarize
from editflow.runners.local import run_local
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
    force_unlock: bool = False,
    gpus_per_worker: float | None = None,
) -> dict[str, Any]:
    """Edit every row of `manifest` into `config.out_dir`; return the summary (also in summary.json).

    `progress(rows_done, rows_total, ok, errors)` is called as rows complete (editflow.progress).

    OUT may be a local folder or any storage URI. The run holds OUT's lease (editflow.lease) from
    start to summary: a second run on the same OUT refuses with RunError naming this one.
    """
    if executor not in EXECUTORS:
        raise RunError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    config = with_manifest_scheme(config, manifest)
    out = config.out_dir
    storage.makedirs(out)
    try:
        lease = acquire(out, config.run_id, take_over_stale=resume, force=force_unlock)
    except LeaseHeld as exc:
        raise RunError(str(exc)) from None
    try:
        return _run_leased(manifest, config, executor, resume, workers, rows_per_block, progress, gpus_per_worker)
    finally:
        lease.release()
        if lease.lost:
            print(f"editflow: warning: another run took {out} over during this run; check its results",
                  file=sys.stderr)


def with_manifest_scheme(config: RunConfig, manifest: Manifest) -> RunConfig:
    """A manifest read from a URI lets its rows use that URI's scheme (as a local manifest lets its
    rows use local paths): relative paths in it resolve to that store. Other schemes still need
    --allow-scheme."""
    scheme = storage.scheme(manifest.base_dir)
    if scheme in config.allowed_schemes:
        return config
    return dataclasses.replace(config, allowed_schemes=(*config.allowed_schemes, scheme))


def _run_leased(manifest: Manifest, config: RunConfig, executor: str, resume: bool, workers: int | None,
                rows_per_block: int, progress: ProgressFn | None,
                gpus_per_worker: float | None = None) -> dict[str, Any]:
    out = config.out_dir
    if resume:
        done = prepare_resume(out, config.run_id)
    else:
        if storage.list_files(results_dir(out), ".parquet"):
            raise RunError(f"{out} already holds results; pass --resume to continue that run, or choose a new folder")
        done = pa.array([], pa.string())
    table = manifest.table
    if len(done):
        table = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=done)))
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if table.num_rows:
        if executor == "local":
            run_local(table.to_pylist(), config, progress=progress)
        else:
            from editflow.runners.ray import RayOptions, run_ray

            extra = run_ray(table, config, RayOptions(workers=workers, rows_per_block=rows_per_block,
                                                      gpus_per_worker=gpus_per_worker))
    wall = time.perf_counter() - started
    run_info = {
        "run_id": config.run_id,
        "manifest": manifest.path,
        "out_dir": storage.absolute(out),
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
    summary = summarize(out, manifest.table.column("id"), run_info)
    if progress and executor == "ray" and table.num_rows:  # until the Ray runner reports rows as they finish
        progress(table.num_rows, table.num_rows, summary["status"]["ok"] - len(done), summary["status"]["error"])
    return summary
