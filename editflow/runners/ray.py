"""The Ray Data runner: the same stages, spread over a cluster (or an embedded local one).

Plan: the manifest file -> Ray Data's own reader (read_parquet / read_csv / read_text, on the
workers; the driver holds only the ids it checked) -> every cell cast to a string (RAW_SCHEMA), rows
already ok in OUT dropped (resume) -> prepare (CPU tasks: decode, so a poison image never kills a
model actor) -> [mask: CPU actors, when the edit actors hold GPUs] -> edit (an actor pool; models
load once per actor; see runners/placement.py) -> write (CPU tasks: images
by the stage, durable per batch) -> `write_parquet` with at least `FILE_ROWS` rows per result file.
With no RAY_ADDRESS an embedded local cluster is started; inside `ray job submit` (RAY_ADDRESS set)
the job connects to its cluster.

Progress comes from the write tasks: each reports its finished rows to a small counter actor,
which the driver polls.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from editflow import logs, storage
from editflow.config import RunConfig
from editflow.manifest import COLUMNS, RAW_SCHEMA, _cell_to_str, _to_raw
from editflow.manifest_index import ManifestIndex
from editflow.progress import ProgressFn
from editflow.results import RESULT_SCHEMA, results_dir, to_result_table
from editflow.runners.local import FILE_ROWS
from editflow.runners.payload import rows_to_table, table_to_rows
from editflow.runners.placement import Placement, local_device, plan_placement
from editflow.runners.stages import EditStage, MaskStage, PrepareStage, WriteStage, close_stages, new_row

POLL_S = 0.5


@dataclass
class RayOptions:
    """Cluster and pool sizing. `workers` = edit actors (defaults: GPUs / gpus_per_worker, or 1)."""

    workers: int | None = None
    rows_per_block: int = 8
    num_cpus: int | None = None  # embedded cluster only
    #: GPUs per edit actor for diffusers engines (fractions share a GPU); 0 = never ask for GPUs
    gpus_per_worker: float | None = None
    file_rows: int = FILE_ROWS  # least rows per result file (the last files of a run may hold fewer)


def to_raw_batch(batch: pa.Table, fmt: str, done: list) -> pa.Table:
    """A block as read -> RAW_SCHEMA strings, minus the rows already ok (resume)."""
    if fmt == "jsonl":
        records = [json.loads(line) for line in batch.column("text").to_pylist()]
        raw = pa.table({name: pa.array([_cell_to_str(r.get(name)) for r in records], pa.string())
                        for name in COLUMNS}, schema=RAW_SCHEMA)
    else:
        raw = _to_raw(batch)
    if done and done[0] is not None:
        import ray

        done_ids = ray.get(done[0])  # a shared Arrow array; each worker reads it from the object store
        raw = raw.filter(pc.invert(pc.is_in(raw.column("id"), value_set=done_ids)))
    return raw


def prepare_batch(batch: pa.Table, config: RunConfig) -> pa.Table:
    rows = [new_row(raw, config.run_id) for raw in batch.to_pylist()]
    return rows_to_table(PrepareStage(config)(rows))


class EditActor:
    """Edit (and, unless the masks run in their own stage, mask) in one actor: models load once
    per actor; a model-backed mask and the engine share its device."""

    def __init__(self, config: RunConfig, masks: bool = True) -> None:
        import ray

        config = replace(config, device=local_device(config.device, ray.get_gpu_ids()))
        self.mask = MaskStage(config) if masks else None
        self.edit = EditStage(config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = table_to_rows(batch)
        return rows_to_table(self.edit(self.mask(rows) if self.mask is not None else rows))

    def __del__(self) -> None:  # Ray Data deletes the UDF when the pool shuts down gracefully
        close_stages([stage for stage in (self.mask, self.edit) if stage is not None])


class MaskActor:
    """The mask stage on CPU actors (landmark models, mask caches and the engines' host steps load
    once per actor)."""

    def __init__(self, config: RunConfig) -> None:
        self.mask = MaskStage(config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return rows_to_table(self.mask(table_to_rows(batch)))

    def __del__(self) -> None:
        close_stages([self.mask])


def write_batch(batch: pa.Table, config: RunConfig, counter: Any = None) -> pa.Table:
    table = to_result_table(WriteStage(config)(table_to_rows(batch)))
    if counter is not None:  # waited for, so the count is complete when the last write returns
        import ray

        ok = pc.sum(pc.equal(table.column("status"), "ok")).as_py() or 0
        ray.get(counter.add.remote(table.num_rows, ok))
    return table


class ProgressCounter:
    """Rows finished by the write tasks (a Ray actor with no CPU of its own)."""

    def __init__(self) -> None:
        self.done = 0
        self.ok = 0

    def add(self, done: int, ok: int) -> None:
        self.done += done
        self.ok += ok

    def get(self) -> tuple[int, int]:
        return self.done, self.ok


def init_ray(options: RayOptions) -> bool:
    """Connect to RAY_ADDRESS if set, else start an embedded local cluster. True if we started it."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    logs.reroute_library_handlers()  # importing ray set up its logger on the terminal
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**logs.ray_init_kwargs())
        return False
    # Logical CPUs above the core count keep read/write tasks schedulable beside the actors
    # (Ray Data can starve tasks when actors hold every CPU).
    cpus = options.num_cpus or max(4, os.cpu_count() or 1)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, **logs.ray_init_kwargs())
    return True


