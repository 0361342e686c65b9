"""Scale: few large result files, the progress feed, bulk validate and catalog, and exactly-once
after a killed driver (local and Ray) or a lost Ray node, at a few thousand rows."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from editflow import cli
from editflow.commands.manifest_tryon import build_tryon_manifest
from editflow.config import RunConfig
from editflow.manifest import RowError, parse_row, read_manifest
from editflow.manifest_index import index_manifest
from editflow.media import MediaError, MediaPolicy, check_uri_allowed, resolve_uri
from editflow.runners.driver import run_manifest
from editflow.runners.local import run_local
from editflow.validation import ManifestValidator
from tests.conftest import REPO, write_image, write_jsonl
from tests.test_run_local import all_result_rows


def opencv_manifest(folder: Path, rows: int, images: int = 8, bad_every: int = 0) -> Path:
    """`rows` opencv inpaint rows over a few 32 px images; every `bad_every`-th row has a bad mask."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        write_image(folder / f"p{i}.png", width=32, height=32, seed=i)
    return write_jsonl(folder / "m.jsonl", [
        {"id": f"row-{i:06d}", "task": "inpaint", "engine": "opencv", "image": f"p{i % images}.png",
         "mask": "box:1,2,3" if bad_every and i % bad_every == 0 else "box:8,8,24,24"}
        for i in range(rows)])


def check_exactly_once(out: Path, rows: int, bad_every: int = 0) -> None:
    """Every id exactly once in OUT/results; every ok row's image exists and hashes to its output_sha256."""
    results = all_result_rows(out)
    counts = Counter(r["id"] for r in results)
    assert len(counts) == rows and set(counts.values()) == {1}, [i for i, n in counts.items() if n > 1][:5]
    for row in results:
        expected_bad = bad_every and int(row["id"].split("-")[1]) % bad_every == 0
        assert row["status"] == ("error" if expected_bad else "ok"), (row["id"], row["error_message"])
        if row["status"] == "ok":
            assert hashlib.sha256((out / row["output"]).read_bytes()).hexdigest() == row["output_sha256"], row["id"]


def editflow_command(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "editflow", "run", str(manifest), "-o", str(out), "--quiet", *extra]


def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", **extra}


def count_images(out: Path) -> int:
    folder = out / "images"
    return sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0


def kill_when_images(process: subprocess.Popen, out: Path, images: int, timeout_s: float = 240) -> None:
    """SIGKILL the driver once `images` outputs exist, then everything it started (its session)."""
    deadline = time.monotonic() + timeout_s
    while count_images(out) < images:
        assert process.poll() is None, f"the run ended (rc {process.returncode}) before it could be killed"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    try:  # the driver's own Ray processes (embedded cluster), and only those
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- few files, progress feed ----------------------------------------------------------------

def test_local_run_buffers_result_files_and_feeds_progress(tmp_path):
    manifest = opencv_manifest(tmp_path / "in", 230, bad_every=10)
    raw = read_manifest(manifest).table
    calls = []
    config = RunConfig(out_dir=str(tmp_path / "out"), base_dir=str(manifest.parent))
    run_local(raw, config, chunk_rows=16, progress=lambda *args: calls.append(args), file_rows=100)
    assert sorted(pq.read_metadata(p).num_rows for p in (tmp_path / "out" / "results").glob("*.parquet")) == [6, 112, 112]  # chunks of 16 until 100+
    check_exactly_once(tmp_path / "out", 230, bad_every=10)
    done = [c[0] for c in calls]
    assert done == sorted(done) and calls[-1] == (230, 230, 207, 23)
    assert all(total == 230 and ok + errors == d for d, total, ok, errors in calls)


@pytest.mark.slow
def test_local_run_writes_a_result_file_per_thousand_rows(tmp_path):
    manifest = opencv_manifest(tmp_path / "in", 2300, bad_every=100)
    summary = run_manifest(read_manifest(manifest), RunConfig(out_dir=str(tmp_path / "out"), base_dir=str(manifest.parent)),
                           executor="local", progress=False)
    assert summary["status"]["ok"] == 2277 and summary["status"]["error"] == 23
    assert len(list((tmp_path / "out" / "results").glob("*.parquet"))) == 3  # 1000+ + 1000+ + the rest
    check_exactly_once(tmp_path / "out", 2300, bad_every=100)


