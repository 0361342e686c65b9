"""`editflow models`: the engines, the models each expects, and whether they are on this machine.

Wiring (cli.py): ``add_parser(sub).set_defaults(func=run)``. Never touches the network.

    editflow models                       # table: engine, model, kind, local?, where / how to fetch
    editflow models --engine sd           # one engine
    editflow models --check ./my-sd-dir   # also check given specs (hub ids, folders, files)
    editflow models --json                # machine-readable
    editflow models --markdown            # the README's engine table, from the engine classes
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from editflow.engines import DEFAULT_ENGINE, engine_classes, engine_names
from editflow.models import hub_cache_dir, is_offline, model_entry

__all__ = ["add_parser", "run", "list_models"]


def list_models(extra: list[str] | None = None) -> list[dict[str, Any]]:
    """One entry per (engine, model) the engine classes declare: engine, model, kind, default,
    available, where, fetch; then one per spec in `extra`."""
    entries: list[dict[str, Any]] = []
    for engine in engine_names():
        seen: set[str] = set()
        infos = [info for name, _, cls in engine_classes() if name == engine for info in cls.models
                 if not (info.id in seen or seen.add(info.id))]
        if not infos:
            entries.append({"engine": engine, "model": None, "kind": "no weights", "default": True,
                            "available": True, "where": "", "fetch": ""})
        for i, info in enumerate(infos):
            entries.append(model_entry(engine, info.id, info.kind, i == 0))
    for spec in extra or []:
        entries.append(model_entry("?", spec, "given", False))
    return entries


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "models", help="list engines, the models they expect and whether they are available locally",
        description="List every engine, the models it is known to work with (the first is its default) and "
                    "whether their weights are on this machine (Hugging Face cache or local path), with the "
                    "command that fetches a missing one. Never uses the network.",
    )
    parser.add_argument("--engine", default=None, help="only this engine")
    parser.add_argument("--check", action="append", default=[], metavar="MODEL",
                        help="also check this model spec (hub id[@revision], folder or .safetensors); repeatable")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--markdown", action="store_true",
                        help="print the README's engine table (from the engine classes' declarations) and exit")
    return parser


def engine_table_markdown() -> str:
    """The README's engine table: one line per engine class in the engine table, from its declarations."""
    lines = ["| engine | weights | tasks | what it does |", "|---|---|---|---|"]
    names_seen: set[str] = set()
    for name, tasks, cls in engine_classes():
        label = f"`{name}`" + (" (default)" if name == DEFAULT_ENGINE and name not in names_seen else "")
        if name in names_seen:
            label += f" for `{'`, `'.join(tasks)}`"
        names_seen.add(name)
        lines.append(f"| {label} | {cls.weights} | {', '.join(tasks)} | {cls.summary} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.markdown:
        print(engine_table_markdown(), end="")
        return 0
    entries = list_models(extra=list(args.check or []))
    if args.engine:
        entries = [e for e in entries if e["engine"] in (args.engine, "?")]
        if not any(e["engine"] == args.engine for e in entries):
            print(f"editflow: unknown engine {args.engine!r}; engines: {', '.join(engine_names())}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps({"hub_cache": str(hub_cache_dir()), "offline": is_offline(), "models": entries}, indent=2))
        return 0
    print(f"hub cache: {hub_cache_dir()}  (offline: {'yes' if is_offline() else 'no'})")
    header = ("engine", "model", "kind", "local")
    rows = []
    for e in entries:
        model = e["model"] or "-"
        if e["default"] and e["model"]:
            model += " (default)"
        local = "n/a" if not e["model"] else ("yes" if e["available"] else "no")
        rows.append((e["engine"], model, e["kind"], local))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("{:<%d}" % w for w in widths)
    print(line.format(*header))
    for e, r in zip(entries, rows):
        print(line.format(*r))
        if e["model"] and e["available"] and e.get("where"):
            print(" " * (widths[0] + 2) + f"at {e['where']}")
        elif e["model"] and not e["available"]:
            hint = f"fetch: {e['fetch']}" if e.get("fetch") else e.get("detail", "")
            print(" " * (widths[0] + 2) + hint)
    return 0
