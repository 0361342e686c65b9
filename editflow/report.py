"""`editflow report OUT`: a static contact sheet of a run at OUT/report/index.html.

One HTML page per few hundred result rows (index.html, page-2.html, ...), error rows first, each
row showing input | mask overlay | output thumbnails beside its settings and timings, with the
run's counts at the top and filters by status, task and engine (inline CSS and JS, nothing
fetched from elsewhere). Thumbnails are small WebP files under OUT/report/thumbs/, named by the
content they show, so a second report of the same run (or of a resumed one) writes only new ones.

Memory stays bounded by a page: results are read batch by batch with pyarrow, first only the
columns that pick each id's final row (the same rule as ``editflow.results``), then page by page.
OUT may be a local folder or an object-store URI (s3://, gs://); see ``_read``/``_write``.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from editflow.errors import EditflowError
from editflow.masks.preview import overlay
from editflow.media import MediaError, MediaPolicy, decode_image, encode_image, load_image
from editflow.report_page import render_page

PAGE_SIZE = 200  # rows per HTML page: a 100,000-row run is 500 light pages
THUMB_PX = 160  # longest side of a thumbnail
THUMB_QUALITY = 80
REPORT_DIR = "report"
THUMBS_DIR = "thumbs"
PICK_COLUMNS = ("id", "status", "task", "engine", "finished_at")
ROW_COLUMNS = (
    "id", "task", "status", "error_stage", "error_type", "error_message", "image", "output", "mask_output",
    "mask_spec", "prompt", "engine", "model", "seed", "steps", "strength", "guidance_scale", "nfe", "width",
    "height", "input_sha256", "output_sha256", "t_load_s", "t_mask_s", "t_edit_s", "t_write_s", "finished_at",
)
_HEX = re.compile(r"[0-9a-f]{64}")
_BATCH_ROWS = 1024


class ReportError(EditflowError, ValueError):
    """No report can be made (e.g. OUT holds no results); the message says why."""


# ---------------------------------------------------------------- storage seam
# Local paths and s3:// / gs:// URIs through pyarrow.fs, the same calls editflow/storage.py makes.


def _resolve(location: str) -> tuple[pafs.FileSystem, str]:
    if "://" in location and not location.startswith("file://"):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(pafs.LocalFileSystem().normalize_path(_local(location)))


def _local(location: str) -> str:
    import os

    return os.path.abspath(location.removeprefix("file://"))


def _join(base: str, *names: str) -> str:
    return "/".join([base.rstrip("/"), *names]) if "://" in base else posixpath.join(_local(base), *names)


def _read(location: str) -> bytes:
    filesystem, path = _resolve(location)
    with filesystem.open_input_stream(path) as stream:
        return bytes(stream.read())


def _write(location: str, data: bytes) -> None:
    filesystem, path = _resolve(location)
    if isinstance(filesystem, pafs.LocalFileSystem):
        from editflow.media import atomic_write_bytes

        filesystem.create_dir(posixpath.dirname(path), recursive=True)
        atomic_write_bytes(path, data)
        return
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def _list(folder: str, suffix: str = "") -> list[str]:
    """Names of the files directly in ``folder`` ending in ``suffix`` (sorted; [] when absent)."""
    filesystem, path = _resolve(folder)
    infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File
                  and i.base_name.endswith(suffix) and not i.base_name.startswith("."))


def _open_parquet(location: str) -> pq.ParquetFile:
    filesystem, path = _resolve(location)
    return pq.ParquetFile(filesystem.open_input_file(path))


# ---------------------------------------------------------------- picking rows


@dataclass
class Selection:
    """Which row of which result file each id ends as, errors first; and the run's counts."""

    errors: dict[int, np.ndarray] = field(default_factory=dict)  # file index -> sorted row numbers
    others: dict[int, np.ndarray] = field(default_factory=dict)
    status: Counter = field(default_factory=Counter)
    task: Counter = field(default_factory=Counter)
    engine: Counter = field(default_factory=Counter)
    unreadable: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(self.status.values())


