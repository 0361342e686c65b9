"""Catalog try-on pairs per second with the builtin engine, with and without the worker caches.

    python -m bench.bench_catalog [--executor local|ray]

The sample catalog (manifests/catalog: 3 persons x 4 garments = 12 pairs) runs twice in one
process: with the per-person mask cache and per-garment encoding cache (the default), and with
both turned off (RunConfig.cache=False), so every pair re-detects its person and re-prepares its
garment.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from editflow.commands.manifest_tryon import build_tryon_manifest
from editflow.config import RunConfig
from editflow.manifest import read_manifest
from editflow.runners.driver import run_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executor", default="local", choices=("local", "ray"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    catalog = REPO / "manifests" / "catalog"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "catalog.jsonl"
        stats = build_tryon_manifest(catalog / "persons.jsonl", catalog / "garments.jsonl", path)
        manifest = read_manifest(path)
        # warm-up: first imports and model initialisation would otherwise count against one side
        run_manifest(manifest, RunConfig(out_dir=f"{tmp}/warm", base_dir=manifest.base_dir), executor=args.executor,
                     workers=1, progress=False)
        figures = {}
        for cache in (True, False):
            config = RunConfig(out_dir=f"{tmp}/out-{cache}", base_dir=manifest.base_dir, cache=cache)
            started = time.perf_counter()
            summary = run_manifest(manifest, config, executor=args.executor, workers=1, progress=False)
            wall = time.perf_counter() - started
            assert summary["status"]["ok"] == len(manifest), summary
            figures[cache] = (wall, len(manifest) / wall, summary["timings"])
    print(f"catalog: {stats.persons} persons x {stats.garments} garments = {stats.pairs} pairs, builtin engine, "
          f"{args.executor} executor, {os.cpu_count()} CPUs")
    for cache, (wall, rate, timings) in figures.items():
        print(f"  caches {'on ' if cache else 'off'}: {rate:.2f} pairs/s ({wall:.1f} s wall; mask {timings['t_mask_s']['total']:.2f} s, "
              f"edit {timings['t_edit_s']['total']:.2f} s in total)")
    print(f"  speed-up from caching: {figures[True][1] / figures[False][1]:.2f}x")


if __name__ == "__main__":
    main()
