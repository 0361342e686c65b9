"""editflow: batch diffusion image editing (inpainting, SDEdit, RePaint, try-on, makeup).

    import editflow
    out = editflow.edit("photo.jpg", mask="box:10,10,90,90", seed=1)   # .image, .mask, .info
    editor = editflow.Editor(engine="sd")                               # loads once, edits many
    summary = editflow.run("manifest.jsonl", "out/", executor="local")  # .ok, .error, .exit_code
    mask = editflow.make_mask("photo.jpg", "face:lips", task="makeup")

Every error editflow raises on purpose is an `editflow.EditflowError` (editflow/errors.py).
The API (editflow/api.py) is imported on first use, so `import editflow` stays light.
"""

from __future__ import annotations

from typing import Any

from editflow.version import __version__

_API = ("edit", "Editor", "EditOutput", "EditFailed", "make_mask", "run", "plan", "Summary")

__all__ = ["__version__", "EditflowError", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from editflow import api

        return getattr(api, name)
    if name == "EditflowError":
        from editflow.errors import EditflowError

        return EditflowError
    raise AttributeError(f"module 'editflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
