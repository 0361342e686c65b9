"""Editing engines, one file each, found by name through `get_engine_class`."""

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

DEFAULT_ENGINE = "builtin"


def get_engine_class(name: str) -> type[Engine]:
    """Return the engine class registered under `name`."""
    try:
        target = ENGINES[name]
    except KeyError:
        raise EngineError(f"unknown engine {name!r}; known engines: {', '.join(sorted(ENGINES))}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


__all__ = ["DEFAULT_ENGINE", "ENGINES", "EditRequest", "EditResult", "Engine", "EngineError", "get_engine_class"]
