"""Ray placement for GPU engines (issue 12), on a machine without GPUs.

The plan is checked on a CPU-only cluster (the edit actors of `sd` rows ask for GPUs even though
none exist yet: an autoscaler would start GPU nodes), then a run goes end to end on a local
cluster that declares one logical GPU (Ray allows `num_gpus` without hardware): two actors at
`gpus_per_worker=0.5` share it and give the same bytes as the local runner.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from editflow.config import RunConfig
from editflow.manifest import read_manifest
from editflow.runners.placement import GPU_WINDOW, local_device, plan_placement
from tests.conftest import write_image, write_jsonl


def test_diffusers_rows_ask_for_gpus_whether_or_not_the_cluster_has_them_now():
    p = plan_placement({"sd"}, None, 4, cluster_gpus=0, embedded=False)
    assert (p.num_gpus, p.workers, p.separate_masks, p.window) == (1.0, 1, True, GPU_WINDOW)
    p = plan_placement({"builtin", "concat"}, "cuda:1", 4, cluster_gpus=2, embedded=False, gpus_per_worker=0.5)
    assert (p.num_gpus, p.workers) == (0.5, 4)
    assert plan_placement({"sd"}, None, 4, 8, False, workers=3).workers == 3
    assert plan_placement({"sd"}, None, 4, 1, False, sam=True).separate_masks is False  # SAM stays on the GPU


@pytest.mark.parametrize("engines,device,gpus,embedded,per_worker", [
    ({"builtin", "opencv"}, None, 4, False, None),  # CPU engines
    ({"sd"}, "cpu", 4, False, None),  # the run pinned the CPU
    ({"sd"}, None, 0, True, None),  # embedded local cluster without GPUs: none will ever come
    ({"sd"}, None, 4, False, 0),  # --gpus-per-worker 0
])
def test_cpu_placement(engines, device, gpus, embedded, per_worker):
    p = plan_placement(engines, device, 4, gpus, embedded, gpus_per_worker=per_worker)
    assert p.num_gpus == 0 and not p.separate_masks and p.window == 4


def test_device_strings_are_local_to_the_actor():
    assert local_device("cuda:1", [3]) == "cuda"  # Ray shows the actor only its GPU, as cuda:0
    assert local_device("cuda", ["0"]) == "cuda"
    assert local_device("cuda:1", []) == "cuda:1"  # not placed by Ray: the driver's numbering holds
    assert local_device("cpu", [0]) == "cpu" and local_device(None, [0]) is None


@pytest.fixture
def sd_manifest(tmp_path: Path, tiny_models) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        write_image(folder / f"p{i}.png", width=64, height=56, seed=40 + i)
    base = {"mask": "box:12,14,52,46", "prompt": "a red cat", "steps": 2, "task": "repaint"}
    rows = [{"id": f"sd-{i}", "image": f"p{i}.png", "engine": "sd", "model": str(tiny_models["sd"]), **base}
            for i in range(3)]
    rows.append({"id": "builtin-0", "image": "p0.png", "engine": "builtin", **base})
    return write_jsonl(folder / "manifest.jsonl", rows)


def _ops(ds) -> dict[str, dict]:
    """name -> ray remote args of every map operator in a lazy Ray Data plan."""
    out, op = {}, ds._logical_plan.dag
    while op is not None:
        out[op.name] = dict(getattr(op, "ray_remote_args", None) or {})
        op = op.input_dependencies[0] if op.input_dependencies else None
    return out


def test_ray_plan_and_fake_gpu_run(tmp_path, sd_manifest):
    import ray

    from editflow.runners.local import run_local
    from editflow.runners.ray import RayOptions, build_dataset, plan_for, run_ray
    from editflow.results import scan_results

    manifest = read_manifest(str(sd_manifest))
    table: pa.Table = manifest.table
    ray.init(address="local", num_cpus=3, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        # a CPU-only cluster as the driver sees it: GPU engines still ask for GPUs
        config = RunConfig(out_dir=str(tmp_path / "plan"), base_dir=manifest.base_dir, cpu_threads=1)
        placement = plan_for(table, config, RayOptions(), cluster_gpus=0, embedded=False)
        ops = _ops(build_dataset(table, config, RayOptions(), placement))
        edit = next(args for name, args in ops.items() if "EditActor" in name)
        mask = next(args for name, args in ops.items() if "MaskActor" in name)
        assert edit["num_gpus"] == 1.0 and not mask.get("num_gpus")

        # end to end on the logical GPU: two half-GPU actors, rows as the local runner makes them
        ray_cfg = RunConfig(out_dir=str(tmp_path / "ray"), base_dir=manifest.base_dir, cpu_threads=1)
        info = run_ray(table, ray_cfg, RayOptions(gpus_per_worker=0.5))
        assert (info["ray_gpus_per_worker"], info["ray_workers"]) == (0.5, 2)
    finally:
        ray.shutdown()
    local_cfg = RunConfig(out_dir=str(tmp_path / "local"), base_dir=manifest.base_dir, cpu_threads=1)
    run_local(table.to_pylist(), local_cfg)
    columns = ("id", "status", "finished_at", "output_sha256")  # scan_results reads only the columns asked for
    got, want = (scan_results(tmp_path / name, columns).table for name in ("ray", "local"))
    assert got.column("status").to_pylist() == ["ok"] * 4
    for a, b in zip(sorted(got.to_pylist(), key=lambda r: r["id"]), sorted(want.to_pylist(), key=lambda r: r["id"])):
        assert a["output_sha256"] == b["output_sha256"], a["id"]