def read_manifest_dataset(source: ManifestIndex | pa.Table, done_ref: Any):
    """The manifest as a Ray Dataset of RAW_SCHEMA rows, read on the workers; ok rows left out."""
    import ray

    if isinstance(source, pa.Table):  # an in-memory manifest (API callers): already on the driver
        ds, fmt = ray.data.from_arrow(source), "arrow"
    else:
        fs, inner = storage.resolve(source.path)
        fmt = source.format
        if fmt == "parquet":
            ds = ray.data.read_parquet(inner, filesystem=fs, file_extensions=None)
        elif fmt == "csv":  # every cell a string, so a wrongly typed cell is its row's error
            convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in source.columns},
                                           strings_can_be_null=True, null_values=[""])
            ds = ray.data.read_csv(inner, filesystem=fs, convert_options=convert, file_extensions=None)
        else:  # JSON lines parsed on the workers, cell by cell, like the local reader
            ds = ray.data.read_text(inner, filesystem=fs, drop_empty_lines=True)
    return ds.map_batches(to_raw_batch, fn_kwargs={"fmt": fmt, "done": [done_ref]}, batch_format="pyarrow",
                          batch_size=None, zero_copy_batch=True)


def run_ray(
    source: ManifestIndex | pa.Table,
    config: RunConfig,
    options: RayOptions,
    rows_total: int | None = None,
    done_ids: pa.Array | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Edit every row of `source` (a checked manifest file, or a RAW_SCHEMA table) not in `done_ids`."""
    import ray

    started = time.perf_counter()
    owns_cluster = init_ray(options)
    init_s = time.perf_counter() - started
    try:
        context = ray.data.DataContext.get_current()
        logs.reroute_library_handlers()  # importing ray.data set up its loggers
        context.enable_progress_bars = False  # editflow's own bar counts rows (editflow.progress)
        context.max_errored_blocks = 0  # rows are never silently dropped; errors are per row
        gpus = float(ray.cluster_resources().get("GPU", 0))
        placement = plan_for(source, config, options, gpus, embedded=owns_cluster)
        total = rows_total if rows_total is not None else (
            source.num_rows if isinstance(source, pa.Table) else len(source))
        done_ref = ray.put(done_ids) if done_ids is not None and len(done_ids) else None
        counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
        ds = build_dataset(source, config, options, placement, done_ref, counter)
        storage.makedirs(results_dir(config.out_dir))
        filesystem, path = storage.resolve(results_dir(config.out_dir))  # OUT may be any storage URI
        write = _in_background(ds.write_parquet, path, filesystem=filesystem, schema=RESULT_SCHEMA,
                               min_rows_per_file=max(1, options.file_rows))
        _report(write, counter, total, progress)
        return {"ray_init_s": round(init_s, 3), "ray_workers": placement.workers, "ray_gpus": gpus,
                "ray_gpus_per_worker": placement.num_gpus}
    finally:
        if owns_cluster:
            ray.shutdown()


def row_engines(source: ManifestIndex | pa.Table, config: RunConfig) -> set[str]:
    """The engine names the rows use (the run's default where a row names none)."""
    if isinstance(source, ManifestIndex):
        names = list(source.engines)
    elif "engine" not in source.column_names:
        return {config.engine}
    else:
        names = pc.unique(source.column("engine")).to_pylist()
    return {str(n).strip() if n not in (None, "") else config.engine for n in names} or {config.engine}


def plan_for(source: ManifestIndex | pa.Table, config: RunConfig, options: RayOptions, cluster_gpus: float,
             embedded: bool) -> Placement:
    return plan_placement(row_engines(source, config), config.device, config.batch_size, cluster_gpus,
                          embedded, options.workers, options.gpus_per_worker, sam=bool(config.sam_checkpoint))


def build_dataset(source: ManifestIndex | pa.Table, config: RunConfig, options: RayOptions, placement: Placement,
                  done_ref: Any = None, counter: Any = None) -> Any:
    """The lazy Ray Data plan: read -> prepare -> [mask] -> edit -> write (nothing runs until it is consumed)."""
    import ray

    rows_per_block = max(1, options.rows_per_block)
    ds = read_manifest_dataset(source, done_ref)
    ds = ds.map_batches(prepare_batch, fn_kwargs={"config": config}, batch_format="pyarrow",
                        batch_size=rows_per_block, num_cpus=0.5)
    if placement.separate_masks:  # CPU work apart from the GPU actors
        ds = ds.map_batches(
            MaskActor, fn_constructor_kwargs={"config": config}, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, 2 * placement.workers)),
            batch_size=rows_per_block, num_cpus=1,
        )
    # GPU actors take a window of rows per call; the engine groups it by size and settings
    edit_config = replace(config, batch_size=placement.window) if placement.uses_gpu else config
    ds = ds.map_batches(
        EditActor, fn_constructor_kwargs={"config": edit_config, "masks": not placement.separate_masks},
        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(min_size=1, max_size=placement.workers),
        batch_size=placement.window, num_gpus=placement.num_gpus, num_cpus=1,
    )
    return ds.map_batches(write_batch, fn_kwargs={"config": config, "counter": counter}, batch_format="pyarrow",
                          batch_size=rows_per_block, num_cpus=0.5)


def _in_background(function, *args, **kwargs) -> Future:
    """Run `function` in a daemon thread (Ctrl-C in the main thread is never held up by it)."""
    future: Future = Future()

    def target() -> None:
        try:
            future.set_result(function(*args, **kwargs))
        except BaseException as exc:  # handed to the main thread by future.result()
            future.set_exception(exc)

    threading.Thread(target=target, name="editflow-write", daemon=True).start()
    return future


def _report(write: Future, counter: Any, total: int, progress: ProgressFn | None) -> None:
    """Feed `progress` from the counter actor until the write finishes (its errors re-raised)."""
    import ray

    last = None
    while True:
        finished = bool(wait([write], timeout=POLL_S).done)
        if progress is not None:
            done, ok = ray.get(counter.get.remote())
            done, ok = min(done, total), min(ok, total)  # a retried block counts twice
            if (done, ok) != last:
                progress(done, total, ok, done - ok)
                last = (done, ok)
        if finished:
            write.result()
            return
