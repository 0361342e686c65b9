"""Runs from S3 to S3 against a real S3 server (moto's standalone server on 127.0.0.1).

Manifest, inputs, mask files and OUT all live in one bucket; the AWS_* variables point at the server
the standard way, so the embedded Ray cluster's workers see them too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from editflow import cli, storage
from editflow.results import results_dir, scan_results
from editflow.runners import local as local_runner
from tests.conftest import REPO, textured_image


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def put_manifest(bucket: str, rows: int, *, images: int = 8) -> str:
    """`rows` opencv rows over `images` 32 px photos, relative paths, manifest at s3://bucket/in/m.parquet."""
    for i in range(images):
        storage.write_bytes(f"{bucket}/in/img/p{i}.png", png_bytes(textured_image(32, 32, seed=i)))
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    storage.write_bytes(f"{bucket}/in/masks/m.png", png_bytes(mask))
    table = pa.table({
        "id": [f"row-{i:05d}" for i in range(rows)],
        "task": ["inpaint"] * rows,
        "image": [f"img/p{i % images}.png" for i in range(rows)],
        "mask": ["masks/m.png" if i % 3 == 0 else "box:4,4,20,20" for i in range(rows)],
        "engine": ["opencv"] * rows,
    })
    filesystem, path = storage.resolve(f"{bucket}/in/m.parquet")
    pq.write_table(table, path, filesystem=filesystem)
    return f"{bucket}/in/m.parquet"


def raw_result_rows_of(location: str) -> list[dict]:
    filesystem, path = storage.resolve(location)
    return pq.read_table(path, filesystem=filesystem).to_pylist()


def raw_result_rows(out: str) -> list[dict]:
    """Every row of every result file on S3, without deduplication."""
    rows = []
    for location in storage.list_files(results_dir(out), ".parquet"):
        filesystem, path = storage.resolve(location)
        rows.extend(pq.read_table(path, filesystem=filesystem).to_pylist())
    return rows


def check_exactly_once(out: str, ids: list[str]) -> list[dict]:
    """Every id exactly once in OUT/results; every ok row's image exists on S3 and hashes right."""
    rows = raw_result_rows(out)
    assert sorted(r["id"] for r in rows) == sorted(ids), "each id exactly once"
    for row in rows:
        if row["status"] == "ok":
            data = storage.read_bytes(storage.join(out, row["output"]))
            assert hashlib.sha256(data).hexdigest() == row["output_sha256"], row["id"]
            assert storage.is_file(storage.join(out, row["mask_output"]))
    return rows


def read_summary(out: str) -> dict:
    return json.loads(storage.read_bytes(storage.join(out, "summary.json")))


def test_local_executor_runs_from_s3_to_s3(s3_bucket, tmp_path, monkeypatch):
    manifest = put_manifest(s3_bucket, 12)
    # a relative path may not climb out of the bucket; an absolute s3 URI elsewhere in it is fine
    filesystem, path = storage.resolve(manifest)
    table = pq.read_table(path, filesystem=filesystem)
    extra = pa.table({"id": ["escape", "absolute"], "task": ["inpaint"] * 2,
                      "image": ["../../../other/p0.png", f"{s3_bucket}/in/img/p1.png"],
                      "mask": ["box:4,4,20,20"] * 2, "engine": ["opencv"] * 2})
    pq.write_table(pa.concat_tables([table, extra]), path, filesystem=filesystem)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working folder
    out = f"{s3_bucket}/out"
    assert cli.main(["run", manifest, "-o", out, "--executor", "local", "--quiet"]) == 2
    rows = {r["id"]: r for r in check_exactly_once(out, [f"row-{i:05d}" for i in range(12)] + ["escape", "absolute"])}
    assert rows["escape"]["status"] == "error" and "climbs above" in rows["escape"]["error_message"]
    assert rows["absolute"]["status"] == "ok" and rows["row-00000"]["status"] == "ok"
    assert rows["row-00003"]["mask_spec"] == "masks/m.png"  # a mask file read from S3 too
    summary = read_summary(out)
    assert summary["status"] == {"ok": 13, "error": 1, "skipped": 0} and summary["missing"] == 0
    assert summary["out_dir"] == out and summary["manifest"] == manifest
    assert not storage.exists(storage.join(out, "_lease.json")), "the lease is released at the end"
    assert os.listdir(tmp_path) == []
    scan = scan_results(out, ["output_sha256"])  # the bookkeeping reads S3 directly
    assert scan.table.num_rows == 14 and len(scan.ok_id_array()) == 13


