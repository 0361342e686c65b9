"""`run --dry-run` at scale: seconds and peak RSS to read and plan manifests of 10^5 and 10^6 rows.

    .venv/bin/python -m bench.bench_dry_run [--rows 100000 1000000]

The manifest mixes tasks, engines and mask kinds (a few dozen groups), as a catalog run would.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


from editflow.manifest import read_manifest
from editflow.run_plan import make_plan

TASKS = ["inpaint", "sdedit", "repaint", "tryon", "makeup"]
MASKS = ["box:1,1,9,9", None, "face:lips", "garment:upper", "polygon:1,1;5,1;5,5", "full"]
ENGINES = [None, "opencv", "sd", "builtin"]


def manifest(rows: int, folder: Path) -> Path:
    i = pa.array(range(rows))
    table = pa.table({
        "id": pa.array([f"r{n:07d}" for n in range(rows)]),
        "task": pa.array([TASKS[n % len(TASKS)] for n in range(rows)]),
        "image": pa.array([f"persons/p{n % 1000}.jpg" for n in range(rows)]),
        "mask": pa.array([MASKS[n % len(MASKS)] for n in range(rows)]),
        "engine": pa.array([ENGINES[n % len(ENGINES)] for n in range(rows)]),
        "reference": pa.array([f"garments/g{n % 997}.jpg" for n in range(rows)]),
        "category": pa.array(["upper"] * rows),
        "seed": i,
    })
    path = folder / f"m{rows}.parquet"
    pq.write_table(table, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for rows in args.rows:
            path = manifest(rows, Path(folder))
            started = time.perf_counter()
            table = read_manifest(path)
            read_s = time.perf_counter() - started
            result = make_plan(table)
            plan_s = time.perf_counter() - started - read_s
            peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"dry run of {rows:>9,} rows: read manifest {read_s:6.2f} s, plan {plan_s:5.2f} s, "
                  f"{len(result.tasks)} task x engine groups, process peak RSS so far {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
