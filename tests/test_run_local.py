"""The whole spine in-process: good and bad rows, exact paste-back, determinism, resume, CLI."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from editflow import cli
from editflow.results import RESULT_COLUMNS, scan_results
from editflow.runners import local as local_runner
from tests.conftest import write_jsonl


def all_result_rows(out: Path) -> list[dict]:
    """Every row of every result file, without deduplication."""
    rows = []
    for path in sorted(glob.glob(str(out / "results" / "*.parquet"))):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def mixed_manifest(tmp_path: Path, photo_dir: Path) -> Path:
    (photo_dir / "empty.png").write_bytes(b"")
    (photo_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    Image.new("1", (12000, 12000)).save(photo_dir / "bomb.png")  # 144 MP in a few kB
    good = {"task": "inpaint", "engine": "opencv", "mask": "box:10,10,40,40"}
    rows = [
        {"id": "good-a", "image": "a.png", **good},
        {"id": "good-b", "image": "b.png", **good, "mask": "polygon:5,5;60,8;50,70"},
        {"id": "../../escape/../x", "image": "a.png", **good},
        {"id": "missing", "image": "nope.png", **good},
        {"id": "zero-bytes", "image": "empty.png", **good},
        {"id": "corrupt", "image": "corrupt.png", **good},
        {"id": "bomb", "image": "bomb.png", **good},
        {"id": "unknown-task", "image": "a.png", **good, "task": "paint"},
        {"id": "bad-mask", "image": "a.png", **good, "mask": "box:1,2,3"},
        {"id": "strength", "image": "a.png", **good, "strength": 1.5},
        {"id": "link-local", "image": "http://169.254.169.254/latest/meta-data/x.png", **good},
        {"id": "no-face", "image": "a.png", **good, "mask": "face:lips"},
        {"id": "good-builtin", "image": "b.png", "task": "repaint", "mask": "box:20,30,50,60", "seed": 3},
    ]
    return write_jsonl(photo_dir / "mixed.jsonl", rows)


EXPECTED_ERRORS = {
    "missing": ("prepare", "not found"),
    "zero-bytes": ("prepare", "empty"),
    "corrupt": ("prepare", "not a decodable image"),
    "bomb": ("prepare", "decompression bomb"),
    "unknown-task": ("prepare", "unknown task 'paint'"),
    "bad-mask": ("prepare", "box needs 4 numbers"),
    "strength": ("prepare", "strength must be in (0, 1]"),
    "link-local": ("prepare", "scheme 'http' is not allowed"),
    "no-face": ("mask", "face"),  # a face mask on a photo without a face
}


def check_mixed_results(out: Path) -> None:
    rows = {r["id"]: r for r in all_result_rows(out)}
    assert len(rows) == 13 and len(all_result_rows(out)) == 13, "every row exactly once"
    for row_id, (stage, words) in EXPECTED_ERRORS.items():
        row = rows[row_id]
        assert row["status"] == "error", row_id
        assert row["error_stage"] == stage, (row_id, row["error_message"])
        assert words in row["error_message"], (row_id, row["error_message"])
        assert row["output"] is None
    assert rows["good-builtin"]["engine"] == "builtin" and rows["good-builtin"]["nfe"] > 0
    for row_id in ("good-a", "good-b", "../../escape/../x", "good-builtin"):
        row = rows[row_id]
        assert row["status"] == "ok", row["error_message"]
        assert row["unmasked_max_diff"] == 0
        output = out / row["output"]
        assert output.is_file() and output.resolve().is_relative_to(out.resolve())
        assert (out / row["mask_output"]).is_file()
        assert Image.open(output).size == (row["width"], row["height"])


def test_mixed_manifest_keeps_every_row_and_writes_only_inside_out(tmp_path, mixed_manifest, capsys):
    out = tmp_path / "out"
    before = files_under(tmp_path)
    code = cli.main(["run", str(mixed_manifest), "-o", str(out), "--executor", "local", "--quiet"])
    assert code == 2
    check_mixed_results(out)
    new_files = files_under(tmp_path) - before
    assert new_files and all(p.resolve().is_relative_to(out.resolve()) for p in new_files)
    summary = (out / "summary.json").read_text()
    assert '"ok": 4' in summary and '"error": 9' in summary and '"exit_code": 2' in summary
    assert "4 ok, 9 error" in capsys.readouterr().out


def test_link_local_url_is_refused_even_when_http_is_allowed(tmp_path, photo_dir):
    manifest = write_jsonl(photo_dir / "m.jsonl", [
        {"id": "meta", "task": "inpaint", "image": "http://169.254.169.254/a.png", "mask": "box:0,0,4,4"}])
    out = tmp_path / "out"
    assert cli.main(["run", str(manifest), "-o", str(out), "--executor", "local", "--quiet",
                     "--allow-scheme", "http"]) == 2
    [row] = all_result_rows(out)
    assert "link-local" in row["error_message"]


def test_result_rows_have_the_contract_columns(tmp_path, photo_dir):
    manifest = write_jsonl(photo_dir / "m.jsonl", [
        {"id": "r", "task": "inpaint", "image": "a.png", "mask": "box:5,5,30,30", "engine": "opencv"}])
    out = tmp_path / "out"
    assert cli.main(["run", str(manifest), "-o", str(out), "--executor", "local", "--quiet"]) == 0
    table = pq.read_table(glob.glob(str(out / "results" / "*.parquet"))[0])
    assert tuple(table.column_names) == RESULT_COLUMNS
    [row] = table.to_pylist()
    for column in ("input_sha256", "output_sha256", "t_load_s", "t_mask_s", "t_edit_s", "t_write_s", "started_at",
                   "finished_at", "editflow_version", "device", "worker", "seed", "nfe", "mask_area"):
        assert row[column] is not None, column
    assert row["output"].startswith("images/") and row["mask_output"].startswith("masks/")
    assert 0 < row["mask_area"] < 1
    png = Image.open(out / row["output"])
    assert '"seed"' in png.text["editflow"]


def test_same_manifest_twice_gives_byte_identical_images(tmp_path, mixed_manifest):
    hashes = []
    for name in ("one", "two"):
        out = tmp_path / name
        cli.main(["run", str(mixed_manifest), "-o", str(out), "--executor", "local", "--quiet"])
        hashes.append({r["id"]: r["output_sha256"] for r in all_result_rows(out) if r["status"] == "ok"})
        files = sorted((out / "images").iterdir())
        hashes.append({p.name: p.read_bytes() for p in files})
    assert hashes[0] == hashes[2] and hashes[1] == hashes[3] and len(hashes[0]) == 4


def test_interrupted_run_then_resume_gives_each_id_exactly_once(tmp_path, photo_dir, monkeypatch):
    rows = [{"id": f"r{i}", "task": "inpaint", "image": "a.png" if i % 2 else "b.png", "engine": "opencv",
             "mask": "box:5,5,30,30" if i != 3 else "box:1,2"} for i in range(7)]
    manifest = write_jsonl(photo_dir / "m.jsonl", rows)
    out = tmp_path / "out"
    real_stages = local_runner.run_stages
    calls = {"n": 0}

    def stages_then_die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        return real_stages(*args, **kwargs)

    monkeypatch.setattr(local_runner, "run_stages", stages_then_die)
    # 2 rows per chunk, 1000 rows per result file: the interrupt itself writes the 4 finished rows
    monkeypatch.setattr(local_runner.run_local, "__defaults__", (2, None, 1000, 60.0))
    assert cli.main(["run", str(manifest), "-o", str(out), "--executor", "local", "--quiet"]) == 1
    assert len(all_result_rows(out)) == 4 and len(list((out / "results").glob("*.parquet"))) == 1
    # a run without --resume refuses to mix into the folder
    assert cli.main(["run", str(manifest), "-o", str(out), "--executor", "local", "--quiet"]) == 1
    # a torn result file (as a killed Ray writer can leave) is set aside, not trusted
    (out / "results" / "torn.parquet").write_bytes(b"PAR1 truncated")
    monkeypatch.setattr(local_runner, "run_stages", real_stages)
    assert cli.main(["run", str(manifest), "-o", str(out), "--executor", "local", "--quiet", "--resume"]) == 2
    ids = [r["id"] for r in all_result_rows(out)]
    assert sorted(ids) == [f"r{i}" for i in range(7)], "each id exactly once"
    assert (out / "results" / "_unreadable" / "torn.parquet").exists()
    scan = scan_results(out)
    assert scan.ok_ids() == {f"r{i}" for i in range(7)} - {"r3"}


def test_validate_prints_invalid_rows_or_every_row_with_verbose(tmp_path, mixed_manifest, capsys):
    assert cli.main(["validate", "--verbose", str(mixed_manifest)]) == 2
    text = capsys.readouterr().out
    assert "ok     good-a" in text
    assert "error  missing: image not found" in text
    assert "error  strength: strength must be in (0, 1]" in text
    assert "error  link-local: URL scheme 'http' is not allowed" in text
    assert "8 ok, 5 invalid of 13 rows" in text
    assert cli.main(["validate", "--check-images", str(mixed_manifest)]) == 2  # invalid rows only, by default
    text = capsys.readouterr().out
    assert "error  bomb:" in text and "error  corrupt:" in text and "error  zero-bytes:" in text
    assert "ok     good-a" not in text and "5 ok, 8 invalid of 13 rows" in text


def test_validate_and_run_stop_on_a_bad_manifest(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "image": "x.png"}])
    assert cli.main(["validate", str(bad)]) == 1
    assert cli.main(["run", str(bad), "-o", str(tmp_path / "o"), "--executor", "local"]) == 1
    assert "missing required column(s) task" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_edit_command_edits_one_image(tmp_path, photo_dir, capsys):
    target = tmp_path / "edited.jpg"
    code = cli.main(["edit", str(photo_dir / "a.png"), "--mask", "box:10,10,50,40", "--engine", "opencv",
                     "-o", str(target), "--save-mask", str(tmp_path / "mask.png")])
    assert code == 0, capsys.readouterr().err
    assert Image.open(target).format == "JPEG" and Image.open(target).size == (96, 64)
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert mask[20, 20] == 255 and mask[0, 0] == 0


def test_edit_command_reports_a_bad_input(tmp_path, capsys):
    code = cli.main(["edit", str(tmp_path / "none.png"), "--mask", "box:1,1,5,5", "-o", str(tmp_path / "x.png")])
    assert code == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
