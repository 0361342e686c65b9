"""Quiet by default, loud on request, and progress: the stderr of real commands, as a user sees it."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

from editflow import cli
from editflow.progress import PlainProgress, progress_reporter
from tests.conftest import ASSETS, REPO, write_image, write_jsonl

ASTRONAUT, REFERENCE = ASSETS / "astronaut.png", ASSETS / "makeup_reference.png"
LOG_LINE = re.compile(r"^editflow: library logs \(MediaPipe, Ray, \.\.\.\) in (\S+); -v shows them live$", re.M)


def editflow_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`editflow ARGS` in a fresh process (TMPDIR is `cwd` unless given: Ray needs a short one)."""
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    environ.update(PYTHONPATH=str(REPO), TMPDIR=str(cwd), RAY_USAGE_STATS_ENABLED="0")
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "editflow", *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=900)


def foreign_lines(stderr: str) -> list[str]:
    """stderr lines that are not editflow's own."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("editflow")]


def test_edit_makeup_prints_only_editflow_lines(tmp_path):
    done = editflow_cli(["edit", str(ASTRONAUT), "--task", "makeup", "--reference", str(REFERENCE), "-o", "x.png"],
                        tmp_path)
    assert done.returncode == 0, done.stderr
    assert foreign_lines(done.stderr) == []
    assert (tmp_path / "x.png").is_file()
    log = Path(LOG_LINE.search(done.stderr).group(1))
    assert len(LOG_LINE.findall(done.stderr)) == 1  # the path is printed once
    assert tmp_path in log.parents  # a temp folder (TMPDIR here): edit has no OUT
    assert "inference_feedback_manager" in log.read_text()  # MediaPipe did speak, into the file


def test_edit_verbose_shows_library_logs_live(tmp_path):
    done = editflow_cli(["edit", str(ASTRONAUT), "--task", "makeup", "--reference", str(REFERENCE), "-o", "x.png",
                         "-v"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert any("inference_feedback_manager" in line for line in foreign_lines(done.stderr))
    assert not LOG_LINE.search(done.stderr)


def test_masks_with_landmarks_is_quiet(tmp_path):
    done = editflow_cli(["masks", str(ASTRONAUT), "--mask", "face:lips", "-o", "previews"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert foreign_lines(done.stderr) == []
    assert (tmp_path / "previews" / "logs" / "libraries.log").is_file()


def test_ray_run_prints_only_editflow_lines(tmp_path):
    write_image(tmp_path / "a.png", width=48, height=40, seed=1)
    manifest = write_jsonl(tmp_path / "two.jsonl", [
        {"id": "one", "task": "inpaint", "engine": "opencv", "image": "a.png", "mask": "box:5,5,30,30"},
        {"id": "two", "task": "repaint", "image": "a.png", "mask": "box:10,10,40,30"}])
    done = editflow_cli(["run", str(manifest), "-o", "out", "--executor", "ray"], tmp_path,
                        TMPDIR=os.environ.get("TMPDIR", "/tmp"))
    assert done.returncode == 0, done.stderr
    assert foreign_lines(done.stderr) == []
    assert "editflow: 2/2 rows (100%)" in done.stderr and "ok 2, error 0" in done.stderr
    log = tmp_path / "out" / "logs" / "libraries.log"
    assert LOG_LINE.search(done.stderr).group(1) == str(Path("out") / "logs" / "libraries.log")
    text = log.read_text()
    assert "Started a local Ray instance" in text and "Execution plan of Dataset" in text
    assert "2 rows: 2 ok, 0 error" in done.stdout


def test_plain_progress_lines_every_interval_with_rate_eta_and_counts():
    now = [0.0]
    stream = io.StringIO()
    progress = PlainProgress(stream, interval=10.0, clock=lambda: now[0])
    for second, done in ((2, 1), (11, 10), (15, 14), (21, 20), (24, 25)):
        now[0] = float(second)
        progress(done, 25, done - 1, 1)
    lines = stream.getvalue().splitlines()
    assert lines == [
        "editflow: 10/25 rows (40%), 0.91 rows/s, ETA 0:00:16, ok 9, error 1",
        "editflow: 20/25 rows (80%), 0.95 rows/s, ETA 0:00:05, ok 19, error 1",
        "editflow: 25/25 rows (100%), 1.04 rows/s, ETA 0:00:00, ok 24, error 1",  # the last always
    ]


def _manifest(folder: Path, rows: int) -> Path:
    write_image(folder / "a.png", width=40, height=32, seed=2)
    good = [{"id": f"r{i}", "task": "inpaint", "engine": "opencv", "image": "a.png", "mask": "box:4,4,20,20"}
            for i in range(rows)]
    return write_jsonl(folder / "m.jsonl", good + [{"id": "bad", "task": "inpaint", "image": "nope.png"}])


def test_local_run_prints_plain_progress_lines_off_a_terminal(tmp_path, capfd):
    manifest = _manifest(tmp_path, 40)
    assert cli.main(["run", str(manifest), "-o", str(tmp_path / "out"), "--executor", "local",
                     "--progress-interval", "0"]) == 2
    lines = [line for line in capfd.readouterr().err.splitlines() if " rows (" in line]
    assert len(lines) >= 3  # one per chunk of rows with a zero interval
    assert lines[-1].startswith("editflow: 41/41 rows (100%), ") and lines[-1].endswith("ok 40, error 1")
    assert all("rows/s, ETA " in line for line in lines)
    assert cli.main(["run", str(manifest), "-o", str(tmp_path / "quiet"), "--executor", "local", "--quiet"]) == 2
    assert " rows (" not in capfd.readouterr().err


def test_a_terminal_gets_one_tqdm_bar(tmp_path):
    """Under a pseudo-terminal: the bar with rows, rate, ETA and the ok / error counts."""
    manifest = _manifest(tmp_path, 40)
    master, slave = pty.openpty()
    environ = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "160"}
    child = subprocess.Popen([sys.executable, "-m", "editflow", "run", str(manifest), "-o", str(tmp_path / "out"),
                              "--executor", "local"], stdin=slave, stdout=slave, stderr=slave, env=environ,
                             cwd=tmp_path)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 600)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert child.wait(timeout=600) == 2
    os.close(master)
    text = seen.decode(errors="replace")
    assert "editflow: 100%" in text and "41/41" in text
    assert re.search(r"\d+(\.\d+)?rows/s", text) and "ok=40, error=1" in text
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", text)  # elapsed < ETA
    assert " rows (" not in text  # no plain lines on a terminal


def test_progress_reporter_picks_the_form_from_the_stream():
    assert isinstance(progress_reporter(io.StringIO()), PlainProgress)
    bar = progress_reporter(io.StringIO(), tty=True)
    bar(3, 10, 2, 1)
    assert bar.bar.n == 3 and bar.bar.total == 10 and bar.bar.postfix == "ok=2, error=1"
    bar.close()
