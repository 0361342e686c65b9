"""Rows/s of the demo manifest with the local and the Ray executor, and Ray's start-up time.

    python -m bench.bench_runners [--repeat N] [--engine builtin|opencv] [--workers W]

The manifest is the demo's rows repeated N times (fresh ids), so steady-state throughput shows
beside Ray's fixed costs. Both executors run in this one process, one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from editflow.config import RunConfig
from editflow.manifest import read_manifest
from editflow.runners.driver import run_manifest


def repeated_manifest(folder: Path, repeat: int) -> Path:
    rows = [json.loads(line) for line in (REPO / "manifests" / "demo.jsonl").read_text().splitlines() if line.strip()]
    path = folder / "bench.jsonl"
    with open(path, "w") as fh:
        for i in range(repeat):
            for row in rows:
                row = dict(row, id=f"{row['id']}-{i}")
                for key in ("image", "reference"):  # the copy lives elsewhere: absolute paths
                    if row.get(key):
                        row[key] = str(REPO / "manifests" / row[key])
                fh.write(json.dumps(row) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--engine", default="builtin")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = read_manifest(repeated_manifest(Path(tmp), args.repeat))
        figures = {}
        for executor in ("local", "ray"):
            config = RunConfig(out_dir=f"{tmp}/{executor}", base_dir=manifest.base_dir, engine=args.engine)
            started = time.perf_counter()
            summary = run_manifest(manifest, config, executor=executor, workers=args.workers, progress=False)
            wall = time.perf_counter() - started
            assert summary["status"]["ok"] == len(manifest), summary
            figures[executor] = {"wall_s": wall, "rows_per_s": len(manifest) / wall,
                                 "ray_init_s": summary.get("ray_init_s")}
    print(f"demo manifest x{args.repeat} = {len(manifest)} rows, engine {args.engine}, {os.cpu_count()} CPUs")
    for executor, f in figures.items():
        extra = f", ray start-up {f['ray_init_s']:.2f} s" if f["ray_init_s"] is not None else ""
        print(f"  {executor:5s}: {f['rows_per_s']:.2f} rows/s ({f['wall_s']:.1f} s wall{extra})")
    print(f"  ray/local throughput ratio: {figures['ray']['rows_per_s'] / figures['local']['rows_per_s']:.2f}")


if __name__ == "__main__":
    main()
