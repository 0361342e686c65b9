"""The `editflow` command: run a manifest, edit one image, validate a manifest, list models, preview masks.

A thin shell over the Python API (editflow/api.py): `run` and `edit` parse arguments, call it and
print. Exit codes: 0 every row ok, 2 some rows failed, 1 fatal (nothing or not everything could run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from editflow import storage
from editflow.version import __version__
from editflow.config import ENGINE_SWITCHES, OUTPUT_FORMATS
from editflow.engines import DEFAULT_ENGINE, engine_names
from editflow.errors import EditflowError
from editflow.manifest import TASKS, read_manifest
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
    _add_switches(parser)
    _add_media(parser)


def _add_switches(parser: argparse.ArgumentParser) -> None:
    """The diffusers engines' GPU switches; unset = the EDITFLOW_* environment variable, else the default."""
    g = parser.add_argument_group("diffusers engine switches (default: EDITFLOW_* env vars, else off / auto)")
    g.add_argument("--dtype", default=None, choices=("auto", "fp32", "fp16", "bf16"),
                   help="weights dtype (auto: bf16 on compute capability >= 8, fp16 on older GPUs, fp32 on CPU)")
    g.add_argument("--cpu-offload", action="store_true", default=None, help="model CPU offload (CUDA; less GPU memory)")
    g.add_argument("--attention-slicing", action="store_true", default=None,
                   help="sliced classic attention (with --no-sdpa only: SDPA already saves that memory, faster)")
    g.add_argument("--no-sdpa", dest="sdpa", action="store_false", default=None, help="classic attention instead of SDPA")
    g.add_argument("--vae-tiling", action="store_true", default=None, help="tiled VAE (large images)")
    g.add_argument("--micro-batch", type=int, default=None,
                   help="rows per network call (default: 1 on CPU, the whole group on GPU, halved on out-of-memory)")
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the UNet (CUDA; inductor, max-autotune-no-cudagraphs: minutes of warm-up)")
    g.add_argument("--compile-mode", dest="compile", default=None, metavar="NAME",
                   help="torch.compile the UNet with this mode (default, reduce-overhead, max-autotune, "
                        "max-autotune-no-cudagraphs) or backend (e.g. aot_eager: no code generation)")
    g.add_argument("--safety-checker", action="store_true", default=None,
                   help="run the model's safety checker on outputs; flagged rows become NSFWContentError rows")


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show library logs (Ray, MediaPipe, ...) live instead of in a log file")


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
    run.add_argument("--workers", type=int, default=None,
                     help="edit actors on Ray (default: GPUs / --gpus-per-worker, or 1)")
    run.add_argument("--gpus-per-worker", type=float, default=None,
                     help="GPUs per edit actor for diffusers engines (default 1; 0.5 = two actors per GPU; 0 = CPU)")
    run.add_argument("--batch-size", type=int, default=4, help="rows per engine call (default 4)")
    run.add_argument("--rows-per-block", type=int, default=8,
                     help="rows per Ray block: the unit of retry and failure (default 8)")
    run.add_argument("--rows-per-file", type=int, default=None,
                     help="result rows per Parquet file (default 1000; the local executor also writes one a minute)")
    run.add_argument("--resume", action="store_true",
                     help="skip rows already ok in OUT and re-run the rest; takes over the lease of a run that died")
    run.add_argument("--force-unlock", action="store_true",
                     help="take OUT's lease even if another run seems alive (only when you know it is not)")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument("--progress-interval", type=float, default=None, metavar="S",
                     help="seconds between progress lines when stderr is not a terminal "
                          "(default 10, env EDITFLOW_PROGRESS_INTERVAL); a terminal gets a live bar")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan (rows per task and engine, models and whether their weights are here, "
                          "masks to compute) and exit without editing or writing anything")
    run.add_argument("--report", action="store_true", help="also write the HTML report (OUT/report/index.html)")
    _add_verbose(run)
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
    _add_verbose(edit)
    _add_common(edit)
    edit.set_defaults(output_format=None)  # the output path's suffix decides

    validate = sub.add_parser("validate", help="check a manifest row by row without editing anything")
    validate.add_argument("manifest")
    validate.add_argument("--verbose", action="store_true", help="print a line for every row, not only the invalid ones")
    validate.add_argument("--quiet", action="store_true", help="print only invalid rows and the counts (the default)")
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
    _add_verbose(masks_preview.add_parser(sub))
    run.set_defaults(func=cmd_run)
    edit.set_defaults(func=cmd_edit)
    validate.set_defaults(func=cmd_validate)
    return parser


