"""Editing engines, one file each, found by (engine name, task) in `ENGINES`.

The table is the one place that says which class runs a task for a name. Each class declares the
rest itself: `tasks`, `models` (the first is the default), `Params` (its row params, defaults and
docs) and `summary`. Adding an engine is one class and one line per task here.
"""

from __future__ import annotations

import importlib

from editflow.engines.host import HOST_STEPS, host_step_class
from editflow.engines.base import EditRequest, EditResult, Engine, EngineError
from editflow.tasks import TASKS

_BUILTIN = "editflow.engines.builtin:BuiltinEngine"
_OPENCV = "editflow.engines.opencv:OpenCVEngine"
_SD = "editflow.engines.sd:SDEngine"
_DDPM = "editflow.engines.ddpm:DDPMEngine"

#: (engine name, task) -> the class that runs it, as "module:Class" (imported on first use, so a
#: missing optional stack stays a row error) or the class itself.
ENGINES: dict[tuple[str, str], str | type[Engine]] = {
    ("builtin", "inpaint"): _BUILTIN,
    ("builtin", "sdedit"): _BUILTIN,
    ("builtin", "repaint"): _BUILTIN,
    ("builtin", "tryon"): "editflow.engines.tryon:BuiltinTryOnEngine",
    ("builtin", "makeup"): "editflow.engines.makeup:BuiltinMakeupEngine",
    ("opencv", "inpaint"): _OPENCV,
    ("opencv", "sdedit"): _OPENCV,
    ("opencv", "repaint"): _OPENCV,
    ("sd", "inpaint"): _SD,
    ("sd", "sdedit"): _SD,
    ("sd", "repaint"): _SD,
    ("sd", "makeup"): "editflow.engines.makeup_sd:SDMakeupEngine",
    ("ddpm", "inpaint"): _DDPM,
    ("ddpm", "sdedit"): _DDPM,
    ("ddpm", "repaint"): _DDPM,
    ("sd-ipadapter", "tryon"): "editflow.engines.tryon_sd:SDIPAdapterTryOnEngine",
    ("concat", "tryon"): "editflow.engines.tryon_sd:ConcatTryOnEngine",
}

DEFAULT_ENGINE = "builtin"


def engine_names() -> list[str]:
    """Every engine name a row may give."""
    return sorted({name for name, _ in ENGINES})


def engine_tasks(name: str) -> list[str]:
    """The tasks engine `name` runs, in the manifest's task order."""
    return [t for t in TASKS if (name, t) in ENGINES]


def engine_target(name: str, task: str | None = None) -> str | type[Engine]:
    """The class (or "module:Class") that runs `task` for engine `name`; no task: its first task's."""
    tasks = engine_tasks(name)
    if not tasks:
        raise EngineError(f"unknown engine {name!r}; known engines: {', '.join(engine_names())}")
    if task is None:
        task = tasks[0]
    if (name, task) not in ENGINES:
        raise EngineError(f"engine {name!r} runs only {', '.join(tasks)}, not {task}")
    return ENGINES[(name, task)]


def load_class(target: str | type[Engine]) -> type[Engine]:
    """A table entry -> the engine class (importing its module on first use)."""
    if isinstance(target, str):
        module_name, class_name = target.split(":")
        return getattr(importlib.import_module(module_name), class_name)
    return target


def get_engine_class(name: str, task: str | None = None) -> type[Engine]:
    """Return the engine class that runs `task` for engine `name`."""
    return load_class(engine_target(name, task))


def engine_classes() -> list[tuple[str, list[str], type[Engine]]]:
    """(engine name, tasks, class) for every distinct class in the table, in table order."""
    seen: dict[tuple[str, object], list[str]] = {}
    for (name, task), target in ENGINES.items():
        seen.setdefault((name, target), []).append(task)
    return [(name, tasks, load_class(target)) for (name, target), tasks in seen.items()]


__all__ = [
    "DEFAULT_ENGINE", "ENGINES", "HOST_STEPS", "TASKS", "EditRequest", "EditResult", "Engine", "EngineError",
    "engine_classes", "engine_names", "engine_tasks", "engine_target", "get_engine_class", "host_step_class",
    "load_class",
]
