"""Run progress for both executors: one tqdm bar on a terminal, a plain line every N seconds elsewhere.

The runners call a `ProgressFn` as rows complete: ``progress(rows_done, rows_total, ok, errors)``.
`progress_reporter` picks the form from where the lines go:

* a TTY: one tqdm bar, ``editflow: 40%|####  | 200/500 [00:20<00:30, 9.8 rows/s, ok=198, error=2]``;
* anything else (CI logs, ``ray job submit`` logs, a file): a plain line at most every
  ``EDITFLOW_PROGRESS_INTERVAL`` seconds (default 10) and one at the end, with the same figures:
  ``editflow: 200/500 rows (40%), 9.8 rows/s, ETA 0:00:30, ok 198, error 2``.

`--quiet` passes no reporter at all.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from datetime import timedelta
from typing import Callable, Protocol, TextIO

#: seconds between plain progress lines when the output is not a terminal
DEFAULT_INTERVAL_S = 10.0
INTERVAL_ENV = "EDITFLOW_PROGRESS_INTERVAL"


class ProgressFn(Protocol):
    """What a runner calls as rows complete (counts since this run started)."""

    def __call__(self, rows_done: int, rows_total: int, ok: int, errors: int) -> None: ...


def interval_from_env(default: float = DEFAULT_INTERVAL_S) -> float:
    """The plain-line interval: EDITFLOW_PROGRESS_INTERVAL seconds, else `default`."""
    value = os.environ.get(INTERVAL_ENV)
    try:
        return max(0.0, float(value)) if value else default
    except ValueError:
        return default


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(max(0.0, seconds))))


class PlainProgress:
    """A line every `interval` seconds (and at the end) for logs that are not a terminal."""

    def __init__(self, stream: TextIO, interval: float, label: str = "editflow",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.interval, self.label, self.clock = stream, interval, label, clock
        self.started = clock()
        self.last_line: float | None = None  # when the last line was printed

    def __call__(self, rows_done: int, rows_total: int, ok: int, errors: int) -> None:
        now = self.clock()
        since = self.last_line if self.last_line is not None else self.started
        if rows_done < rows_total and now - since < self.interval:
            return  # a line per interval, and always the last one
        self.last_line = now
        self.stream.write(self.line(rows_done, rows_total, ok, errors, now - self.started) + "\n")
        self.stream.flush()

    def line(self, rows_done: int, rows_total: int, ok: int, errors: int, elapsed: float) -> str:
        rate = rows_done / elapsed if elapsed > 0 else 0.0
        percent = 100.0 * rows_done / rows_total if rows_total else 100.0
        eta = _clock((rows_total - rows_done) / rate) if rate > 0 else "?"
        return (f"{self.label}: {rows_done}/{rows_total} rows ({percent:.0f}%), {rate:.2f} rows/s, "
                f"ETA {eta}, ok {ok}, error {errors}")

    def close(self) -> None:
        pass


class BarProgress:
    """One tqdm bar: rows done / total, rows/s, ETA, and the running ok / error counts."""

    def __init__(self, stream: TextIO, label: str = "editflow") -> None:
        from tqdm import tqdm

        # a terminal that reports no size (a bare pty) would hide tqdm's bar: give it 100 x 24
        size = shutil.get_terminal_size((100, 24))
        self.bar = tqdm(total=None, desc=label, unit="rows", file=stream, ncols=size.columns, nrows=size.lines,
                        leave=True)

    def __call__(self, rows_done: int, rows_total: int, ok: int, errors: int) -> None:
        bar = self.bar
        if bar.total != rows_total:
            bar.total = rows_total
        bar.set_postfix({"ok": ok, "error": errors}, refresh=False)
        bar.update(rows_done - bar.n)  # refreshes

    def close(self) -> None:
        self.bar.close()


def progress_reporter(stream: TextIO | None = None, interval: float | None = None,
                      tty: bool | None = None) -> PlainProgress | BarProgress:
    """A progress callback for `stream` (default stderr): a bar on a TTY, plain lines otherwise.

    Call `.close()` when the run ends (it finishes the bar's line)."""
    stream = stream or sys.stderr
    if tty is None:
        tty = bool(getattr(stream, "isatty", lambda: False)())
    if tty:
        return BarProgress(stream)
    return PlainProgress(stream, interval_from_env() if interval is None else interval)
