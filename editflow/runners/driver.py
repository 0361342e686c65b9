"""One run of a manifest, whatever the executor: lease, resume, execute, reconcile, summarise."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import asdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from editflow import storage
from editflow.version import __version__
from editflow.config import RunConfig
from editflow.errors import EditflowError
from editflow.lease import LeaseHeld, acquire
from editflow.manifest import Manifest, read_manifest
from editflow.manifest_index import ManifestIndex
from editflow.results import prepare_resume, results_dir, summarize
from editflow.progress import ProgressFn
from editflow.runners.local import FILE_ROWS, run_local

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
    progress: ProgressFn | None = None,
    force_unlock: bool = False,
    gpus_per_worker: float | None = None,
    rows_per_file: int | None = None,
) -> dict[str, Any]:
    """Edit every row of `manifest` into `config.out_dir`; return the summary (also in summary.json).

    OUT may be a local folder or any storage URI. The run holds OUT's lease (editflow.lease) from
    start to summary: a second run on the same OUT refuses with RunError naming this one.
    A `ManifestIndex` (ids only) lets Ray read the rows on its workers; the local executor reads
    the rows here. `progress(rows_done, rows_total, ok, errors)` is called as rows complete
    (editflow.progress); `rows_per_file` result rows go to each Parquet file (default 1000).
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
        return _run_leased(manifest, config, executor, resume, workers, rows_per_block, progress,
                           rows_per_file or FILE_ROWS, gpus_per_worker)
    finally:
        lease.release()
        if lease.lost:
            print(f"editflow: warning: another run took {out} over during this run; check its results",
                  file=sys.stderr)


def with_manifest_scheme(config: RunConfig, manifest: Manifest | ManifestIndex) -> RunConfig:
    """A manifest read from a URI lets its rows use that URI's scheme (as a local manifest lets its
    rows use local paths): relative paths in it resolve to that store. Other schemes still need
    --allow-scheme."""
    scheme = storage.scheme(manifest.base_dir)
    if scheme in config.allowed_schemes:
        return config
    return dataclasses.replace(config, allowed_schemes=(*config.allowed_schemes, scheme))


def _run_leased(manifest: Manifest | ManifestIndex, config: RunConfig, executor: str, resume: bool,
                workers: int | None, rows_per_block: int, progress: ProgressFn | None,
                rows_per_file: int, gpus_per_worker: float | None = None) -> dict[str, Any]:
    out = config.out_dir
    progress = progress if callable(progress) else None  # False (older callers) means none
    if resume:
        done = prepare_resume(out, config.run_id)
    else:
        if storage.list_files(results_dir(out), ".parquet"):
            raise RunError(f"{out} already holds results; pass --resume to continue that run, or choose a new folder")
        done = pa.array([], pa.string())
    ids = manifest.ids if isinstance(manifest, ManifestIndex) else manifest.table.column("id")
    already = (pc.sum(pc.is_in(ids, value_set=done)).as_py() or 0) if len(done) else 0
    to_run = len(ids) - already
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if to_run:
        if executor == "local":
            table = manifest.table if isinstance(manifest, Manifest) else read_manifest(manifest.path).table
            if len(done):
                table = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=done)))
            run_local(table, config, progress=progress, file_rows=rows_per_file)
        else:
            from editflow.runners.ray import RayOptions, run_ray

            source = manifest if isinstance(manifest, ManifestIndex) else manifest.table
            options = RayOptions(workers=workers, rows_per_block=rows_per_block, file_rows=rows_per_file,
                                 gpus_per_worker=gpus_per_worker)
            extra = run_ray(source, config, options, rows_total=to_run, done_ids=done,
                           progress=progress)
    wall = time.perf_counter() - started
    run_info = {
        "run_id": config.run_id,
        "manifest": manifest.path,
        "out_dir": storage.absolute(out),
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
    return summarize(out, ids, run_info)