@pytest.mark.slow
def test_ray_run_streams_the_manifest_writes_few_files_and_feeds_progress(tmp_path):
    manifest = opencv_manifest(tmp_path / "in", 2300, bad_every=100)
    calls = []
    out = tmp_path / "out"
    index = index_manifest(manifest)
    summary = run_manifest(index, RunConfig(out_dir=str(out), base_dir=index.base_dir), executor="ray",
                           rows_per_block=50, progress=lambda *args: calls.append(args))
    assert summary["status"]["ok"] == 2277 and summary["status"]["error"] == 23 and summary["missing"] == 0
    check_exactly_once(out, 2300, bad_every=100)
    files = list((out / "results").glob("*.parquet"))
    assert len(files) <= 2300 // 1000 + 2 * 4, len(files)  # at least 1000 rows per file but each writer's last
    assert calls and calls[-1] == (2300, 2300, 2277, 23)


def test_ray_reads_a_wrongly_typed_cell_as_that_rows_error(tmp_path, photo_dir):
    """JSON lines whose cells change type from row to row (a block-wide Arrow JSON read would fail)."""
    good = {"task": "inpaint", "engine": "opencv", "image": "a.png", "mask": "box:5,5,30,30"}
    manifest = write_jsonl(photo_dir / "m.jsonl", [
        {"id": 0, **good, "steps": 3}, {"id": "r1", **good, "steps": "x"}, {"id": "r2", **good, "seed": 7.0},
        {"id": "r3", **good, "params": {"method": "ns"}}, {"id": "r4", **good, "params": [1]}])
    out = tmp_path / "out"
    assert cli.main(["run", str(manifest), "-o", str(out), "--executor", "ray", "--quiet"]) == 2
    by_id = {r["id"]: r for r in all_result_rows(out)}
    assert sorted(by_id) == ["0", "r1", "r2", "r3", "r4"]
    assert by_id["r1"]["status"] == "error" and "steps must be a number" in by_id["r1"]["error_message"]
    assert by_id["r4"]["status"] == "error" and "params must be a JSON object" in by_id["r4"]["error_message"]
    assert all(by_id[i]["status"] == "ok" for i in ("0", "r2", "r3")) and by_id["r2"]["seed"] == 7


# --- validate and catalog in bulk --------------------------------------------------------------

def test_bulk_validate_gives_each_row_the_verdict_of_a_row_by_row_check(tmp_path, photo_dir):
    (photo_dir / "mask.png").write_bytes((photo_dir / "a.png").read_bytes())
    variants = [
        {"task": "inpaint", "image": "a.png", "mask": "box:1,1,9,9"},
        {"task": "inpaint", "image": "nope.png", "mask": "box:1,1,9,9"},
        {"task": "paint", "image": "a.png"},
        {"task": "inpaint", "image": "b.png", "mask": "box:1,2"},
        {"task": "tryon", "image": "a.png", "reference": "gone.png", "category": "upper"},
        {"task": "tryon", "image": "a.png", "reference": "b.png"},
        {"task": "inpaint", "image": "a.png", "mask": "mask.png"},
        {"task": "inpaint", "image": "a.png", "mask": "nomask.png"},
        {"task": "inpaint", "image": "http://10.0.0.1/x.png", "mask": "full"},
        {"task": "inpaint", "image": "a.png", "mask": "full", "steps": "2.5"},
    ]
    rows = [{"id": f"r{i}", **variants[(i * 7) % len(variants)]} for i in range(300)]
    manifest = read_manifest(write_jsonl(photo_dir / "m.jsonl", rows))
    policy = MediaPolicy(allowed_schemes=frozenset({"file"}))

    def one_by_one(raw: dict) -> str | None:
        try:
            row = parse_row(raw)
            for label, uri in (("image", row.image), ("reference", row.reference), ("mask", row.mask.uri)):
                if uri:
                    resolved = resolve_uri(uri, manifest.base_dir)
                    check_uri_allowed(resolved, policy)
                    if "://" not in resolved and not Path(resolved).is_file():
                        raise RowError(f"{label} not found: {resolved}")
        except (RowError, MediaError) as exc:
            return str(exc)
        return None

    validator = ManifestValidator(manifest.base_dir, policy)
    verdicts = []
    for batch in manifest.table.to_batches(max_chunksize=64):  # verdict caches carry across batches
        verdicts += validator.batch_verdicts(batch).to_pylist()
    assert verdicts == [one_by_one(raw) for raw in manifest.rows()]
    assert sum(v is None for v in verdicts) == 60  # two valid variants of ten


