"""`editflow masks IMAGE|MANIFEST --mask SPEC -o DIR`: write masks and overlay previews.

Check masks before a batch run: for every image (or manifest row) and every `--mask` spec, DIR gets

    <id>-<hash>.mask.png      the mask exactly as an edit would use it (8-bit, 255 = edit)
    <id>-<hash>.overlay.png   the photo with the edit region tinted and outlined
    masks.jsonl               one line per mask: id, image, spec, area, files, or the error

Masks go through the same prepare and mask stages as `editflow run` (task defaults for `auto`,
mask_grow / mask_feather, the per-image cache), so what you see is what a run will repaint.
Exit codes: 0 all masks made, 2 some failed (each says why), 1 fatal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from editflow.masks.render import overlay
from editflow.tasks import CATEGORIES

MANIFEST_SUFFIXES = (".parquet", ".pq", ".csv", ".jsonl", ".ndjson", ".json")
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `editflow masks` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "masks", help="write masks and overlay previews for an image or a manifest",
        description="Write each mask an edit would use, and the photo with the mask tinted over it, so "
                    "masks can be checked before a batch run: editflow masks photo.jpg --mask face:lips -o previews/")
    parser.add_argument("source", help="an image (path or URI) or a manifest (.parquet, .csv, .jsonl)")
    parser.add_argument("--mask", action="append", default=[], metavar="SPEC",
                        help="mask spec (box:, polygon:, sam:, face:, garment:, person, auto, a file); repeatable. "
                             "Default: for a manifest each row's own mask, for an image auto")
    parser.add_argument("-o", "--out", required=True, help="folder for the masks, overlays and masks.jsonl")
    parser.add_argument("--task", default="inpaint", help="task for an image (decides what auto means; default inpaint)")
    parser.add_argument("--category", default=None, choices=CATEGORIES,
                        help="try-on category for an image")
    parser.add_argument("--mask-grow", type=int, default=None)
    parser.add_argument("--mask-feather", type=int, default=None)
    parser.add_argument("--params", default=None, help='row extras as JSON, e.g. {"face": "all"}')
    parser.add_argument("--sam-checkpoint", default=None, help="segment-anything checkpoint file (or folder)")
    parser.add_argument("--sam-model-type", default="vit_b", help="vit_b, vit_l or vit_h (default vit_b)")
    parser.add_argument("--sam-refine", action="store_true", help="refine face and person masks with SAM")
    parser.add_argument("--device", default=None, help="cuda or cpu for SAM (default: cuda when present)")
    parser.add_argument("--alpha", type=float, default=0.5, help="tint strength of the overlay (default 0.5)")
    parser.add_argument("--allow-scheme", action="append", default=[], metavar="SCHEME",
                        help="also read images from this URI scheme (s3, gs, http, https); repeatable")
    parser.add_argument("--allow-private-hosts", action="store_true")
    parser.add_argument("--max-pixels", type=int, default=50_000_000)
    parser.set_defaults(func=run)
    return parser


def _rows(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    """Raw manifest rows to preview, and the folder relative paths resolve against."""
    import os

    source = args.source
    if Path(source).suffix.lower() in MANIFEST_SUFFIXES:
        from editflow.manifest import read_manifest

        manifest = read_manifest(source)
        raws = manifest.rows()
        if args.mask:
            raws = [{**raw, "id": f"{raw['id']}.{i}" if len(args.mask) > 1 else raw["id"], "mask": spec}
                    for raw in raws for i, spec in enumerate(args.mask)]
        return raws, manifest.base_dir
    stem = Path(source.split("?")[0]).stem or "image"
    specs = args.mask or ["auto"]
    raws = []
    for i, spec in enumerate(specs):
        raws.append({
            "id": stem if len(specs) == 1 else f"{stem}.{i}", "task": args.task, "image": source, "mask": spec,
            "category": args.category, "params": args.params,
            "mask_grow": None if args.mask_grow is None else str(args.mask_grow),
            "mask_feather": None if args.mask_feather is None else str(args.mask_feather),
        })
    return raws, os.getcwd()


def run(args: argparse.Namespace) -> int:
    from editflow import storage
    from editflow.config import RunConfig
    from editflow.manifest import ManifestError
    from editflow.media import encode_image, safe_join, safe_output_name
    from editflow.runners.stages import MaskStage, PrepareStage, new_row

    out = Path(args.out)
    try:
        raws, base_dir = _rows(args)
    except ManifestError as exc:
        print(f"editflow: {exc}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    config = RunConfig(
        out_dir=str(out), base_dir=base_dir, device=args.device, write_masks=False,
        allowed_schemes=("file", *args.allow_scheme), allow_private_hosts=args.allow_private_hosts,
        max_pixels=args.max_pixels, sam_checkpoint=args.sam_checkpoint, sam_model_type=args.sam_model_type,
        sam_refine=args.sam_refine,
    )
    prepare, masker = PrepareStage(config), MaskStage(config)
    failed = 0
    lines = []
    for start in range(0, len(raws), 8):  # a few rows at a time: images are held only while masked
        rows = masker(prepare([new_row(raw, config.run_id) for raw in raws[start:start + 8]]))
        for row in rows:
            record = {"id": row["id"], "image": row["image"], "mask_spec": row.get("mask_spec")}
            if row["status"] != "ok":
                failed += 1
                record.update(status="error", error_stage=row.get("error_stage"),
                              error_type=row.get("error_type"), error=row.get("error_message"))
                print(f"error  {row['id']}: {row.get('error_message')}", file=sys.stderr)
            else:
                mask, image = row.pop("_mask"), row.pop("_image")
                mask_name = safe_output_name(row["id"], ".mask.png")
                overlay_name = safe_output_name(row["id"], ".overlay.png")
                storage.write_bytes(safe_join(out, mask_name), encode_image(np.rint(mask * 255).astype(np.uint8), "png"))
                storage.write_bytes(safe_join(out, overlay_name), encode_image(overlay(image, mask, args.alpha), "png"))
                record.update(status="ok", mask_area=round(float(row["mask_area"]), 5), mask=mask_name,
                              overlay=overlay_name, t_mask_s=round(float(row.get("t_mask_s") or 0.0), 4))
                print(f"ok     {row['id']}: {row['mask_spec']} area {record['mask_area']:.4f} -> {out / overlay_name}")
            for key in ("_reference", "_image", "_mask"):
                row.pop(key, None)
            lines.append(json.dumps(record, default=str))
    storage.write_bytes(out / "masks.jsonl", ("\n".join(lines) + "\n").encode())
    print(f"editflow: {len(raws) - failed} masks ok, {failed} failed; previews in {out}")
    return 2 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (`python -m editflow.commands.masks ...`)."""
    parser = argparse.ArgumentParser(prog="editflow")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return run(parser.parse_args(["masks", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())