@pytest.mark.slow
def test_ray_executor_runs_from_s3_to_s3_with_the_same_bytes(s3_bucket):
    manifest = put_manifest(s3_bucket, 24)
    local_out, ray_out = f"{s3_bucket}/local", f"{s3_bucket}/ray"
    assert cli.main(["run", manifest, "-o", local_out, "--executor", "local", "--quiet"]) == 0
    assert cli.main(["run", manifest, "-o", ray_out, "--executor", "ray", "--quiet",
                     "--rows-per-block", "4", "--batch-size", "2"]) == 0
    ids = [f"row-{i:05d}" for i in range(24)]
    ray_rows = {r["id"]: r["output_sha256"] for r in check_exactly_once(ray_out, ids)}
    local_rows = {r["id"]: r["output_sha256"] for r in check_exactly_once(local_out, ids)}
    assert ray_rows == local_rows
    summary = read_summary(ray_out)
    assert summary["status"]["ok"] == 24 and summary["executor"] == "ray"
    # bookkeeping lost (two result files gone, as a kill mid-write leaves) plus a torn file: --resume
    # on Ray re-runs exactly the ids without a result row and rewrites their images under the same keys
    files = storage.list_files(results_dir(ray_out), ".parquet")
    lost = [r for f in files[:2] for r in raw_result_rows_of(f)]
    for location in files[:2]:
        storage.delete(location)
    storage.write_bytes(storage.join(results_dir(ray_out), "torn.parquet"), b"PAR1 torn")
    images_before = {location for location in storage.list_files(storage.join(ray_out, "images"))}
    assert cli.main(["run", manifest, "-o", ray_out, "--executor", "ray", "--quiet", "--resume",
                     "--rows-per-block", "4", "--batch-size", "2"]) == 0
    assert {r["id"]: r["output_sha256"] for r in check_exactly_once(ray_out, ids)} == local_rows
    assert set(storage.list_files(storage.join(ray_out, "images"))) == images_before, "no second copy"
    summary = read_summary(ray_out)
    assert summary["rows_this_run"] == len(lost) and summary["resumed_ok_rows"] == 24 - len(lost)


def test_resume_on_s3_gives_each_id_exactly_once(s3_bucket, monkeypatch):
    manifest = put_manifest(s3_bucket, 10)
    out = f"{s3_bucket}/out"
    real_stages = local_runner.run_stages
    calls = {"n": 0}

    def stages_then_die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_stages(*args, **kwargs)

    monkeypatch.setattr(local_runner, "run_stages", stages_then_die)
    monkeypatch.setattr(local_runner.run_local, "__defaults__", (3, None, 3, 60.0))  # 3 rows per chunk and file
    assert cli.main(["run", manifest, "-o", out, "--executor", "local", "--quiet"]) == 1
    assert len(raw_result_rows(out)) == 6
    assert cli.main(["run", manifest, "-o", out, "--executor", "local", "--quiet"]) == 1  # no mixing without --resume
    storage.write_bytes(storage.join(results_dir(out), "torn.parquet"), b"PAR1 truncated")
    monkeypatch.setattr(local_runner, "run_stages", real_stages)
    assert cli.main(["run", manifest, "-o", out, "--executor", "local", "--quiet", "--resume"]) == 0
    check_exactly_once(out, [f"row-{i:05d}" for i in range(10)])
    assert storage.is_file(storage.join(results_dir(out), "_unreadable", "torn.parquet"))
    summary = read_summary(out)
    assert summary["resumed_ok_rows"] == 6 and summary["rows_this_run"] == 4 and summary["status"]["ok"] == 10


def _env_for_subprocess() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow
def test_driver_killed_mid_run_on_s3_then_resume_gives_each_id_exactly_once(s3_bucket):
    rows = 300
    manifest = put_manifest(s3_bucket, rows)
    out = f"{s3_bucket}/out"
    command = [sys.executable, "-m", "editflow", "run", manifest, "-o", out, "--executor", "local", "--quiet",
               "--rows-per-file", "50"]
    proc = subprocess.Popen(command, env=_env_for_subprocess(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(storage.list_files(results_dir(out), ".parquet")) < 2:  # killed with work done and work left
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done = len(raw_result_rows(out))
    assert 0 < done < rows
    assert storage.exists(storage.join(out, "_lease.json")), "a killed driver leaves its lease behind"
    # the dead driver's lease (this host, process gone) is stale at once: --resume takes it over
    assert cli.main(["run", manifest, "-o", out, "--executor", "local", "--quiet", "--resume"]) == 0
    check_exactly_once(out, [f"row-{i:05d}" for i in range(rows)])
    summary = read_summary(out)
    assert summary["status"]["ok"] == rows and summary["resumed_ok_rows"] + summary["rows_this_run"] == rows


def test_job_runtime_env_forwards_storage_credentials(monkeypatch):
    """`ray job submit` runs the driver on the cluster: credentials must travel in env_vars."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-test")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.internal:9000")
    monkeypatch.setenv("NOT_FORWARDED", "x")
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "runtime_env_json.py")], capture_output=True,
                          text=True, check=True)
    env = json.loads(done.stdout)
    assert env["working_dir"] == "." and env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert env["env_vars"]["AWS_ACCESS_KEY_ID"] == "AKIA-test"
    assert env["env_vars"]["AWS_ENDPOINT_URL"] == "http://minio.internal:9000"
    assert "NOT_FORWARDED" not in env["env_vars"]


@pytest.mark.slow
def test_ray_job_submit_runs_a_manifest_from_s3_to_s3(s3_bucket, tmp_path):
    """jobs/local_demo.sh: a real head (started without the credentials), `ray job submit`, S3 in and out."""
    manifest = put_manifest(s3_bucket, 8)
    out = f"{s3_bucket}/job-out"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(["bash", str(REPO / "jobs" / "local_demo.sh"), out, manifest, "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    check_exactly_once(out, [f"row-{i:05d}" for i in range(8)])
    assert read_summary(out)["status"]["ok"] == 8
