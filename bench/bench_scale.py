"""Scale figures in one run: bookkeeping at 1e5 and 1e6 rows, and end-to-end rows/s on 32 px images.

    python -m bench.bench_scale [--rows 20000] [--bookkeeping 100000,1000000] [--workers 2] [--skip-e2e]

Bookkeeping (each measured in its own subprocess, so its peak RSS is its own):
  - manifest read + validate (a try-on catalog manifest, JSONL and Parquet; images exist, not decoded)
  - catalog build: persons x 1000 garments -> a JSONL manifest (`editflow manifest tryon`)
  - summary of N result rows in ~1000-row Parquet files (`results.summarize`)
  - resume scan of N result rows (`results.prepare_resume`)
Targets: each <= 10 s and <= 1 GiB at 1e6 rows.

End to end: `--rows` rows of the `opencv` engine on 32 px images (a few distinct files), with the
local executor, with Ray, and a bare Python loop doing the same work (read + decode, cv2.inpaint,
two PNG writes), all in this one run. Targets: local >= 0.5x the bare loop, Ray (after start-up)
>= 0.7x local, result files <= rows / 1000 + 2 x workers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

GARMENTS = 1000
IMAGES = 16


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- fixtures (built by the parent, not measured) ------------------------------------------------

def write_catalog_tables(folder: Path, persons: int) -> tuple[Path, Path]:
    """persons.jsonl / garments.jsonl with empty image files that exist (validate checks existence)."""
    (folder / "p").mkdir(parents=True, exist_ok=True)
    (folder / "g").mkdir(parents=True, exist_ok=True)
    with open(folder / "persons.jsonl", "w") as fh:
        for i in range(persons):
            (folder / "p" / f"{i}.png").touch()
            fh.write(json.dumps({"id": f"p{i}", "image": f"p/{i}.png"}) + "\n")
    with open(folder / "garments.jsonl", "w") as fh:
        for i in range(GARMENTS):
            (folder / "g" / f"{i}.png").touch()
            fh.write(json.dumps({"id": f"g{i}", "image": f"g/{i}.png", "category": "upper"}) + "\n")
    return folder / "persons.jsonl", folder / "garments.jsonl"


def write_result_files(out: Path, rows: int, per_file: int = 1000) -> list[str]:
    """Synthetic result Parquet files (RESULT_SCHEMA, ~`per_file` rows each, 1% errors); the ids."""
    from datetime import datetime, timezone

    import pyarrow as pa
    import pyarrow.parquet as pq

    from editflow.results import RESULT_SCHEMA, results_dir

    folder = Path(results_dir(out))
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    template = {name: pa.nulls(per_file, field.type) for name, field in zip(RESULT_SCHEMA.names, RESULT_SCHEMA)}
    status = pa.array(["error" if i % 100 == 0 else "ok" for i in range(per_file)], pa.string())
    template.update(
        task=pa.array(["tryon"] * per_file, pa.string()), status=status,
        error_type=pa.array(["MediaError" if i % 100 == 0 else None for i in range(per_file)], pa.string()),
        error_stage=pa.array(["prepare" if i % 100 == 0 else None for i in range(per_file)], pa.string()),
        error_message=pa.array(["not found" if i % 100 == 0 else None for i in range(per_file)], pa.string()),
        t_edit_s=pa.array([0.01] * per_file, pa.float64()), t_load_s=pa.array([0.001] * per_file, pa.float64()),
        output_sha256=pa.array(["0" * 64] * per_file, pa.string()),
        finished_at=pa.array([now] * per_file, pa.timestamp("us", tz="UTC")),
        run_id=pa.array(["bench"] * per_file, pa.string()),
    )
    ids = []
    for start in range(0, rows, per_file):
        n = min(per_file, rows - start)
        chunk_ids = [f"p{(start + i) // GARMENTS}+g{(start + i) % GARMENTS}" for i in range(n)]
        ids += chunk_ids
        columns = {k: v.slice(0, n) for k, v in template.items()}
        columns["id"] = pa.array(chunk_ids, pa.string())
        columns["output"] = pa.array([f"images/{i}.png" for i in chunk_ids], pa.string())
        pq.write_table(pa.table(columns, schema=RESULT_SCHEMA), folder / f"part-bench-{start // per_file:06d}.parquet")
    return ids


# --- measurements (each in its own process) ------------------------------------------------------

def measure(kind: str, work: Path) -> dict:
    started = time.perf_counter()
    if kind.startswith("validate"):
        from editflow.manifest import read_manifest
        from editflow.media import MediaPolicy
        from editflow.validation import validate_manifest

        suffix = kind.split("-")[1]
        manifest = read_manifest(work / f"catalog.{suffix}")
        counts = validate_manifest(manifest, MediaPolicy(allowed_schemes=frozenset({"file"})))
        detail = f"{counts.ok} ok, {counts.invalid} invalid"
    elif kind == "catalog":
        from editflow.commands.manifest_tryon import build_tryon_manifest

        stats = build_tryon_manifest(work / "persons.jsonl", work / "garments.jsonl", work / "built.jsonl")
        detail = f"{stats.pairs} pairs"
    elif kind == "summary":
        from editflow.results import summarize

        ids = [line for line in (work / "ids.txt").read_text().splitlines()]
        summary = summarize(work / "summary-out", ids, {"run_id": "bench"})
        detail = f"{summary['status']}"
    elif kind == "resume":
        from editflow.results import prepare_resume

        done = prepare_resume(work / "resume-out", "bench-resume")
        detail = f"{len(done)} ok ids"
    else:
        raise SystemExit(f"unknown measurement {kind}")
    return {"seconds": round(time.perf_counter() - started, 2), "peak_rss_mib": round(peak_rss_mib()), "detail": detail}


def in_subprocess(*args: str) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"})
    if result.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bookkeeping(rows: int, tmp: Path) -> None:
    from editflow.commands.manifest_tryon import build_tryon_manifest

    work = tmp / f"book-{rows}"
    work.mkdir()
    persons, garments = write_catalog_tables(work, rows // GARMENTS)
    build_tryon_manifest(persons, garments, work / "catalog.jsonl")
    build_tryon_manifest(persons, garments, work / "catalog.parquet")
    ids = write_result_files(work / "summary-out", rows)
    (work / "ids.txt").write_text("\n".join(ids) + "\n")
    write_result_files(work / "resume-out", rows)
    print(f"\nbookkeeping at {rows:,} rows ({rows // GARMENTS} persons x {GARMENTS} garments; "
          f"{-(-rows // 1000)} result files of ~1000 rows)", flush=True)
    for kind, label in (("validate-jsonl", "manifest read + validate (JSONL)"),
                        ("validate-parquet", "manifest read + validate (Parquet)"),
                        ("catalog", "catalog build -> JSONL"), ("summary", "summary of the result rows"),
                        ("resume", "resume scan of the result rows")):
        figure = in_subprocess("--measure", kind, "--work", str(work))
        verdict = "ok" if figure["seconds"] <= 10 and figure["peak_rss_mib"] <= 1024 else "MISSES <=10 s / <=1 GiB"
        print(f"  {label:40s} {figure['seconds']:7.2f} s  peak RSS {figure['peak_rss_mib']:5d} MiB  "
              f"[{verdict}]  ({figure['detail'][:60]})", flush=True)


# --- end to end -------------------------------------------------------------------------------------

def e2e_manifest(folder: Path, rows: int) -> Path:
    from PIL import Image
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    with open(folder / "m.jsonl", "w") as fh:
        for i in range(rows):
            fh.write(json.dumps({"id": f"row-{i:07d}", "task": "inpaint", "engine": "opencv",
                                 "image": f"img{i % IMAGES}.png", "mask": "box:8,8,24,24"}) + "\n")
    return folder / "m.jsonl"


def bare_loop(manifest: Path, out: Path) -> float:
    """The same work with nothing around it: read + decode, cv2.inpaint, two PNG writes; rows/s."""
    import cv2
    import numpy as np

    out.mkdir(parents=True)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    hole = np.zeros((32, 32), np.uint8)
    hole[8:24, 8:24] = 255
    started = time.perf_counter()
    for row in rows:
        image = cv2.imdecode(np.frombuffer((manifest.parent / row["image"]).read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        filled = cv2.inpaint(image, hole, 5, cv2.INPAINT_TELEA)
        cv2.imwrite(str(out / f"{row['id']}.png"), filled)
        cv2.imwrite(str(out / f"{row['id']}-mask.png"), hole)
    return len(rows) / (time.perf_counter() - started)


def run_executor(manifest: Path, out: Path, executor: str, workers: int) -> dict:
    """One run in this (sub)process: rows/s, rows/s after Ray's start-up, result files, peak RSS."""
    from editflow.config import RunConfig
    from editflow.manifest import read_manifest
    from editflow.manifest_index import index_manifest
    from editflow.runners.driver import run_manifest

    started = time.perf_counter()
    source = index_manifest(manifest) if executor == "ray" else read_manifest(manifest)
    summary = run_manifest(source, RunConfig(out_dir=str(out), base_dir=source.base_dir), executor=executor,
                           workers=workers, rows_per_block=64, progress=False)
    wall = time.perf_counter() - started
    rows = summary["rows"]
    assert summary["status"]["ok"] == rows, summary["status"]
    startup = summary.get("ray_init_s", 0.0)
    return {"rows_per_s": rows / wall, "rows_per_s_after_start": rows / max(1e-9, wall - startup),
            "result_files": summary["result_files"], "peak_rss_mib": round(peak_rss_mib()), "startup_s": startup}