#: commands whose library output (Ray, MediaPipe) goes to a log file unless -v
QUIET_COMMANDS = ("run", "edit", "masks")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _library_logs(args):
            return args.func(args)
    except EditflowError as exc:
        print(f"editflow: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print("editflow: interrupted; finished rows are kept, continue with --resume", file=sys.stderr)
        return EXIT_FATAL


def _switches(args: argparse.Namespace) -> dict:
    """Engine switches: the flags, else the driver's EDITFLOW_* variables (carried to every worker)."""
    from editflow.models import SLICING_NOT_NEEDED, RuntimeOptions, compile_kwargs, compile_setting

    env = RuntimeOptions.from_env()
    switches = {name: getattr(args, name) if getattr(args, name) is not None else env.get(name)
                for name in ENGINE_SWITCHES}
    if switches["compile"] is not None:
        switches["compile"] = compile_setting(switches["compile"])
        if switches["compile"]:
            compile_kwargs(switches["compile"])  # a mode or backend torch does not know stops here, not on every worker
    options = RuntimeOptions.from_options(switches)
    if options.attention_slicing and not options.slices_attention:
        print(f"editflow: {SLICING_NOT_NEEDED}", file=sys.stderr)
    return switches



def _library_logs(args: argparse.Namespace):
    """Library output to a log file (OUT/logs/ for run and masks) for the commands that run models."""
    from editflow.logs import default_log_path, library_logs

    if args.command not in QUIET_COMMANDS or getattr(args, "dry_run", False):
        return contextlib.nullcontext()
    out = args.out if args.command in ("run", "masks") else None
    return library_logs(default_log_path(out), verbose=args.verbose)


def _settings(args: argparse.Namespace) -> dict:
    """The RunConfig settings the common flags give (for the API's Editor and run)."""
    return dict(
        cpu_threads=args.cpu_threads, allowed_schemes=("file", *args.allow_scheme),
        allow_private_hosts=args.allow_private_hosts, max_pixels=args.max_pixels,
        sam_checkpoint=args.sam_checkpoint, sam_model_type=args.sam_model_type, sam_refine=args.sam_refine,
        cache=args.cache, **({} if args.quality is None else {"quality": args.quality}), **_switches(args),
    )


def cmd_run(args: argparse.Namespace) -> int:
    from editflow import api

    if args.dry_run:
        plan = api.plan(args.manifest, engine=args.engine, model=args.model, sam_checkpoint=args.sam_checkpoint)
        print("\n".join(plan.lines()))
        return EXIT_OK if plan.runnable else EXIT_ROW_ERRORS
    summary = api.run(
        args.manifest, args.out, executor=args.executor, resume=args.resume, engine=args.engine, model=args.model,
        device=args.device, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
        rows_per_block=args.rows_per_block, progress=not args.quiet,
        progress_interval=args.progress_interval, verbose=args.verbose, force_unlock=args.force_unlock,
        batch_size=args.batch_size, output_format=args.output_format, rows_per_file=args.rows_per_file,
        **_settings(args),
    )
    print(f"editflow: {summary.rows} rows: {summary.ok} ok, {summary.error} error, "
          f"{summary.missing} missing ({summary.wall_s} s, {args.executor})")
    print(f"  images:  {summary.images}")
    print(f"  results: {summary.results}")
    print(f"  summary: {summary.summary_path}")
    for error_type, count in summary.error_types.items():
        example = summary.error_examples.get(error_type, "")
        print(f"editflow: {count} x {error_type}: {example}", file=sys.stderr)
    if args.report:
        return max(summary.exit_code, _write_report(args.out, "  report:  "))
    return summary.exit_code


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
    import numpy as np

    from editflow import api
    from editflow.config import format_for_path
    from editflow.media import encode_image

    target = Path(args.out)
    fmt = format_for_path(args.out, args.output_format)  # before any work: a contradiction is an error
    options = {k: v for k, v in {
        "steps": args.steps, "strength": args.strength, "guidance_scale": args.guidance_scale,
        "jump_length": args.jump_length, "jump_n_sample": args.jump_n_sample, "mask_grow": args.mask_grow,
        "mask_feather": args.mask_feather, "params": args.params}.items() if v is not None}
    with api.Editor(engine=args.engine, model=args.model, device=args.device, **_settings(args)) as editor:
        try:
            output = editor.edit(args.image, args.mask, args.task, id=target.stem or "edit", prompt=args.prompt,
                                 negative_prompt=args.negative_prompt, reference=args.reference,
                                 category=args.category, seed=args.seed, **options)
        except api.EditFailed as exc:
            print(f"editflow: {exc.stage} failed: {exc.info.get('error_message')}", file=sys.stderr)
            return EXIT_ROW_ERRORS
        output.save(target, output_format=fmt)
        if args.save_mask:
            storage.write_bytes(args.save_mask, encode_image(np.asarray(output.mask), "png"))
    row = output.info
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
    from editflow.media import MediaPolicy
    from editflow.validation import validate_manifest

    manifest = read_manifest(args.manifest)
    # a manifest read from a URI lets its rows use that scheme (see runners/driver.with_manifest_scheme)
    policy = MediaPolicy(allowed_schemes=frozenset(("file", *args.allow_scheme, storage.scheme(manifest.base_dir))),
                         allow_private_hosts=args.allow_private_hosts, max_pixels=args.max_pixels)

    def report(row_id: str, reason: str | None) -> None:
        print(f"error  {row_id}: {reason}" if reason else f"ok     {row_id}")

    counts = validate_manifest(manifest, policy, check_images=args.check_images, report=report,
                               verbose=args.verbose and not args.quiet)
    if manifest.extra_columns:
        print(f"note: columns not used by editflow: {', '.join(manifest.extra_columns)}", file=sys.stderr)
    print(f"{counts.ok} ok, {counts.invalid} invalid of {counts.rows} rows")
    return EXIT_ROW_ERRORS if counts.invalid else EXIT_OK
