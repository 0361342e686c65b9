"""Editing engines, one file each, found by name (and task) through `engine_target`."""

from __future__ import annotations

import importlib

from editflow.engines.base import EditRequest, EditResult, Engine, EngineError

#: engine name -> "module:Class"; modules import lazily so a missing optional stack stays a row error.
ENGINES: dict[str, str] = {
    "builtin": "editflow.engines.builtin:BuiltinEngine",
    "opencv": "editflow.engines.opencv:OpenCVEngine",
    "sd": "editflow.engines.sd:SDEngine",
    "ddpm": "editflow.engines.ddpm:DDPMEngine",
}

#: (engine name, task) -> "module:Class" where a task has its own implementation under a name:
#: try-on and makeup are conditioned on a reference, so `builtin` and `sd` mean other classes there.
TASK_ENGINES: dict[tuple[str, str], str] = {
    ("builtin", "tryon"): "editflow.engines.tryon:BuiltinTryOnEngine",
    ("builtin", "makeup"): "editflow.engines.makeup:BuiltinMakeupEngine",
    ("sd-ipadapter", "tryon"): "editflow.engines.tryon_sd:SDIPAdapterTryOnEngine",
    ("concat", "tryon"): "editflow.engines.tryon_sd:ConcatTryOnEngine",
    ("sd", "makeup"): "editflow.engines.makeup_sd:SDMakeupEngine",
}

DEFAULT_ENGINE = "builtin"


def engine_names() -> list[str]:
    """Every engine name a row may give."""
    return sorted(set(ENGINES) | {name for name, _ in TASK_ENGINES})


def engine_target(name: str, task: str | None = None) -> str:
    """The "module:Class" that runs `task` for engine `name`."""
    if task is not None and (name, task) in TASK_ENGINES:
        return TASK_ENGINES[(name, task)]
    if name in ENGINES:
        return ENGINES[name]
    tasks = sorted(t for n, t in TASK_ENGINES if n == name)
    if tasks:
        raise EngineError(f"engine {name!r} runs only {', '.join(tasks)}, not {task}")
    raise EngineError(f"unknown engine {name!r}; known engines: {', '.join(engine_names())}")


def get_engine_class(name: str, task: str | None = None) -> type[Engine]:
    """Return the engine class that runs `task` for engine `name`."""
    module_name, class_name = engine_target(name, task).split(":")
    return getattr(importlib.import_module(module_name), class_name)


__all__ = [
    "DEFAULT_ENGINE", "ENGINES", "TASK_ENGINES", "EditRequest", "EditResult", "Engine", "EngineError",
    "engine_names", "engine_target", "get_engine_class",
]