def end_to_end(rows: int, workers: int, tmp: Path) -> None:
    manifest = e2e_manifest(tmp / "e2e", rows)
    print(f"\nend to end: {rows:,} rows, opencv engine, 32 px images ({IMAGES} distinct files), "
          f"{os.cpu_count()} CPUs", flush=True)
    bare = bare_loop(manifest, tmp / "bare")
    print(f"  bare loop (decode, cv2.inpaint, 2 PNG writes)  {bare:8.1f} rows/s", flush=True)
    local = in_subprocess("--run", "local", "--manifest", str(manifest), "--out", str(tmp / "local"),
                          "--workers", str(workers))
    print(f"  local executor  {local['rows_per_s']:8.1f} rows/s = {local['rows_per_s'] / bare:.2f}x bare "
          f"[target >= 0.5x]; {local['result_files']} result files; driver peak RSS {local['peak_rss_mib']} MiB",
          flush=True)
    ray = in_subprocess("--run", "ray", "--manifest", str(manifest), "--out", str(tmp / "ray"), "--workers", str(workers))
    limit = rows // 1000 + 2 * workers
    print(f"  ray executor    {ray['rows_per_s']:8.1f} rows/s overall, {ray['rows_per_s_after_start']:.1f} rows/s after "
          f"{ray['startup_s']:.1f} s start-up = {ray['rows_per_s_after_start'] / local['rows_per_s']:.2f}x local "
          f"[target >= 0.7x]; {ray['result_files']} result files [target <= {limit}]; "
          f"driver peak RSS {ray['peak_rss_mib']} MiB ({workers} edit actors)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="end-to-end rows (default 20000)")
    parser.add_argument("--bookkeeping", default="100000,1000000", help="row counts for the bookkeeping figures")
    parser.add_argument("--workers", type=int, default=2, help="Ray edit actors (default 2)")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.measure:
        print(json.dumps(measure(args.measure, Path(args.work))))
        return
    if args.run:
        print(json.dumps(run_executor(Path(args.manifest), Path(args.out), args.run, args.workers)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for rows in [int(n) for n in args.bookkeeping.split(",") if n.strip()]:
            bookkeeping(rows, Path(tmp))
        if not args.skip_e2e:
            end_to_end(args.rows, args.workers, Path(tmp))


if __name__ == "__main__":
    main()
