"""Where the edit work runs on Ray: accelerators by the rows' engines, device strings per actor.

* The edit actors ask for ``num_gpus`` when any row's engine is a diffusers engine (`GPU_ENGINES`)
  and the run's device is not the CPU (``--device cpu``), whether or not GPU nodes exist yet: an
  autoscaling cluster whose GPU nodes are at zero starts them for the pending actors. Only an
  embedded local cluster without GPUs (nothing will ever add one) runs them on the CPU.
* ``gpus_per_worker`` may be a fraction (0.5: two actors share a GPU, so one's CPU work, decoding
  and encoding overlap the other's GPU work).
* With GPU actors, the mask stage runs apart in CPU actors (its geometric and landmark masks
  need no GPU), unless SAM is configured (SAM wants the accelerator, so it stays with the edit).
* A device string is the driver's (``--device cuda:1``); inside an actor Ray exposes only the
  actor's GPUs (CUDA_VISIBLE_DEVICES), numbered from 0, so `local_device` maps it to ``cuda``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: engines whose rows want an accelerator (diffusers networks); the others are CPU engines.
GPU_ENGINES = frozenset({"sd", "sd-ipadapter", "concat", "ddpm"})
#: rows per edit-actor batch when the actors have GPUs: the window in which rows of one engine,
#: model, size and settings are grouped into one micro-batched call.
GPU_WINDOW = 32


@dataclass(frozen=True)
class Placement:
    """Resources of the edit actors and how the stages are laid out."""

    num_gpus: float
    workers: int
    separate_masks: bool
    window: int  # rows per edit-actor batch

    @property
    def uses_gpu(self) -> bool:
        return self.num_gpus > 0


def wants_gpu(engines: set[str], device: str | None) -> bool:
    """True when some row's engine runs on an accelerator and the run did not pin the CPU."""
    if device and not str(device).startswith("cuda"):
        return False  # cpu, mps (no Ray GPU resource)
    return bool(engines & GPU_ENGINES)


def plan_placement(engines: set[str], device: str | None, batch_size: int, cluster_gpus: float,
                   embedded: bool, workers: int | None = None, gpus_per_worker: float | None = None,
                   sam: bool = False) -> Placement:
    """The edit actors' GPU request, count and batch window for a run.

    `engines`: the engine names of the rows (the run's default for rows naming none);
    `cluster_gpus`: GPUs the cluster has now (may be 0 on an autoscaling cluster);
    `embedded`: an embedded local cluster (no autoscaler: GPUs that are not there never come).
    """
    per_worker = 1.0 if gpus_per_worker is None else float(gpus_per_worker)
    if per_worker < 0:
        raise ValueError(f"gpus_per_worker must be >= 0, got {per_worker}")
    gpu = per_worker > 0 and wants_gpu(engines, device) and not (embedded and cluster_gpus <= 0)
    if not gpu:
        return Placement(0.0, max(1, workers or 1), False, max(1, batch_size))
    count = workers or max(1, int(cluster_gpus // per_worker))  # none yet: 1, the autoscaler adds nodes
    return Placement(per_worker, max(1, count), not sam, max(GPU_WINDOW, batch_size))


def local_device(device: str | None, gpu_ids: list) -> str | None:
    """The driver's device string as seen inside an actor that Ray gave `gpu_ids`."""
    if device and str(device).startswith("cuda") and gpu_ids:
        return "cuda"  # the actor's first visible GPU, whatever the driver called it
    return device
