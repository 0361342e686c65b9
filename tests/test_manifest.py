"""Manifest reading (Parquet, CSV, JSONL), manifest-level errors and row validation."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from editflow.manifest import ManifestError, RowError, parse_row, read_manifest, seed_for_id

ROWS = [
    {"id": "r1", "task": "inpaint", "image": "a.png", "mask": "box:1,2,30,40", "steps": 20, "strength": 0.5},
    {"id": "r2", "task": "sdedit", "image": "sub/b.png", "seed": 42, "prompt": "a cat", "params": {"method": "ns"}},
]


def write_all_formats(folder):
    jsonl = folder / "m.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    csv = folder / "m.csv"
    csv.write_text(
        "id,task,image,mask,steps,strength,seed,prompt,params\n"
        "r1,inpaint,a.png,\"box:1,2,30,40\",20,0.5,,,\n"
        "r2,sdedit,sub/b.png,,,,42,a cat,\"{\"\"method\"\": \"\"ns\"\"}\"\n"
    )
    parquet = folder / "m.parquet"
    table = pa.table({
        "id": ["r1", "r2"], "task": ["inpaint", "sdedit"], "image": ["a.png", "sub/b.png"],
        "mask": ["box:1,2,30,40", None], "steps": [20, None], "strength": [0.5, None],
        "seed": pa.array([None, 42], pa.int64()), "prompt": [None, "a cat"],
        "params": [None, json.dumps({"method": "ns"})],
    })
    pq.write_table(table, parquet)
    return [jsonl, csv, parquet]


def test_three_formats_give_the_same_rows(tmp_path):
    parsed = []
    for path in write_all_formats(tmp_path):
        manifest = read_manifest(path)
        assert manifest.base_dir == str(tmp_path.resolve())
        parsed.append([parse_row(raw) for raw in manifest.rows()])
    for rows in parsed[1:]:
        assert rows == parsed[0]
    first, second = parsed[0]
    assert first.steps == 20 and first.strength == 0.5 and first.mask.box == (1, 2, 30, 40)
    assert first.seed == seed_for_id("r1")
    assert second.seed == 42 and second.params == {"method": "ns"} and second.mask.kind == "auto"


@pytest.mark.parametrize(
    "content, words",
    [
        ('{"id": "a", "image": "x.png"}\n', "missing required column(s) task"),
        ('{"id": "a", "task": "inpaint", "image": "x"}\n{"id": "a", "task": "inpaint", "image": "y"}\n', "duplicate id(s) 'a'"),
        ('{"id": "", "task": "inpaint", "image": "x"}\n', "empty id"),
        ('{"id": "a", "task": "inpaint", "image": "x"}\nnot json\n', "line 2 is not valid JSON"),
    ],
)
def test_manifest_level_problems_stop_with_a_named_reason(tmp_path, content, words):
    path = tmp_path / "m.jsonl"
    path.write_text(content)
    with pytest.raises(ManifestError, match=words.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(path)


def test_unreadable_and_missing_manifests(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "none.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_manifest(bad)
    text = tmp_path / "m.txt"
    text.write_text("x")
    with pytest.raises(ManifestError, match="unknown manifest format"):
        read_manifest(text)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"task": "paint"}, "unknown task 'paint'"),
        ({"strength": "1.5"}, r"strength must be in \(0, 1\], got 1.5"),
        ({"strength": "0"}, r"strength must be in \(0, 1\]"),
        ({"steps": "0"}, "steps must be >= 1"),
        ({"steps": "ten"}, "steps must be a number, got 'ten'"),
        ({"steps": "2.5"}, "steps must be an integer"),
        ({"mask": "box:1,2,3"}, "box needs 4 numbers"),
        ({"mask": "circle:1,2,3"}, "unknown mask spec 'circle'"),
        ({"mask": "polygon:1,2;3,4"}, "at least 3 points"),
        ({"seed": "-1"}, "seed must be >= 0"),
        ({"category": "hat"}, "unknown category 'hat'"),
        ({"params": "[1, 2]"}, "params must be a JSON object"),
        ({"task": "tryon"}, "needs a reference image"),
    ],
)
def test_row_level_problems_are_row_errors(change, words):
    raw = {"id": "r", "task": "inpaint", "image": "a.png", "mask": "box:0,0,4,4", **change}
    with pytest.raises(RowError, match=words):
        parse_row(raw)


def test_large_seed_survives_csv_and_parquet(tmp_path):
    big = 2**63 - 5
    (tmp_path / "m.csv").write_text(f"id,task,image,seed\nr,inpaint,a.png,{big}\n")
    assert parse_row(read_manifest(tmp_path / "m.csv").rows()[0]).seed == big
    pq.write_table(pa.table({"id": ["r"], "task": ["inpaint"], "image": ["a.png"], "seed": pa.array([big], pa.int64())}),
                   tmp_path / "m.parquet")
    assert parse_row(read_manifest(tmp_path / "m.parquet").rows()[0]).seed == big
