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
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa

from editflow import logs, storage
from editflow.config import RunConfig
from editflow.manifest import RAW_SCHEMA
from editflow.results import RESULT_SCHEMA, results_dir, to_result_table
from editflow.runners.payload import rows_to_table, table_to_rows
from editflow.runners.placement import Placement, local_device, plan_placement
from editflow.runners.stages import EditStage, MaskStage, PrepareStage, WriteStage, close_stages, new_row


@dataclass
class RayOptions:
    """Cluster and pool sizing. `workers` = edit actors (defaults: GPUs / gpus_per_worker, or 1)."""

    workers: int | None = None
    rows_per_block: int = 8
    num_cpus: int | None = None  # embedded cluster only
    #: GPUs per edit actor for diffusers engines (fractions share a GPU); 0 = never ask for GPUs
    gpus_per_worker: float | None = None


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


class MaskActor:
    """The mask stage on CPU actors (landmark models and mask caches load once per actor)."""

    def __init__(self, config: RunConfig) -> None:
        self.mask = MaskStage(config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return rows_to_table(self.mask(table_to_rows(batch)))

    def __del__(self) -> None:  # Ray Data deletes the UDF when the pool shuts down gracefully
        close_stages([self.mask, self.edit])


def write_batch(batch: pa.Table, config: RunConfig) -> pa.Table:
    return to_result_table(WriteStage(config)(table_to_rows(batch)))


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


def run_ray(raw_table: pa.Table, config: RunConfig, options: RayOptions) -> dict[str, Any]:
    """Edit every row of `raw_table` (RAW_SCHEMA) on Ray; result files land in OUT/results."""
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
        placement = plan_for(raw_table, config, options, gpus, embedded=owns_cluster)
        ds = build_dataset(raw_table, config, options, placement)
        storage.makedirs(results_dir(config.out_dir))
        filesystem, path = storage.resolve(results_dir(config.out_dir))  # OUT may be any storage URI
        ds.write_parquet(path, filesystem=filesystem, schema=RESULT_SCHEMA)
        return {"ray_init_s": round(init_s, 3), "ray_workers": placement.workers, "ray_gpus": gpus,
                "ray_gpus_per_worker": placement.num_gpus}
    finally:
        if owns_cluster:
            ray.shutdown()


def row_engines(raw_table: pa.Table, config: RunConfig) -> set[str]:
    """The engine names the rows use (the run's default where a row names none)."""
    import pyarrow.compute as pc

    if "engine" not in raw_table.column_names:
        return {config.engine}
    names = pc.unique(raw_table.column("engine")).to_pylist()
    return {str(n).strip() if n not in (None, "") else config.engine for n in names}


def plan_for(raw_table: pa.Table, config: RunConfig, options: RayOptions, cluster_gpus: float,
             embedded: bool) -> Placement:
    return plan_placement(row_engines(raw_table, config), config.device, config.batch_size, cluster_gpus,
                          embedded, options.workers, options.gpus_per_worker, sam=bool(config.sam_checkpoint))


def build_dataset(raw_table: pa.Table, config: RunConfig, options: RayOptions, placement: Placement) -> Any:
    """The lazy Ray Data plan: prepare -> [mask] -> edit -> write (nothing runs until it is consumed)."""
    import ray

    ds = ray.data.from_arrow(raw_table.cast(RAW_SCHEMA))
    ds = ds.repartition(target_num_rows_per_block=max(1, options.rows_per_block))
    ds = ds.map_batches(prepare_batch, fn_kwargs={"config": config}, batch_format="pyarrow",
                        batch_size=options.rows_per_block, num_cpus=0.5)
    if placement.separate_masks:  # CPU work apart from the GPU actors
        ds = ds.map_batches(
            MaskActor, fn_constructor_kwargs={"config": config}, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, 2 * placement.workers)),
            batch_size=options.rows_per_block, num_cpus=1,
        )
    # GPU actors take a window of rows per call; the engine groups it by size and settings
    edit_config = replace(config, batch_size=placement.window) if placement.uses_gpu else config
    ds = ds.map_batches(
        EditActor, fn_constructor_kwargs={"config": edit_config, "masks": not placement.separate_masks},
        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(min_size=1, max_size=placement.workers),
        batch_size=placement.window, num_gpus=placement.num_gpus, num_cpus=1,
    )
    return ds.map_batches(write_batch, fn_kwargs={"config": config}, batch_format="pyarrow",
                          batch_size=options.rows_per_block, num_cpus=0.5)
