"""`editflow report OUT`: a static contact sheet of a run at OUT/report/index.html.

One HTML page per few hundred result rows (index.html, page-2.html, ...), error rows first, each
row showing input | mask overlay | output thumbnails beside its settings and timings, with the
run's counts at the top and filters by status, task and engine (inline CSS and JS, nothing
fetched from elsewhere). Thumbnails are small WebP files under OUT/report/thumbs/, named by the
content they show, so a second report of the same run (or of a resumed one) writes only new ones.

Memory: the results scan (``editflow.results.scan_results``) reads five narrow columns to pick each
id's final row and count statuses, tasks and engines; full rows are then read batch by batch with
pyarrow and held one page at a time. OUT may be a local folder or an object-store URI (s3://,
gs://): all I/O goes through ``editflow.storage``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from editflow import storage
from editflow.errors import EditflowError
from editflow.masks.render import overlay
from editflow.media import MediaError, MediaPolicy, decode_image, encode_image, load_image
from editflow.report_page import Selection, render_page
from editflow.results import _FILE, _ROW, results_dir, scan_results

PAGE_SIZE = 200  # rows per HTML page: a 100,000-row run is 500 light pages
THUMB_PX = 160  # longest side of a thumbnail
THUMB_QUALITY = 80
REPORT_DIR = "report"
THUMBS_DIR = "thumbs"
ROW_COLUMNS = (
    "id", "task", "status", "error_stage", "error_type", "error_message", "image", "output", "mask_output",
    "mask_spec", "prompt", "engine", "model", "seed", "steps", "strength", "guidance_scale", "nfe", "width",
    "height", "input_sha256", "output_sha256", "t_load_s", "t_mask_s", "t_edit_s", "t_write_s", "finished_at",
)
_HEX = re.compile(r"[0-9a-f]{64}")
_BATCH_ROWS = 1024


class ReportError(EditflowError, ValueError):
    """No report can be made (e.g. OUT holds no results); the message says why."""


# ---------------------------------------------------------------- picking rows


def _by_file(table: pa.Table) -> dict[int, np.ndarray]:
    files = table.column(_FILE).to_numpy()
    rows = table.column(_ROW).to_numpy()
    return {int(f): np.sort(rows[files == f]) for f in np.unique(files)}


def _counter(table: pa.Table, column: str) -> Counter:
    counts = pc.value_counts(pc.fill_null(table.column(column), "")).to_pylist() if table.num_rows else []
    return Counter({c["values"]: c["counts"] for c in counts})


def select_rows(out: str) -> Selection:
    """Each id's final row (the results scan's rule: ok beats error, then the later finish), split
    into error rows and the rest, located by file and row number; read from five narrow columns."""
    scan = scan_results(out, ("task", "engine"))
    is_error = pc.fill_null(pc.equal(scan.table.column("status"), "error"), False)
    return Selection(files=scan.files, errors=_by_file(scan.table.filter(is_error)),
                     others=_by_file(scan.table.filter(pc.invert(is_error))), status=_counter(scan.table, "status"),
                     task=_counter(scan.table, "task"), engine=_counter(scan.table, "engine"),
                     unreadable=scan.unreadable)


def stream_rows(files: list[str], wanted: dict[int, np.ndarray]) -> Iterator[dict[str, Any]]:
    """The wanted rows as dicts, file by file, batch by batch (columns a file lacks are None)."""
    for index in sorted(wanted):
        numbers = wanted[index]
        offset = 0
        with storage.open_input_file(files[index]) as f:
            parquet = pq.ParquetFile(f)
            present = [c for c in ROW_COLUMNS if c in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=present):
                lo, hi = np.searchsorted(numbers, [offset, offset + batch.num_rows])
                for row in batch.take(pa.array(numbers[lo:hi] - offset)).to_pylist() if hi > lo else ():
                    yield {c: row.get(c) for c in ROW_COLUMNS}
                offset += batch.num_rows


# ---------------------------------------------------------------- thumbnails


@dataclass
class Thumbnailer:
    """Writes a row's three thumbnails once each; ``existing`` holds the names already there."""

    out: str
    policy: MediaPolicy
    base_dir: str | None
    existing: set[str]
    px: int = THUMB_PX
    written: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def folder(self) -> str:
        return storage.join(self.out, REPORT_DIR, THUMBS_DIR)

    def row(self, row: dict[str, Any]) -> dict[str, str | None]:
        """Relative paths (from the report folder) of the row's input, overlay and output thumbnails."""
        names: dict[str, str | None] = {"input": None, "mask": None, "output": None}
        input_key = row.get("input_sha256") if _HEX.fullmatch(row.get("input_sha256") or "") else None
        if input_key:
            names["input"] = f"in-{input_key[:24]}.webp"
            if row.get("mask_output"):
                tag = f"{input_key}|{row['mask_output']}|{row.get('finished_at')}"
                names["mask"] = f"mask-{hashlib.sha256(tag.encode()).hexdigest()[:24]}.webp"
        if _HEX.fullmatch(row.get("output_sha256") or "") and row.get("output"):
            names["output"] = f"out-{row['output_sha256'][:24]}.webp"
        with self._lock:  # claim the missing names: rows sharing an input write its thumbnail once
            todo = {k: v for k, v in names.items() if v and v not in self.existing}
            self.existing.update(todo.values())
        try:
            self._make(row, todo)
        except (MediaError, OSError, ValueError):  # e.g. an input moved since the run: no thumbnail, no failure
            with self._lock:
                self.existing.difference_update(todo.values())
            for kind in todo:
                names[kind] = None
        return {k: f"{THUMBS_DIR}/{v}" if v else None for k, v in names.items()}

    def _make(self, row: dict[str, Any], todo: dict[str, str]) -> None:
        if "input" in todo or "mask" in todo:
            small = self._thumb(load_image(row["image"], self.policy, self.base_dir).array)
            if "input" in todo:
                self._save(todo["input"], small)
            if "mask" in todo:
                grey = self._read_out(row["mask_output"])[..., 0]
                mask = Image.fromarray(grey).resize(small.shape[1::-1], Image.Resampling.BILINEAR)
                self._save(todo["mask"], overlay(small, np.asarray(mask, np.float32) / 255.0))
        if "output" in todo:
            self._save(todo["output"], self._thumb(self._read_out(row["output"])))

    def _read_out(self, relative: str) -> np.ndarray:
        """A file the run wrote, by its name in the results (refused if it points outside OUT)."""
        return decode_image(storage.read_bytes(storage.child(self.out, relative)), self.policy).array

    def _thumb(self, array: np.ndarray) -> np.ndarray:
        image = Image.fromarray(array)
        image.thumbnail((self.px, self.px), Image.Resampling.LANCZOS, reducing_gap=2.0)
        return np.asarray(image)

    def _save(self, name: str, array: np.ndarray) -> None:
        _publish(storage.join(self.folder, name), encode_image(array, "webp", quality=THUMB_QUALITY), "image/webp")
        with self._lock:  # pages make their thumbnails on a thread pool
            self.written += 1


