"""How `editflow report` scales: time, peak memory and page weight for 10,000 and 100,000 rows.

Writes fake runs under bench/out/report-<N>/ (result files of 1,000 rows that point at a few real
images, so thumbnails are few and the figures are the report's own reading and rendering), builds
each report in a fresh process and prints its figures and the large/small ratios.

    python -m bench.bench_report [--rows 100000] [--page-size 200]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"


def make_run(out: Path, rows: int) -> None:
    """A results folder of ``rows`` fake rows over four real images, 1 in 50 an error."""
    from editflow.media import sha256_hex
    from editflow.results import to_result_table

    shutil.rmtree(out, ignore_errors=True)
    for folder in ("images", "masks", "results", "inputs"):
        (out / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    groups = []
    for g in range(4):
        pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(out / "inputs" / f"in{g}.png")
        Image.fromarray(255 - pixels).save(out / "images" / f"out{g}.png")
        mask = np.zeros((256, 256), np.uint8)
        mask[64:192, 64:192] = 255
        Image.fromarray(mask).save(out / "masks" / f"m{g}.png")
        groups.append({"image": str(out / "inputs" / f"in{g}.png"), "output": f"images/out{g}.png",
                       "mask_output": f"masks/m{g}.png",
                       "input_sha256": sha256_hex((out / "inputs" / f"in{g}.png").read_bytes()),
                       "output_sha256": sha256_hex((out / "images" / f"out{g}.png").read_bytes())})
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for lo in range(0, rows, 1000):
        records = []
        for i in range(lo, min(rows, lo + 1000)):
            group = groups[i % 4]
            base = {"id": f"row-{i:06d}", "task": ("inpaint", "repaint", "sdedit")[i % 3], "engine": "builtin",
                    "model": "patch-prior", "seed": i, "steps": 20, "strength": 1.0, "nfe": 28, "width": 256,
                    "height": 256, "image": group["image"], "input_sha256": group["input_sha256"],
                    "mask_spec": "box:64,64,192,192", "t_load_s": 0.01, "t_mask_s": 0.001, "t_edit_s": 1.2,
                    "t_write_s": 0.02, "finished_at": when + timedelta(seconds=i % 4)}
            if i % 50 == 0:
                records.append({**base, "status": "error", "error_stage": "edit", "error_type": "RuntimeError",
                                "error_message": "CUDA out of memory (fake)"})
            else:
                records.append({**base, "status": "ok", "output": group["output"], "mask_output": group["mask_output"],
                                "output_sha256": group["output_sha256"], "finished_at": when + timedelta(seconds=i % 4)})
        pq.write_table(to_result_table(records), out / "results" / f"part-{lo // 1000:04d}.parquet")


def child(out: Path, page_size: int) -> None:
    """Build one report in this process and print its figures as JSON."""
    from editflow.report import build_report

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    report = build_report(str(out), page_size=page_size)
    wall = time.perf_counter() - started
    pages = sorted((out / "report").glob("*.html"), key=lambda p: p.stat().st_size)
    print(json.dumps({
        "rows": report.rows, "pages": report.pages, "wall_s": round(wall, 2), "rows_per_s": round(report.rows / wall),
        "peak_rss_growth_mib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, 1),
        "index_kib": round((out / "report" / "index.html").stat().st_size / 1024, 1),
        "largest_page_kib": round(pages[-1].stat().st_size / 1024, 1), "thumbs_written": report.thumbs_written,
    }))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=200)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child), args.page_size)
        return
    figures = []
    for rows in (args.rows // 10, args.rows):
        out = OUT / f"report-{rows}"
        make_run(out, rows)
        result = subprocess.run([sys.executable, __file__, "--child", str(out), "--page-size", str(args.page_size)],
                                capture_output=True, text=True, check=True)
        figures.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"report of {rows} rows: {figures[-1]}")
    small, large = figures
    print(f"10x the rows: {large['wall_s'] / small['wall_s']:.2f}x the time, "
          f"peak RSS growth {small['peak_rss_growth_mib']} -> {large['peak_rss_growth_mib']} MiB, "
          f"largest page {small['largest_page_kib']} -> {large['largest_page_kib']} KiB")


if __name__ == "__main__":
    main()
