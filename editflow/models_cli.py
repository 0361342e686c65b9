"""`editflow models`: the engines, the models each expects, and whether they are on this machine.

Wiring (cli.py): ``models_cli.add_parser(sub)`` while building the subparsers, and
``return models_cli.run(args)`` when ``args.command == "models"``. Never touches the network.

    editflow models                       # table: engine, model, kind, local?, where / how to fetch
    editflow models --engine sd           # one engine
    editflow models --check ./my-sd-dir   # also check given specs (hub ids, folders, files)
    editflow models --json                # machine-readable
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from editflow.models import hub_cache_dir, is_offline, list_models

__all__ = ["add_parser", "run"]


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
    return parser


def run(args: argparse.Namespace) -> int:
    entries = list_models(extra=list(args.check or []))
    if args.engine:
        entries = [e for e in entries if e["engine"] in (args.engine, "?")]
        if not any(e["engine"] == args.engine for e in entries):
            from editflow.engines import engine_names

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