def test_catalog_jsonl_and_parquet_hold_the_same_pairs_in_person_order(tmp_path):
    persons = write_jsonl(tmp_path / "persons.jsonl", [
        {"id": f"p{i}", "image": f"p{i}.png", **({"categories": "upper"} if i == 1 else {})} for i in range(3)])
    garments = write_jsonl(tmp_path / "garments.jsonl", [
        {"id": 'g"1', "image": "g1.png", "category": "Upper"}, {"id": "g2", "image": "g2.png", "category": "dress"},
        {"id": "g3", "image": "g3.png", "category": "hat"}])
    stats = build_tryon_manifest(persons, garments, tmp_path / "c.jsonl", engine="builtin")
    build_tryon_manifest(persons, garments, tmp_path / "c.parquet", engine="builtin")
    assert (stats.pairs, stats.incompatible_pairs, stats.garments_without_category) == (5, 1, ["g3"])
    lines = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == ['p0+g"1', "p0+g2", 'p1+g"1', 'p2+g"1', "p2+g2"]
    assert lines[0] == {"id": 'p0+g"1', "task": "tryon", "image": "p0.png", "reference": "g1.png",
                        "category": "upper", "mask": "auto", "engine": "builtin"}
    assert read_manifest(tmp_path / "c.jsonl").rows() == read_manifest(tmp_path / "c.parquet").rows()


# --- exactly once after a kill or a lost node -------------------------------------------------

@pytest.mark.slow
def test_sigkill_of_the_local_driver_then_resume_gives_each_id_once(tmp_path):
    rows = 3000
    manifest = opencv_manifest(tmp_path / "in", rows, bad_every=97)
    out = tmp_path / "out"
    process = subprocess.Popen(editflow_command(manifest, out, "--executor", "local"), env=subprocess_env(),
                               start_new_session=True)
    kill_when_images(process, out, 1500)  # past the first result file, mid-way through the second
    kept = all_result_rows(out)
    assert 0 < len(kept) < rows, len(kept)  # the unwritten buffer's bookkeeping is lost, its images are not
    code = subprocess.run(editflow_command(manifest, out, "--executor", "local", "--resume"),
                          env=subprocess_env(), timeout=600).returncode
    assert code == 2  # the bad-mask rows
    check_exactly_once(out, rows, bad_every=97)


@pytest.mark.slow
def test_sigkill_of_the_ray_driver_then_resume_gives_each_id_once(tmp_path):
    rows = 2000
    manifest = opencv_manifest(tmp_path / "in", rows, bad_every=97)
    out = tmp_path / "out"
    ray_args = ("--executor", "ray", "--rows-per-block", "50", "--batch-size", "25")
    process = subprocess.Popen(editflow_command(manifest, out, *ray_args), env=subprocess_env(),
                               start_new_session=True)
    kill_when_images(process, out, 900)
    code = subprocess.run(editflow_command(manifest, out, *ray_args, "--resume"), env=subprocess_env(),
                          timeout=600).returncode
    assert code == 2
    check_exactly_once(out, rows, bad_every=97)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_losing_a_ray_node_mid_run_then_resume_gives_each_id_once(tmp_path, monkeypatch):
    import threading

    import ray
    from ray.cluster_utils import Cluster

    rows = 2000
    manifest = opencv_manifest(tmp_path / "in", rows)
    out = tmp_path / "out"
    ray_tmp = Path(f"/tmp/ef{os.getpid()}")  # short: Ray's socket paths must stay under 108 bytes
    (ray_tmp / "ray").mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))  # this cluster's address file stays out of /tmp/ray
    # every node on 127.0.0.1: Ray would otherwise rewrite 127.0.0.1 to the host's address when connecting
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "gcs_server_port": free_port(), "dashboard_agent_listen_port": free_port(),
        "metrics_export_port": free_port(), "runtime_env_agent_port": free_port(), "include_dashboard": False,
        "node_ip_address": "127.0.0.1", "temp_dir": str(ray_tmp / "ray")})
    try:
        victim = cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
        cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
        # the driver joins the cluster here (on 127.0.0.1); the runner then uses this connection
        ray.init(address=cluster.address, include_dashboard=False)
        index = index_manifest(manifest)

        def run(resume: bool) -> dict:
            return run_manifest(index, RunConfig(out_dir=str(out), base_dir=index.base_dir), executor="ray",
                                resume=resume, workers=2, rows_per_block=50, progress=False)

        outcome: dict = {}

        def first_run() -> None:
            try:
                outcome["summary"] = run(resume=False)
            except Exception as exc:  # the lost node may fail the run; --resume finishes it
                outcome["error"] = exc

        thread = threading.Thread(target=first_run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 300
        while count_images(out) < 500:
            assert thread.is_alive() and time.monotonic() < deadline, f"the run ended before the node loss: {outcome}"
            time.sleep(0.05)
        cluster.remove_node(victim, allow_graceful=False)
        thread.join(timeout=500)
        assert not thread.is_alive(), "the run hung after the node loss"
        if outcome.get("summary", {}).get("status", {}).get("ok") != rows:
            summary = run(resume=True)
            assert summary["status"]["ok"] == rows and summary["missing"] == 0
        check_exactly_once(out, rows)
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
