"""An engine's host step: CPU work on a row that comes before the engine's accelerator work and
needs none of its networks, split off so that it can run where the CPUs are.

The mask stage runs the host step of a row's engine (`HOST_STEPS`, by engine and task) once the row's mask is final; on Ray with GPU edit actors that stage is a pool of CPU actors
apart from them (runners/placement.py). The arrays it returns ride with the row (payload key
``_host``) and reach the engine as `EditRequest.host`. An engine given no host arrays (a direct
`edit_batch` call, the notebook API, a host step that failed) runs the same step itself
(`Engine.with_host`), so a row's bytes do not depend on where the step ran; a row whose step fails
in the mask stage goes on without it and the engine reports the row's error as it always has.

A host step is built once per worker (per step class), so its caches (detectors, prepared
reference faces) live as long as the worker; `close` frees them when the worker ends. Its module
imports no torch, so the CPU actors never load the network stack.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

__all__ = ["HOST_STEPS", "HostStep", "host_step_class"]

#: (engine name, task) -> its host step, as "module:Class" (imported on first use; the modules
#: import no torch, so CPU mask actors never load the network stack). Beside `ENGINES`' lines.
HOST_STEPS: dict[tuple[str, str], str] = {
    ("sd", "makeup"): "editflow.engines.makeup_sd_start:SDMakeupStart",
}


def host_step_class(name: str, task: str) -> type[HostStep] | None:
    """The host step class of engine `name` on `task`, or None when it has none."""
    target = HOST_STEPS.get((name, task))
    if target is None:
        return None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


class HostStep(ABC):
    """CPU work of one engine's rows. Subclasses implement `run`; options are the engine's options."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    @abstractmethod
    def run(self, request: Any) -> dict[str, np.ndarray]:
        """`request` (an `EditRequest`: the engine interface imports this module, not the reverse) ->
        the row's host arrays (name -> array), or raise: the row's error, reported by its engine."""

    def close(self) -> None:
        """Free what the step holds beyond memory (detectors); called when its worker ends."""
