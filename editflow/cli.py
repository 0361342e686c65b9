"""The `editflow` command: run a manifest, edit one image, validate a manifest, list models, preview masks.

Exit codes: 0 every row ok, 2 some rows failed, 1 fatal (nothing or not everything could run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from editflow import __version__, storage
from editflow.config import OUTPUT_FORMATS, RunConfig
from editflow.engines import DEFAULT_ENGINE, engine_names
from editflow.manifest import TASKS, ManifestError, RowError, parse_row, read_manifest
from editflow.tasks import CATEGORIES

EXIT_OK, EXIT_FATAL, EXIT_ROW_ERRORS = 0, 1, 2


def _quality(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"quality must be a whole number 1-100, got {text!r}")
    return int(text)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", default=DEFAULT_ENGINE, choices=engine_names(),
                        help=f"engine for rows that name none (default: {DEFAULT_ENGINE}, weight-free)")
    parser.add_argument("--model", default=None, help="model for rows that name none (hub id or local dir)")
    parser.add_argument("--device", default=None, help="cuda, cpu, mps (default: cuda when present, else cpu)")
    parser.add_argument("--cpu-threads", type=int, default=None,
                        help="torch threads for CPU edits (default: all cores; the same count gives the same bytes)")
    parser.add_argument("--format", dest="output_format", default="png", choices=OUTPUT_FORMATS,
                        help="output image format (default png, or the -o name's extension for edit)")
    parser.add_argument("--quality", type=_quality, default=None,
                        help="JPEG/WebP quality 1-100 (default 95; PNG is lossless)")
    parser.add_argument("--sam-checkpoint", default=os.environ.get("EDITFLOW_SAM_CHECKPOINT"),
                        help="segment-anything checkpoint file or folder for sam: masks (env EDITFLOW_SAM_CHECKPOINT)")
    parser.add_argument("--sam-model-type", default="vit_b", help="vit_b (default), vit_l or vit_h")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="turn off the per-worker mask and reference caches (to measure what they save)")
    parser.add_argument("--sam-refine", action="store_true",
                        help="refine landmark masks (face:, person) with SAM when a checkpoint is set")
    _add_media(parser)


def _add_media(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-scheme", action="append", default=[], metavar="SCHEME",
                        help="also read images from this URI scheme (s3, gs, http, https); repeatable")
    parser.add_argument("--allow-private-hosts", action="store_true",
                        help="let http(s) URIs reach loopback/private/link-local addresses (off by default)")
    parser.add_argument("--max-pixels", type=int, default=50_000_000,
                        help="refuse images above this many pixels (decompression-bomb guard; default 50e6)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="editflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"editflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="edit every row of a manifest into an output folder",
                         description="Edit every row of MANIFEST (Parquet, CSV or JSONL). Images go to OUT/images, "
                                     "masks to OUT/masks, one result row per manifest row to OUT/results/*.parquet, "
                                     "and OUT/summary.json closes the run.")
    run.add_argument("manifest", help="manifest file (.parquet, .csv, .jsonl): a path or a URI (s3://, gs://, ...)")
    run.add_argument("-o", "--out", required=True, help="output folder: a path or a URI (s3://bucket/prefix, gs://...)")
    run.add_argument("--executor", default="ray", choices=("ray", "local"),
                     help="ray (default; embedded local cluster unless RAY_ADDRESS is set) or local (in-process)")
    run.add_argument("--workers", type=int, default=None, help="edit actors on Ray (default: one per GPU, or 1)")
    run.add_argument("--batch-size", type=int, default=4, help="rows per engine call (default 4)")
    run.add_argument("--rows-per-block", type=int, default=8,
                     help="rows per Ray block: the unit of retry and failure (default 8)")
    run.add_argument("--resume", action="store_true",
                     help="skip rows already ok in OUT and re-run the rest; takes over the lease of a run that died")
    run.add_argument("--force-unlock", action="store_true",
                     help="take OUT's lease even if another run seems alive (only when you know it is not)")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument("--report", action="store_true", help="also write the HTML report (OUT/report/index.html)")
    _add_common(run)

    edit = sub.add_parser("edit", help="edit one image through the same stages",
                          description="Edit one image: editflow edit photo.jpg --mask box:10,10,90,90 -o out.png")
    edit.add_argument("image", help="input image path or URI")
    edit.add_argument("--mask", default=None, help="mask spec or mask image (box:..., polygon:..., full, a file)")
    edit.add_argument("--task", default="inpaint", choices=TASKS, help="task (default inpaint)")
    edit.add_argument("--prompt", default=None)
    edit.add_argument("--negative-prompt", default=None)
    edit.add_argument("--reference", default=None, help="reference image (garment for tryon, face for makeup)")
    edit.add_argument("--category", default=None, choices=CATEGORIES)
    edit.add_argument("--seed", type=int, default=None)
    edit.add_argument("--steps", type=int, default=None)
    edit.add_argument("--strength", type=float, default=None)
    edit.add_argument("--guidance-scale", type=float, default=None)
    edit.add_argument("--jump-length", type=int, default=None)
    edit.add_argument("--jump-n-sample", type=int, default=None)
    edit.add_argument("--mask-grow", type=int, default=None)
    edit.add_argument("--mask-feather", type=int, default=None)
    edit.add_argument("--params", default=None, help="engine extras as a JSON object")
    edit.add_argument("-o", "--out", required=True, help="output image path (.png, .jpg, .webp)")
    edit.add_argument("--save-mask", default=None, help="also write the mask used to this path")
    _add_common(edit)
    edit.set_defaults(output_format=None)  # the output path's suffix decides

    validate = sub.add_parser("validate", help="check a manifest row by row without editing anything")
    validate.add_argument("manifest")
    validate.add_argument("--quiet", action="store_true", help="print only failing rows and the verdict")
    validate.add_argument("--check-images", action="store_true",
                          help="also read and decode every image, reference and mask file (slower)")
    _add_media(validate)

    manifest = sub.add_parser("manifest", help="build manifests (catalog try-on: every person x garment)")
    kinds = manifest.add_subparsers(dest="kind", required=True)
    tryon = kinds.add_parser(
        "tryon", help="every compatible person x garment pair",
        description="Write a try-on manifest with one row per compatible person x garment pair. Persons and "
                    "garments are Parquet/CSV/JSONL files with id and image (garments also a category; persons "
                    "may list accepted categories in a 'categories' column). Rows come person by person.")
    tryon.add_argument("--persons", required=True, help="table of persons: id, image[, categories]")
    tryon.add_argument("--garments", required=True, help="table of garments: id, image, category")
    tryon.add_argument("--category-column", default="category", help="the garments' category column (default category)")
    tryon.add_argument("--engine", default=None, help="engine for every row (default: the run's)")
    tryon.add_argument("--prompt", default=None, help="prompt for every row")
    tryon.add_argument("-o", "--out", required=True, help="manifest to write (.parquet, .csv or .jsonl)")
    tryon.set_defaults(func=cmd_manifest_tryon)

    report = sub.add_parser("report", help="write an HTML contact sheet of a run: OUT/report/index.html",
                            description="Write OUT/report/index.html (and page-2.html, ...): the run's counts, then "
                                        "one row per result (errors first) with input | mask overlay | output "
                                        "thumbnails, settings and timings, filterable by status, task and engine. "
                                        "OUT may be a local folder or an s3:// / gs:// URI.")
    report.add_argument("out", help="the run's output folder (what run -o wrote)")
    report.add_argument("--page-size", type=int, default=None, help="rows per page (default 200)")
    report.add_argument("--workers", type=int, default=4, help="threads making thumbnails (default 4)")
    report.set_defaults(func=cmd_report)

    from editflow.commands import masks as masks_preview
    from editflow.commands import models as models_cli

    models_cli.add_parser(sub).set_defaults(func=models_cli.run)
    masks_preview.add_parser(sub).set_defaults(func=masks_preview.run)
    run.set_defaults(func=cmd_run)
    edit.set_defaults(func=cmd_edit)
    validate.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ManifestError as exc:
        print(f"editflow: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print("editflow: interrupted; finished rows are kept, continue with --resume", file=sys.stderr)
        return EXIT_FATAL


def _config(args: argparse.Namespace, out_dir: str, base_dir: str, **extra) -> RunConfig:
    settings = dict(
        out_dir=out_dir, base_dir=base_dir, engine=args.engine, model=args.model, device=args.device,
        cpu_threads=args.cpu_threads, output_format=args.output_format, allowed_schemes=("file", *args.allow_scheme),
        allow_private_hosts=args.allow_private_hosts, max_pixels=args.max_pixels,
        sam_checkpoint=args.sam_checkpoint, sam_model_type=args.sam_model_type, sam_refine=args.sam_refine,
        cache=args.cache, **({} if args.quality is None else {"quality": args.quality}),
    )
    return RunConfig(**{**settings, **extra})


def cmd_run(args: argparse.Namespace) -> int:
    from editflow.runners.driver import RunError, run_manifest

    manifest = read_manifest(args.manifest)
    config = _config(args, args.out, manifest.base_dir, batch_size=args.batch_size)
    try:
        summary = run_manifest(manifest, config, executor=args.executor, resume=args.resume,
                               workers=args.workers, rows_per_block=args.rows_per_block, progress=not args.quiet,
                               force_unlock=args.force_unlock)
    except RunError as exc:
        print(f"editflow: {exc}", file=sys.stderr)
        return EXIT_FATAL
    counts = summary["status"]
    print(f"editflow: {summary['rows']} rows: {counts['ok']} ok, {counts['error']} error, "
          f"{summary['missing']} missing ({summary['wall_s']} s, {args.executor})")
    print(f"  images:  {storage.join(args.out, 'images')}")
    print(f"  results: {storage.join(args.out, 'results')}")
    print(f"  summary: {storage.join(args.out, 'summary.json')}")
    for error_type, count in summary["error_types"].items():
        example = summary["error_examples"].get(error_type, "")
        print(f"  {count} x {error_type}: {example}", file=sys.stderr)
    if args.report:
        return max(summary["exit_code"], _write_report(args.out, "  report:  "))
    return summary["exit_code"]


def _write_report(out: str, label: str, **options) -> int:
    from editflow.report import ReportError, build_report

    try:
        report = build_report(out, **options)
    except ReportError as exc:
        print(f"editflow: {exc}", file=sys.stderr)
        return EXIT_FATAL
    print(f"{label}{report.index} ({report.rows} rows, {report.pages} page{'s' * (report.pages != 1)}, "
          f"{report.thumbs_written} new thumbnails)")
    for location in report.unreadable_files:
        print(f"editflow: left out an unreadable result file: {location}", file=sys.stderr)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    options = {} if args.page_size is None else {"page_size": args.page_size}
    return _write_report(args.out, "editflow: report ", workers=args.workers, **options)


def cmd_edit(args: argparse.Namespace) -> int:
    from editflow.media import atomic_write_bytes
    from editflow.runners.local import build_stages
    from editflow.runners.stages import new_row, run_stages
    from editflow.config import format_for_path
    from editflow.media import MediaError

    target = Path(args.out)
    try:
        fmt = format_for_path(args.out, args.output_format)
    except MediaError as exc:
        print(f"editflow: {exc}", file=sys.stderr)
        return EXIT_FATAL
    raw = {
        "id": target.stem or "edit", "task": args.task, "image": args.image, "mask": args.mask,
        "prompt": args.prompt, "negative_prompt": args.negative_prompt, "reference": args.reference,
        "category": args.category, "params": args.params,
        **{k: None if v is None else str(v) for k, v in {
            "seed": args.seed, "steps": args.steps, "strength": args.strength, "guidance_scale": args.guidance_scale,
            "jump_length": args.jump_length, "jump_n_sample": args.jump_n_sample, "mask_grow": args.mask_grow,
            "mask_feather": args.mask_feather}.items()},
    }
    with tempfile.TemporaryDirectory(prefix="editflow-edit-") as scratch:
        config = _config(args, scratch, os.getcwd(), output_format=fmt)
        row = run_stages([new_row(raw, config.run_id)], build_stages(config))[0]
        if row["status"] != "ok":
            print(f"editflow: {row['error_stage']} failed: {row['error_message']}", file=sys.stderr)
            return EXIT_ROW_ERRORS
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, (Path(scratch) / row["output"]).read_bytes())
        if args.save_mask:
            shutil.copyfile(Path(scratch) / row["mask_output"], args.save_mask)
    print(json.dumps({k: row.get(k) for k in ("engine", "task", "seed", "steps", "strength", "nfe", "width", "height",
                                             "mask_area", "unmasked_max_diff", "t_edit_s")}, default=str))
    print(f"editflow: wrote {target}")
    return EXIT_OK


def cmd_manifest_tryon(args: argparse.Namespace) -> int:
    from editflow.commands.manifest_tryon import build_tryon_manifest

    stats = build_tryon_manifest(args.persons, args.garments, args.out, category_column=args.category_column,
                                 engine=args.engine, prompt=args.prompt)
    print(f"editflow: wrote {args.out}: {stats.pairs} pairs of {stats.persons} persons x {stats.garments} garments; "
          f"{stats.incompatible_pairs} incompatible pairs left out")
    if stats.garments_without_category:
        shown = ", ".join(stats.garments_without_category[:10])
        print(f"editflow: {len(stats.garments_without_category)} garment(s) without a valid category left out: {shown}",
              file=sys.stderr)
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from editflow.media import MediaError, MediaPolicy, check_uri_allowed, decode_image, read_bytes, resolve_uri

    manifest = read_manifest(args.manifest)
    # a manifest read from a URI lets its rows use that scheme (see runners/driver.with_manifest_scheme)
    policy = MediaPolicy(allowed_schemes=frozenset(("file", *args.allow_scheme, storage.scheme(manifest.base_dir))),
                         allow_private_hosts=args.allow_private_hosts, max_pixels=args.max_pixels)
    bad = 0
    for raw in manifest.rows():
        try:
            row = parse_row(raw)
            for label, uri in (("image", row.image), ("reference", row.reference), ("mask", row.mask.uri)):
                if uri:
                    resolved = resolve_uri(uri, manifest.base_dir)
                    check_uri_allowed(resolved, policy)
                    if "://" not in resolved and not Path(resolved).is_file():
                        raise RowError(f"{label} not found: {resolved}")
                    if args.check_images:
                        decode_image(read_bytes(resolved, policy), policy, name=uri)
        except (RowError, MediaError) as exc:
            bad += 1
            print(f"error  {raw['id']}: {exc}")
            continue
        if not args.quiet:
            print(f"ok     {raw['id']}")
    if manifest.extra_columns:
        print(f"note: columns not used by editflow: {', '.join(manifest.extra_columns)}", file=sys.stderr)
    print(f"{len(manifest) - bad} ok, {bad} invalid of {len(manifest)} rows")
    return EXIT_ROW_ERRORS if bad else EXIT_OK
