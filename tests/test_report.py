"""`editflow report`: the HTML contact sheet of a run, checked in a real headless Chromium
(loaded from file://), plus pagination and resume de-duplication on a fake results table."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from editflow import cli, storage
from editflow.media import sha256_hex
from editflow.report import ReportError, build_report, page_name
from editflow.results import to_result_table
from tests.conftest import write_jsonl

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
ROW_RE = re.compile(r'<tr class="row [^"]*" data-id="([^"]*)"([^>]*)>')


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:  # CI installs it (make install / .ci/run); a silent skip would hide a broken report
        pytest.fail("Debian's chromium is needed for the report test: apt-get install -y chromium (make does it)")
    return found


def browse(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()
                           if "#" not in page.name else "file://" + str(page)],
                          capture_output=True, text=True, timeout=180, check=True)


def dom_rows(dom: str) -> list[tuple[str, bool]]:
    """(row id, hidden by a filter) for every result row in a dumped DOM, in page order."""
    return [(html.unescape(m.group(1)), "hidden" in m.group(2)) for m in ROW_RE.finditer(dom)]


@pytest.fixture
def small_run(tmp_path: Path, photo_dir: Path, capsys) -> Path:
    """A real local run: three ok rows (one id needs escaping) and one error row."""
    good = {"task": "inpaint", "engine": "opencv"}
    manifest = write_jsonl(photo_dir / "m.jsonl", [
        {"id": "first-ok", "image": "a.png", "mask": "box:10,10,40,40", **good},
        {"id": "second <ok> & \"quoted\"", "image": "b.png", "mask": "polygon:5,5;60,8;50,70", **good},
        {"id": "broken", "image": "nope.png", "mask": "box:1,1,9,9", **good},
        {"id": "repaint-ok", "image": "a.png", "task": "repaint", "mask": "box:20,20,50,50", "seed": 3, "steps": 2},
    ])
    out = tmp_path / "out"
    code = cli.main(["run", str(manifest), "-o", str(out), "--executor", "local", "--quiet", "--report"])
    assert code == 2  # one row failed
    assert f"report:  {out / 'report' / 'index.html'} (4 rows, 1 page, " in capsys.readouterr().out
    return out


@pytest.mark.slow
def test_report_in_headless_chromium(small_run: Path, tmp_path: Path):
    index = small_run / "report" / "index.html"
    text = index.read_text()
    assert "data:image" not in text and "http://" not in text and "https://" not in text  # nothing inlined or fetched

    dom = browse(index, tmp_path, "--dump-dom").stdout
    rows = dom_rows(dom)
    assert [r[0] for r in rows][0] == "broken"  # error rows first
    assert sorted(r[0] for r in rows) == sorted(["first-ok", 'second <ok> & "quoted"', "broken", "repaint-ok"])
    assert not any(hidden for _, hidden in rows)
    assert re.search(r'id="count-rows">4<', dom) and re.search(r'id="count-ok">3<', dom)
    assert re.search(r'id="count-error">1<', dom) and re.search(r'id="count-missing">0<', dom)
    assert "4 of 4 rows on this page" in dom  # the inline script ran
    assert "prepare stage" in dom and "image not found" in dom

    # every thumbnail a row shows is a small file under report/thumbs, written once
    sources = re.findall(r'<img src="(thumbs/[^"]+)"', text)
    assert len(sources) == 3 * 3 and all((index.parent / s).is_file() for s in sources)
    for source in sources:
        with Image.open(index.parent / source) as thumb:
            assert max(thumb.size) <= 160
    first = {p: p.stat().st_mtime_ns for p in (index.parent / "thumbs").iterdir()}
    assert build_report(str(small_run)).thumbs_written == 0
    assert {p: p.stat().st_mtime_ns for p in (index.parent / "thumbs").iterdir()} == first

    # a filter in the URL fragment hides the other rows
    filtered = dom_rows(browse(Path(f"{index}#engine=(none)"), tmp_path, "--dump-dom").stdout)
    assert [i for i, hidden in filtered if not hidden] == ["broken"] and len(filtered) == 4
    dom = browse(Path(f"{index}#status=ok&engine=builtin"), tmp_path, "--dump-dom").stdout
    assert [i for i, hidden in dom_rows(dom) if not hidden] == ["repaint-ok"]
    assert "1 of 4 rows on this page" in dom and 'href="index.html#status=ok&amp;engine=builtin"' in dom

    shot = tmp_path / "report.png"
    browse(index, tmp_path, f"--screenshot={shot}", "--window-size=1200,900")
    pixels = np.asarray(Image.open(shot).convert("RGB"), np.float32)
    assert pixels.shape == (900, 1200, 3)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # text and photos, not blank


def _fake_results(out: Path, rows: int, errors_every: int) -> list[str]:
    """A results folder of fake rows in three files; every `errors_every`-th row is an error."""
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    records = []
    for i in range(rows):
        error = i % errors_every == 0
        records.append({
            "id": f"row-{i:04d}", "task": ("inpaint", "repaint")[i % 2], "engine": "opencv", "seed": i,
            "status": "error" if error else "ok", "error_stage": "edit" if error else None,
            "error_type": "RuntimeError" if error else None, "error_message": f"boom {i}" if error else None,
            "image": "a.png", "finished_at": start + timedelta(seconds=i),
        })
    (out / "results").mkdir(parents=True)
    for part, lo in enumerate(range(0, rows, 160)):
        pq.write_table(to_result_table(records[lo:lo + 160]), out / "results" / f"part-{part}.parquet")
    return [r["id"] for r in records if r["status"] == "error"]


def test_pagination_splits_rows_into_pages_errors_first(tmp_path: Path):
    out = tmp_path / "out"
    errors = _fake_results(out, 450, errors_every=10)
    report = build_report(str(out), page_size=200)
    assert (report.rows, report.pages) == (450, 3)
    pages = [out / "report" / page_name(n) for n in (1, 2, 3)]
    assert [p.name for p in pages] == ["index.html", "page-2.html", "page-3.html"]
    ids = [dom_rows(p.read_text()) for p in pages]
    assert [len(i) for i in ids] == [200, 200, 50]
    flat = [row_id for page in ids for row_id, _ in page]
    assert flat[:len(errors)] == errors and len(set(flat)) == 450
    assert 'href="page-2.html"' in pages[0].read_text() and 'href="index.html"' in pages[2].read_text()
    assert 'id="count-error">45<' in pages[2].read_text()  # run-wide counts on every page
    assert build_report(str(out), page_size=300).pages == 2
    assert sorted(p.name for p in (out / "report").glob("*.html")) == ["index.html", "page-2.html"]


def test_a_resumed_id_shows_once_with_its_ok_row(tmp_path: Path):
    out = tmp_path / "out"
    _fake_results(out, 20, errors_every=5)
    later = datetime(2026, 2, 1, tzinfo=timezone.utc)
    pq.write_table(to_result_table([{"id": "row-0005", "status": "ok", "task": "inpaint", "engine": "opencv",
                                     "finished_at": later}]), out / "results" / "part-resume.parquet")
    (out / "results" / "part-truncated.parquet").write_bytes(b"PAR1 not a whole file")
    report = build_report(str(out), page_size=200)
    assert report.rows == 20 and len(report.unreadable_files) == 1
    rows = dom_rows((out / "report" / "index.html").read_text())
    assert [r[0] for r in rows].count("row-0005") == 1
    assert [r[0] for r in rows][:3] == ["row-0000", "row-0010", "row-0015"]  # row-0005 is ok now


def test_report_of_a_folder_without_results_is_an_error(tmp_path: Path, capsys):
    with pytest.raises(ReportError, match="no result files"):
        build_report(str(tmp_path / "nothing"))
    assert cli.main(["report", str(tmp_path / "nothing")]) == cli.EXIT_FATAL
    assert "no result files" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


def test_report_on_an_object_store_out(tmp_path: Path, photo_dir: Path, s3_bucket: str, capsys):
    """A run written to s3:// (a real moto server) gets its report written beside it in the bucket."""
    manifest = write_jsonl(photo_dir / "m.jsonl", [
        {"id": "s3-ok", "task": "inpaint", "engine": "opencv", "image": "a.png", "mask": "box:10,10,40,40"},
        {"id": "s3-broken", "task": "inpaint", "engine": "opencv", "image": "nope.png", "mask": "box:1,1,9,9"},
    ])
    out = f"{s3_bucket}/runs/one"
    assert cli.main(["run", str(manifest), "-o", out, "--executor", "local", "--quiet", "--report"]) == 2
    assert f"report:  {out}/report/index.html (2 rows, 1 page, 3 new thumbnails)" in capsys.readouterr().out
    filesystem, path = storage.resolve(f"{out}/report/index.html")
    with filesystem.open_input_stream(path) as stream:
        assert stream.metadata().get("Content-Type") == b"text/html; charset=utf-8"  # a static host serves it
        page = stream.read().decode()
    assert [r[0] for r in dom_rows(page)] == ["s3-broken", "s3-ok"]
    sources = re.findall(r'<img src="(thumbs/[^"]+)"', page)
    assert len(sources) == 3 and all(storage.is_file(f"{out}/report/{s}") for s in sources)
    with filesystem.open_input_stream(storage.resolve(f"{out}/report/{sources[0]}")[1]) as stream:
        assert stream.metadata().get("Content-Type") == b"image/webp"
    assert cli.main(["report", out]) == 0
    assert "(2 rows, 1 page, 0 new thumbnails)" in capsys.readouterr().out


def test_a_result_pointing_outside_out_gets_no_thumbnail(tmp_path: Path):
    """Result files are data: an `output` of ../x is never read (nor shown) by the report."""
    out = tmp_path / "out"
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret)
    (out / "results").mkdir(parents=True)
    pq.write_table(to_result_table([{"id": "sneaky", "status": "ok", "task": "inpaint", "engine": "opencv",
                                     "output": "../secret.png", "output_sha256": sha256_hex(secret.read_bytes())}]),
                   out / "results" / "part-0.parquet")
    report = build_report(str(out))
    assert report.rows == 1 and report.thumbs_written == 0
    assert list((out / "report" / "thumbs").iterdir()) == []
    page = (out / "report" / "index.html").read_text()
    assert "<img" not in page and "../../secret.png" not in page
