"""Catalog try-on: the person x garment manifest builder, and a 3 x 4 catalog run on Ray."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from editflow import cli
from editflow.manifest import parse_row, read_manifest
from tests.conftest import REPO
from tests.test_run_local import all_result_rows


def write_table(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CATALOG = REPO / "manifests" / "catalog"  # 3 persons (astronaut, mirrored, cameraman) x 4 upper garments


def test_builder_keeps_compatible_pairs_and_counts_the_rest(tmp_path, capsys):
    persons = write_table(tmp_path / "persons.jsonl", [
        {"id": "p1", "image": str(CATALOG / "mirrored.png")},
        {"id": "p2", "image": "p2.png", "categories": "upper"},
    ])
    garments = write_table(tmp_path / "garments.csv", [])
    garments.write_text("id,image,kind\nshirt,a.png,upper\nskirt,b.png,lower\ngown,c.png,dress\nmystery,d.png,\n")
    out = tmp_path / "sub" / "pairs.parquet"
    code = cli.main(["manifest", "tryon", "--persons", str(persons), "--garments", str(garments),
                     "--category-column", "kind", "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr()
    assert "4 pairs of 2 persons x 4 garments; 2 incompatible pairs left out" in printed.out
    assert "1 garment(s) without a valid category left out: mystery" in printed.err
    manifest = read_manifest(out)
    rows = [parse_row(r) for r in manifest.rows()]
    assert [(r.id, r.task, r.category, r.mask.kind) for r in rows] == [
        ("p1+shirt", "tryon", "upper", "auto"), ("p1+skirt", "tryon", "lower", "auto"),
        ("p1+gown", "tryon", "dress", "auto"), ("p2+shirt", "tryon", "upper", "auto"),
    ]
    # relative paths now resolve from the manifest's own folder
    garment_path = Path(manifest.base_dir) / rows[0].reference
    assert garment_path.resolve() == (tmp_path / "a.png").resolve()
    again = tmp_path / "sub" / "again.parquet"
    cli.main(["manifest", "tryon", "--persons", str(persons), "--garments", str(garments), "--category-column", "kind",
              "-o", str(again)])
    assert read_manifest(again).rows() == read_manifest(out).rows()


def test_catalog_on_ray_masks_each_person_once_and_encodes_each_garment_once(tmp_path):
    manifest = tmp_path / "catalog.jsonl"
    assert cli.main(["manifest", "tryon", "--persons", str(CATALOG / "persons.jsonl"),
                     "--garments", str(CATALOG / "garments.jsonl"), "-o", str(manifest)]) == 0
    out = tmp_path / "out"
    code = cli.main(["run", str(manifest), "-o", str(out), "--executor", "ray", "--workers", "1", "--quiet",
                     "--rows-per-block", "4"])
    rows = all_result_rows(out)
    assert code == 0, [r["error_message"] for r in rows if r["status"] != "ok"]
    assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)
    sizes = {"astronaut": (256, 256), "mirrored": (256, 256), "cameraman": (200, 200)}
    for row in rows:
        person = row["id"].split("+")[0]  # ids are person+garment
        assert (row["width"], row["height"]) == sizes[person]
        assert Image.open(out / row["output"]).size == sizes[person]
        assert row["unmasked_max_diff"] == 0 and row["mask_spec"] == "garment:upper"
    # one edit actor: each person's mask is made once, each garment prepared once
    assert sum(not r["mask_cached"] for r in rows) == 3
    assert sum(not r["reference_cached"] for r in rows) == 4
