"""Typed row params: each engine's `Params` dataclass is the one home of its row options' defaults and docs.

A row's ``params`` (a JSON object) is parsed into the engine's `Params` before any work: an
unknown key is that row's error naming the valid keys, a value of the wrong type names the key and
the type it expects. Subclass `EngineParams` and declare fields with `param(default, doc)`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar, Union

from editflow.errors import EditflowError

__all__ = ["EngineParams", "ParamsError", "param", "param_docs"]

P = TypeVar("P", bound="EngineParams")


class ParamsError(EditflowError, ValueError):
    """A row's params do not fit its engine: an unknown key or a value of the wrong type."""


def param(default: Any, doc: str) -> Any:
    """A params field: its default and one line saying what it does."""
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class EngineParams:
    """Row params every engine accepts: the mask stage reads these too."""

    face: str | int | None = param(None, "which face the face masks (and makeup) use: largest, all or an index")
    dress_length: str | None = param(None, "garment:dress mask length: knee or ankle")
    sleeve: str | None = param(None, "garment masks' sleeves: long or short")

    @classmethod
    def parse(cls: type[P], params: dict[str, Any] | None, engine: str = "") -> P:
        """`params` checked against this class's fields; ParamsError names the key that does not fit."""
        params = dict(params or {})
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        who = f"engine {engine}" if engine else cls.__name__
        unknown = sorted(k for k in params if k not in hints)
        if unknown:
            raise ParamsError(f"unknown params key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                              f"for {who}; valid keys: {', '.join(sorted(names))}")
        for key, value in params.items():
            if not _fits(value, hints[key]):
                raise ParamsError(f"params.{key} must be {_type_name(hints[key])}, got {type(value).__name__} "
                                  f"{_short(value)} ({who})")
        return cls(**params)

    def given(self) -> dict[str, Any]:
        """The fields that differ from their defaults (what a row changed)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not _same(getattr(self, f.name), f.default)}


def param_docs(cls: type[EngineParams]) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, doc) of every field, for docs and `editflow models`."""
    hints = typing.get_type_hints(cls)
    return [(f.name, _type_name(hints[f.name]), f.default, f.metadata.get("doc", ""))
            for f in dataclasses.fields(cls)]


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a is b or a == b)
    except Exception:  # arrays compare elementwise
        return False


def _fits(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        (arg, *_) = typing.get_args(tp) or (Any,)
        return isinstance(value, (list, tuple)) and all(_fits(v, arg) for v in value)
    if origin is dict:
        key_type, value_type = typing.get_args(tp) or (Any, Any)
        return isinstance(value, dict) and all(_fits(k, key_type) and _fits(v, value_type) for k, v in value.items())
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "any value"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if tp in names:
        return names[tp]
    if origin in (list, tuple):
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return f"an object of {_type_name(typing.get_args(tp)[1]).removeprefix('a ').removeprefix('an ')}s"
    return getattr(tp, "__name__", str(tp))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
