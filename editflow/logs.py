"""Quiet by default, loud on request: what reaches the terminal's stderr while a command runs.

editflow's own lines (progress, errors, the closing summary) go to the terminal. Everything the
libraries say goes to a log file instead, whose path is printed once at the end when it holds
anything:

* C++ code (MediaPipe's absl/glog/TFLite lines, Ray's core worker) writes straight to file
  descriptor 2, from its own threads, at any time: fd 2 is pointed at the log file for the whole
  command, and editflow writes through a duplicate of the original descriptor (`sys.stderr`).
* Python loggers (Ray, Ray Data, absl, diffusers...) and warnings: a handler on the root logger
  writes them to the file, and `reroute_library_handlers` moves any handler a library attached to
  the terminal stream since (Ray sets its own up in `ray.init`) to the file too.
* Ray workers' output stays in Ray's own session logs (`log_to_driver=False`, see `ray_init_kwargs`).

With `-v` nothing is redirected: the libraries print live, Ray forwards worker output, and MediaPipe's
C++ logging is not lowered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

#: the file under a run's OUT that takes library logs
RUN_LOG = Path("logs") / "libraries.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class LibraryLog:
    """The capture in force: the log file (None when verbose) and what to restore on exit."""

    path: Path | None
    verbose: bool
    console: IO[str] | None = None  # the terminal's stderr while captured
    handler: logging.Handler | None = None
    moved: list[tuple[logging.StreamHandler, Any]] = field(default_factory=list)


_current: LibraryLog | None = None


def is_verbose() -> bool:
    """True unless a quiet capture is in force (outside any command, libraries speak as usual)."""
    return _current is None or _current.verbose


def default_log_path(out_dir: str | os.PathLike | None) -> Path:
    """OUT/logs/libraries.log for a local OUT; a per-process file in the temp folder otherwise."""
    if out_dir is not None and "://" not in str(out_dir):
        return Path(out_dir) / RUN_LOG
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return Path(tempfile.gettempdir()) / "editflow-logs" / f"{stamp}-{os.getpid()}.log"


def ray_init_kwargs() -> dict[str, Any]:
    """Logging arguments for `ray.init`: worker output only when verbose."""
    return {"log_to_driver": is_verbose()}


def reroute_library_handlers() -> None:
    """Point every non-editflow logging handler that writes to the terminal at the log file.

    Call after a library configures its loggers (Ray does in `ray.init` and on importing ray.data)."""
    capture = _current
    if capture is None or capture.verbose or capture.handler is None:
        return
    loggers = [logging.getLogger()] + [
        logger for name, logger in list(logging.Logger.manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and not name.startswith("editflow")
    ]
    terminal = (capture.console, sys.__stderr__, sys.stdout)
    for logger in loggers:
        for handler in logger.handlers:
            if (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
                    and handler is not capture.handler and handler.stream in terminal):
                capture.moved.append((handler, handler.setStream(capture.handler.stream)))


def _on_fd2(stream: Any) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


@contextlib.contextmanager
def library_logs(path: str | os.PathLike | None, verbose: bool = False) -> Iterator[LibraryLog]:
    """Send library output to `path` (default: a temp file) for the duration; see the module doc."""
    global _current
    if _current is not None:  # nested (the CLI around the API): the outer capture stands
        yield _current
        return
    if verbose:
        os.environ.setdefault("GLOG_minloglevel", "0")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        previous, _current = _current, LibraryLog(path=None, verbose=True)
        try:
            yield _current
        finally:
            _current = previous
        return
    log_path = Path(path) if path is not None else default_log_path(None)
    created = [folder for folder in (log_path.parent, *log_path.parent.parents) if not folder.exists()]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not log_path.exists()  # only a file this command made may be removed when empty
    log_file = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fd = os.dup(2)
    # sys.stderr on fd 2 (a terminal, a pipe): editflow keeps a duplicate of it. Anything else
    # (Jupyter's stream, pytest's capture) does not go through fd 2 and stays as it is.
    owns_console = _on_fd2(sys.stderr)
    console = os.fdopen(os.dup(2), "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                        errors="replace") if owns_console else sys.stderr
    os.dup2(log_file.fileno(), 2)
    previous_stderr, sys.stderr = sys.stderr, console
    handler = logging.StreamHandler(log_file)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(min(previous_level or logging.WARNING, logging.INFO))
    logging.captureWarnings(True)
    previous, _current = _current, LibraryLog(path=log_path, verbose=False, console=console, handler=handler)
    capture = _current
    try:
        reroute_library_handlers()
        yield capture
    finally:
        _current = previous
        logging.captureWarnings(False)
        for moved, stream in reversed(capture.moved):
            moved.setStream(stream)
        root.removeHandler(handler)
        root.setLevel(previous_level)
        console.flush()
        log_file.flush()
        written = os.fstat(log_file.fileno()).st_size
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        sys.stderr = previous_stderr
        if owns_console:
            console.close()
        log_file.close()
        if written:
            print(f"editflow: library logs (MediaPipe, Ray, ...) in {log_path}; -v shows them live", file=sys.stderr)
        elif new_file:
            with contextlib.suppress(OSError):  # leave no trace: a run that failed to start made no OUT
                log_path.unlink()
                for folder in created:  # innermost first; only while empty
                    folder.rmdir()