def _batches(parquet: pq.ParquetFile, wanted: tuple[str, ...]) -> Iterator[pa.RecordBatch]:
    """Record batches with the ``wanted`` columns (missing ones null, e.g. in older result files)."""
    present = [c for c in wanted if c in parquet.schema_arrow.names]
    for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=present):
        arrays = [batch.column(c) if c in present else pa.nulls(batch.num_rows) for c in wanted]
        yield pa.RecordBatch.from_arrays(arrays, names=list(wanted))


def select_rows(files: list[str]) -> Selection:
    """Pick each id's final row (ok beats error, then the later finish), reading only five columns."""
    best: dict[str, tuple[tuple[bool, int], int, int, str, str, str]] = {}
    selection = Selection()
    for index, location in enumerate(files):
        try:
            parquet = _open_parquet(location)
        except Exception:  # a truncated file (e.g. a killed writer): set aside, as the runners do
            selection.unreadable.append(location)
            continue
        offset = 0
        for batch in _batches(parquet, PICK_COLUMNS):
            finished = batch.column("finished_at").cast(pa.int64()).to_pylist()
            ids, statuses, tasks, engines = (batch.column(c).to_pylist() for c in ("id", "status", "task", "engine"))
            for i, (row_id, status) in enumerate(zip(ids, statuses)):
                key = (status == "ok", finished[i] if finished[i] is not None else -1)
                current = best.get(row_id)
                if current is None or key >= current[0]:
                    best[row_id] = (key, index, offset + i, status, tasks[i] or "", engines[i] or "")
            offset += batch.num_rows
    errors: dict[int, list[int]] = {}
    others: dict[int, list[int]] = {}
    for _, index, number, status, task, engine in best.values():
        (errors if status == "error" else others).setdefault(index, []).append(number)
        selection.status[status] += 1
        selection.task[task] += 1
        selection.engine[engine] += 1
    selection.errors = {i: np.sort(np.asarray(v, np.int64)) for i, v in errors.items()}
    selection.others = {i: np.sort(np.asarray(v, np.int64)) for i, v in others.items()}
    return selection


def stream_rows(files: list[str], wanted: dict[int, np.ndarray]) -> Iterator[dict[str, Any]]:
    """The wanted rows as dicts, file by file, batch by batch."""
    for index in sorted(wanted):
        numbers = wanted[index]
        offset = 0
        for batch in _batches(_open_parquet(files[index]), ROW_COLUMNS):
            lo, hi = np.searchsorted(numbers, [offset, offset + batch.num_rows])
            if hi > lo:
                yield from batch.take(pa.array(numbers[lo:hi] - offset)).to_pylist()
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
        return _join(self.out, REPORT_DIR, THUMBS_DIR)

    def row(self, row: dict[str, Any]) -> dict[str, str | None]:
        """Relative paths (from the report folder) of the row's input, overlay and output thumbnails."""
        names: dict[str, str | None] = {"input": None, "mask": None, "output": None}
        input_key = row.get("input_sha256") if _HEX.fullmatch(row.get("input_sha256") or "") else None
        if input_key:
            names["input"] = f"in-{input_key[:24]}.webp"
            if _inside_out(row.get("mask_output")):
                tag = f"{input_key}|{row['mask_output']}|{row.get('finished_at')}"
                names["mask"] = f"mask-{hashlib.sha256(tag.encode()).hexdigest()[:24]}.webp"
        if _HEX.fullmatch(row.get("output_sha256") or "") and _inside_out(row.get("output")):
            names["output"] = f"out-{row['output_sha256'][:24]}.webp"
        with self._lock:  # claim the missing names: rows sharing an input write its thumbnail once
            todo = {k: v for k, v in names.items() if v and v not in self.existing}
            self.existing.update(todo.values())
        try:
            self._make(row, todo)
        except (MediaError, OSError, ValueError):  # an input moved since the run: no thumbnail, no failure
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
                grey = decode_image(_read(_join(self.out, row["mask_output"])), self.policy).array[..., 0]
                mask = Image.fromarray(grey).resize(small.shape[1::-1], Image.Resampling.BILINEAR)
                self._save(todo["mask"], overlay(small, np.asarray(mask, np.float32) / 255.0))
        if "output" in todo:
            output = decode_image(_read(_join(self.out, row["output"])), self.policy).array
            self._save(todo["output"], self._thumb(output))

    def _thumb(self, array: np.ndarray) -> np.ndarray:
        image = Image.fromarray(array)
        image.thumbnail((self.px, self.px), Image.Resampling.LANCZOS, reducing_gap=2.0)
        return np.asarray(image)

    def _save(self, name: str, array: np.ndarray) -> None:
        _write(_join(self.folder, name), encode_image(array, "webp", quality=THUMB_QUALITY))
        with self._lock:  # pages make their thumbnails on a thread pool
            self.written += 1


