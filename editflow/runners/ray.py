"""The Ray Data runner: the same stages, spread over a cluster (or an embedded local one).

Plan: manifest rows -> small blocks (a block is Ray's unit of failure and retry, so one bad block
never takes many rows with it) -> prepare (CPU tasks: decode, so a poison image never kills a model
actor) -> mask + edit (an actor pool; models load once per actor) -> write (CPU tasks: images
written by the stage, metadata by `write_parquet`). With no RAY_ADDRESS an embedded local cluster
is started; inside `ray job submit` (RAY_ADDRESS set) the job connects to its cluster.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from editflow import storage
from editflow.config import RunConfig
from editflow.manifest import RAW_SCHEMA
from editflow.results import RESULT_SCHEMA, results_dir, to_result_table
from editflow.runners.payload import rows_to_table, table_to_rows
from editflow.runners.stages import EditStage, MaskStage, PrepareStage, WriteStage, close_stages, new_row


@dataclass
class RayOptions:
    """Cluster and pool sizing. `workers` = edit actors (defaults: GPUs, or 1 on CPU)."""

    workers: int | None = None
    rows_per_block: int = 8
    progress: bool = True
    num_cpus: int | None = None  # embedded cluster only


def prepare_batch(batch: pa.Table, config: RunConfig) -> pa.Table:
    rows = [new_row(raw, config.run_id) for raw in batch.to_pylist()]
    return rows_to_table(PrepareStage(config)(rows))


class EditActor:
    """Mask and edit in one actor so a model-backed mask and the engine share its device."""

    def __init__(self, config: RunConfig) -> None:
        self.mask = MaskStage(config)
        self.edit = EditStage(config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return rows_to_table(self.edit(self.mask(table_to_rows(batch))))

    def __del__(self) -> None:  # Ray Data deletes the UDF when the pool shuts down gracefully
        close_stages([self.mask, self.edit])


def write_batch(batch: pa.Table, config: RunConfig) -> pa.Table:
    return to_result_table(WriteStage(config)(table_to_rows(batch)))


def init_ray(options: RayOptions) -> bool:
    """Connect to RAY_ADDRESS if set, else start an embedded local cluster. True if we started it."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return False
    # Logical CPUs above the core count keep read/write tasks schedulable beside the actors
    # (Ray Data can starve tasks when actors hold every CPU).
    cpus = options.num_cpus or max(4, os.cpu_count() or 1)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=True)
    return True


def run_ray(raw_table: pa.Table, config: RunConfig, options: RayOptions) -> dict[str, Any]:
    """Edit every row of `raw_table` (RAW_SCHEMA) on Ray; result files land in OUT/results."""
    import ray

    started = time.perf_counter()
    owns_cluster = init_ray(options)
    init_s = time.perf_counter() - started
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = options.progress
        context.max_errored_blocks = 0  # rows are never silently dropped; errors are per row
        gpus = int(ray.cluster_resources().get("GPU", 0))
        workers = options.workers or max(1, gpus)
        per_actor_gpu = 1 if gpus else 0
        ds = ray.data.from_arrow(raw_table.cast(RAW_SCHEMA))
        ds = ds.repartition(target_num_rows_per_block=max(1, options.rows_per_block))
        ds = ds.map_batches(prepare_batch, fn_kwargs={"config": config}, batch_format="pyarrow",
                            batch_size=options.rows_per_block, num_cpus=0.5)
        ds = ds.map_batches(
            EditActor, fn_constructor_kwargs={"config": config}, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
            batch_size=max(1, config.batch_size), num_gpus=per_actor_gpu, num_cpus=1,
        )
        ds = ds.map_batches(write_batch, fn_kwargs={"config": config}, batch_format="pyarrow",
                            batch_size=options.rows_per_block, num_cpus=0.5)
        storage.makedirs(results_dir(config.out_dir))
        filesystem, path = storage.resolve(results_dir(config.out_dir))  # OUT may be any storage URI
        ds.write_parquet(path, filesystem=filesystem, schema=RESULT_SCHEMA)
        return {"ray_init_s": round(init_s, 3), "ray_workers": workers, "ray_gpus": gpus}
    finally:
        if owns_cluster:
            ray.shutdown()