# ---------------------------------------------------------------- the report


@dataclass
class Report:
    """Where the report went and what it holds."""

    index: str
    rows: int
    pages: int
    thumbs_written: int
    unreadable_files: list[str]


def page_name(number: int) -> str:
    """index.html for page 1, page-N.html after it."""
    return "index.html" if number == 1 else f"page-{number}.html"


def _summary(out: str) -> dict[str, Any]:
    try:
        return json.loads(storage.read_bytes(storage.join(out, "summary.json")))
    except (OSError, ValueError):  # no summary yet (a run going on, or killed): the results suffice
        return {}


def _policy(summary: dict[str, Any]) -> MediaPolicy:
    """The run's own media policy (what it was allowed to read), from summary.json."""
    config = summary.get("config") or {}
    known = {k: config[k] for k in ("allowed_schemes", "allow_private_hosts", "max_pixels", "max_bytes") if k in config}
    return MediaPolicy(**known)


def _base_dir(summary: dict[str, Any]) -> str | None:
    """Where the run's relative image paths resolve from: the manifest's folder."""
    return storage.parent(summary["manifest"]) if summary.get("manifest") else None


def build_report(out: str, *, page_size: int = PAGE_SIZE, thumb_px: int = THUMB_PX, workers: int = 4) -> Report:
    """Write OUT/report/index.html (+ page-N.html, thumbs/) for the results under ``out``."""
    if page_size < 1:
        raise ReportError(f"page_size must be at least 1, got {page_size}")
    out = str(out)
    summary = _summary(out)
    selection = select_rows(out)
    if not selection.files:
        raise ReportError(f"no result files in {results_dir(out)}: is {out} the -o folder of an editflow run?")
    pages = max(1, math.ceil(selection.rows / page_size))
    error_pages = math.ceil(selection.status.get("error", 0) / page_size)
    folder = storage.join(out, REPORT_DIR, THUMBS_DIR)
    storage.makedirs(folder)
    existing = {location.rsplit("/", 1)[-1] for location in storage.list_files(folder)}
    thumbs = Thumbnailer(out, _policy(summary), _base_dir(summary), existing, px=thumb_px)
    header = {"summary": summary, "selection": selection, "error_pages": error_pages}

    def rows() -> Iterator[dict[str, Any]]:
        yield from stream_rows(selection.files, selection.errors)
        yield from stream_rows(selection.files, selection.others)

    number, chunk = 1, []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for row in rows():
            chunk.append(row)
            if len(chunk) == page_size:
                _write_page(out, number, pages, chunk, list(pool.map(thumbs.row, chunk)), header)
                number, chunk = number + 1, []
        if chunk or number == 1:
            _write_page(out, number, pages, chunk, list(pool.map(thumbs.row, chunk)), header)
    for location in storage.list_files(storage.join(out, REPORT_DIR), ".html"):  # pages of an earlier, longer report
        match = re.fullmatch(r"page-(\d+)\.html", location.rsplit("/", 1)[-1])
        if match and int(match.group(1)) > pages:
            storage.delete(location)
    return Report(index=storage.join(out, REPORT_DIR, "index.html"), rows=selection.rows, pages=pages,
                  thumbs_written=thumbs.written, unreadable_files=selection.unreadable)


def _write_page(out: str, number: int, pages: int, rows: list[dict], thumbs: list[dict], header: dict) -> None:
    html = render_page(number=number, pages=pages, rows=rows, thumbs=thumbs, page_name=page_name, **header)
    _publish(storage.join(out, REPORT_DIR, page_name(number)), html.encode("utf-8"), "text/html; charset=utf-8")


def _publish(location: str, data: bytes, content_type: str) -> None:
    """Write one report file. On object stores it gets its Content-Type, so a bucket served as a
    static site (or a signed URL) shows the page instead of downloading it."""
    if storage.is_local(location):
        storage.write_bytes(location, data, durable=False)  # a lost page or thumbnail is remade next time
        return
    filesystem, path = storage.resolve(location)
    try:
        with filesystem.open_output_stream(path, metadata={"Content-Type": content_type}) as stream:
            stream.write(data)
    except Exception as exc:
        raise storage.StorageError(f"cannot write {storage.redact(location)}: {exc}") from None