def _inside_out(relative: str | None) -> bool:
    """A result's file name stays inside OUT (no absolute path, no '..')."""
    if not relative or "\x00" in relative or relative.startswith(("/", "\\")) or "://" in relative:
        return False
    return all(part not in ("", ".", "..") for part in relative.replace("\\", "/").split("/"))


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
        return json.loads(_read(_join(out, "summary.json")))
    except (OSError, ValueError):  # a run still going, or killed: the results alone still make a report
        return {}


def _policy(summary: dict[str, Any]) -> MediaPolicy:
    """The run's own media policy (what it was allowed to read), from summary.json."""
    config = summary.get("config") or {}
    known = {k: config[k] for k in ("allowed_schemes", "allow_private_hosts", "max_pixels", "max_bytes") if k in config}
    return MediaPolicy(**known)


def _base_dir(summary: dict[str, Any]) -> str | None:
    manifest = summary.get("manifest")
    if not manifest:
        return None
    return manifest.rsplit("/", 1)[0] if "://" in manifest else posixpath.dirname(_local(manifest))


def build_report(out: str, *, page_size: int = PAGE_SIZE, thumb_px: int = THUMB_PX, workers: int = 4) -> Report:
    """Write OUT/report/index.html (+ page-N.html, thumbs/) for the results under ``out``."""
    if page_size < 1:
        raise ReportError(f"page_size must be at least 1, got {page_size}")
    out = str(out)
    summary = _summary(out)
    results = _join(out, "results")
    files = [_join(results, name) for name in _list(results, ".parquet")]
    if not files:
        raise ReportError(f"no result files in {results}: is {out} the -o folder of an editflow run?")
    selection = select_rows(files)
    pages = max(1, math.ceil(selection.rows / page_size))
    error_pages = math.ceil(selection.status.get("error", 0) / page_size)
    thumbs = Thumbnailer(out, _policy(summary), _base_dir(summary), set(_list(_join(out, REPORT_DIR, THUMBS_DIR))),
                         px=thumb_px)
    header = {"summary": summary, "selection": selection, "error_pages": error_pages}

    def rows() -> Iterator[dict[str, Any]]:
        yield from stream_rows(files, selection.errors)
        yield from stream_rows(files, selection.others)

    number, chunk = 1, []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for row in rows():
            chunk.append(row)
            if len(chunk) == page_size:
                _write_page(out, number, pages, chunk, list(pool.map(thumbs.row, chunk)), header)
                number, chunk = number + 1, []
        if chunk or number == 1:
            _write_page(out, number, pages, chunk, list(pool.map(thumbs.row, chunk)), header)
    return Report(index=_join(out, REPORT_DIR, "index.html"), rows=selection.rows, pages=pages,
                  thumbs_written=thumbs.written, unreadable_files=selection.unreadable)


def _write_page(out: str, number: int, pages: int, rows: list[dict], thumbs: list[dict], header: dict) -> None:
    html = render_page(number=number, pages=pages, rows=rows, thumbs=thumbs, page_name=page_name, **header)
    _write(_join(out, REPORT_DIR, page_name(number)), html.encode("utf-8"))
