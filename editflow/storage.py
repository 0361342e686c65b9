"""One filesystem layer: local paths, ``file://``, ``s3://``, ``gs://`` and any URI pyarrow.fs or fsspec knows.

A *location* is a plain string: a local path (relative or absolute), or a URI ``scheme://...``.
``resolve`` turns it into a ``(pyarrow FileSystem, path)`` pair; everything else here is built on that
pair, so no code outside this module branches on the scheme.

Credentials and endpoints come the standard way of each backend: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_DEFAULT_REGION`` / ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``)
for S3, Google's application-default credentials for GCS. pyarrow 26 honours the endpoint variables
when it resolves a URI (``FileSystem.from_uri``) but not in a bare ``S3FileSystem()``, which is why
filesystems are only ever made from URIs here.

Writes (``write_bytes``) are whole-object: a temp file + fsync + rename on local disk, a single PUT on
object stores (an object appears complete or not at all). Names are the caller's, so a retried write
of the same name replaces the object instead of adding a second one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import posixpath
import re
import threading
import uuid
from typing import BinaryIO
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pyarrow.fs as pafs

from editflow.errors import EditflowError

__all__ = [
    "StorageError", "StorageNotFound", "absolute", "child", "delete", "exists", "is_dir", "is_file", "is_local", "join",
    "list_files", "local_path", "makedirs", "move", "open_input", "open_output", "parent", "read_bytes",
    "relative_to", "resolve", "scheme", "write_bytes",
]

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Object stores whose pyarrow path is "<bucket>/<key>": their filesystem is cached per bucket.
_BUCKET_SCHEMES = frozenset({"s3", "gs", "gcs"})
_LOCAL = pafs.LocalFileSystem()
_lock = threading.Lock()


class StorageError(EditflowError, OSError):
    """A location cannot be resolved, read or written; the message names it."""


class StorageNotFound(StorageError, FileNotFoundError):
    """Nothing exists at the location."""


def scheme(location: str | os.PathLike) -> str:
    """The URI scheme in lower case; ``"file"`` for local paths and ``file://`` URIs."""
    m = _SCHEME_RE.match(str(location))
    return m.group(1).lower() if m else "file"


def is_local(location: str | os.PathLike) -> bool:
    """True for local paths and ``file://`` URIs."""
    return scheme(location) == "file"


def local_path(location: str | os.PathLike) -> str:
    """The local path of a local location (``file://`` URIs decoded); StorageError for remote ones."""
    text = os.fspath(location)
    if not _SCHEME_RE.match(text):
        return text
    if scheme(text) != "file":
        raise StorageError(f"not a local path: {text}")
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise StorageError(f"file:// URI with a remote host is not supported: {text}")
    return url2pathname(parts.path)


def absolute(location: str | os.PathLike) -> str:
    """Local locations as absolute paths; URIs unchanged."""
    return os.path.abspath(local_path(location)) if is_local(location) else os.fspath(location)


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it for a location (local path or any URI)."""
    text = os.fspath(location)
    if is_local(text):
        return _LOCAL, os.path.abspath(local_path(text))
    parts = urlsplit(text, allow_fragments=False)  # "#" may be part of a key
    kind = parts.scheme.lower()
    if kind in _BUCKET_SCHEMES:
        if not parts.netloc:
            raise StorageError(f"{kind}:// URI without a bucket: {text}")
        filesystem = _bucket_filesystem(kind, parts.netloc, parts.query, _endpoint_env())
        return filesystem, (parts.netloc + parts.path).rstrip("/")
    try:
        return pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as exc:  # ArrowInvalid is a ValueError
        native_error = exc
    try:
        return _fsspec(kind, text)
    except ImportError:
        pass
    except Exception as exc:  # fsspec raises its own types per backend
        raise StorageError(f"cannot open {redact(text)}: {exc}") from None
    raise StorageError(f"no filesystem for {redact(text)}: {native_error}")


def _endpoint_env() -> tuple[str | None, ...]:
    """The variables that change which server a bucket name means (part of the cache key)."""
    return tuple(os.environ.get(n) for n in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
                                              "AWS_PROFILE", "STORAGE_EMULATOR_HOST"))


@functools.lru_cache(maxsize=64)
def _bucket_filesystem(kind: str, bucket: str, query: str, env: tuple[str | None, ...]) -> pafs.FileSystem:
    """One filesystem per bucket and process: pyarrow looks the bucket's region up when it is made."""
    uri = f"{kind}://{bucket}/" + (f"?{query}" if query else "")
    with _lock:
        try:
            return pafs.FileSystem.from_uri(uri)[0]
        except Exception as exc:
            raise StorageError(f"cannot open {kind}://{bucket}: {exc}") from None


def _fsspec(kind: str, text: str) -> tuple[pafs.FileSystem, str]:
    import fsspec

    filesystem = fsspec.filesystem(kind)
    path = filesystem._strip_protocol(text)
    return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem)), path


def redact(location: str) -> str:
    """A location for messages: no credentials or query string."""
    if is_local(location):
        return location
    parts = urlsplit(location)
    return f"{parts.scheme}://{parts.hostname or ''}{parts.path}"


# ---------------------------------------------------------------- names


def join(base: str | os.PathLike, *names: str) -> str:
    """``base/name/...``: ``os.path.join`` locally, ``/``-joined for URIs (no normalisation)."""
    text = os.fspath(base)
    if not _SCHEME_RE.match(text):
        return os.path.join(text, *names)
    return "/".join([text.rstrip("/"), *(n.strip("/") for n in names)])


def parent(location: str | os.PathLike) -> str:
    """The folder holding a location: an absolute local path, or the URI of its parent."""
    text = os.fspath(location)
    if is_local(text):
        return os.path.dirname(os.path.abspath(local_path(text)))
    parts = urlsplit(text, allow_fragments=False)
    return f"{parts.scheme}://{parts.netloc}{posixpath.dirname(parts.path.rstrip('/'))}"


def relative_to(base_dir: str | os.PathLike, name: str) -> str:
    """Resolve ``name`` (a relative path from a manifest) against ``base_dir``.

    Locally this is ``os.path.join`` (as before). Under a URI the path is normalised and may not
    climb above the bucket (``s3://b/m/../../other`` is refused): a remote manifest's relative
    paths stay in the manifest's own bucket.
    """
    base = os.fspath(base_dir)
    if not _SCHEME_RE.match(base):
        return os.path.join(base, name)
    parts = urlsplit(base, allow_fragments=False)
    if name.startswith("/"):
        raise StorageError(f"refusing absolute path {name!r} relative to {redact(base)}")
    kept: list[str] = []
    for part in [*parts.path.split("/"), *name.split("/")]:
        if part == "..":
            if not kept:  # normpath would silently clamp at the root; refuse instead
                raise StorageError(f"refusing path {name!r}: it climbs above {parts.scheme}://{parts.netloc}")
            kept.pop()
        elif part not in ("", "."):
            kept.append(part)
    return f"{parts.scheme}://{parts.netloc}/" + "/".join(kept)


def child(root: str | os.PathLike, name: str) -> str:
    """``root/name`` guaranteed to lie inside ``root``: refuses empty names, NUL bytes, absolute
    names, ``..`` and (locally) anything that resolves outside ``root`` through symlinks."""
    text = os.fspath(root)
    if not name or "\x00" in name:
        raise StorageError(f"bad path name {name!r}")
    if pathlib.PurePosixPath(name).is_absolute() or pathlib.PureWindowsPath(name).drive or name.startswith("\\"):
        raise StorageError(f"refusing absolute path {name!r} (must be relative to {redact(text)})")
    if is_local(text):
        base = pathlib.Path(local_path(text)).resolve()
        target = (base / name).resolve()
        if target == base or not target.is_relative_to(base):
            raise StorageError(f"refusing path {name!r}: it resolves outside {base}")
        return str(target)
    if any(part in ("", ".", "..") for part in name.replace("\\", "/").split("/")):
        raise StorageError(f"refusing path {name!r}: it must stay inside {redact(text)}")
    return join(text, name)


# ---------------------------------------------------------------- reads


def _info(location: str) -> pafs.FileInfo:
    filesystem, path = resolve(location)
    try:
        return filesystem.get_file_info(path)
    except Exception as exc:
        raise StorageError(f"cannot access {redact(location)}: {exc}") from None


def exists(location: str | os.PathLike) -> bool:
    """True when a file or folder exists at the location (on object stores: an object or a prefix)."""
    return _info(os.fspath(location)).type != pafs.FileType.NotFound


def is_file(location: str | os.PathLike) -> bool:
    return _info(os.fspath(location)).type == pafs.FileType.File


def is_dir(location: str | os.PathLike) -> bool:
    return _info(os.fspath(location)).type == pafs.FileType.Directory


def size(location: str | os.PathLike) -> int | None:
    """Size in bytes of a file; None when it does not exist."""
    info = _info(os.fspath(location))
    return info.size if info.type == pafs.FileType.File else None


def read_bytes(location: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The whole content of a file (at most ``max_bytes + 1`` bytes are read when a cap is given)."""
    text = os.fspath(location)
    filesystem, path = resolve(text)
    try:
        with filesystem.open_input_stream(path) as stream:
            data = stream.read() if max_bytes is None else stream.read(max_bytes + 1)
    except FileNotFoundError:
        raise StorageNotFound(f"not found: {redact(text)}") from None
    except Exception as exc:
        raise StorageError(f"cannot read {redact(text)}: {exc}") from None
    return bytes(data)


def open_input(location: str | os.PathLike) -> BinaryIO:
    """A readable binary stream (sequential; pyarrow NativeFile)."""
    filesystem, path = resolve(location)
    return filesystem.open_input_stream(path)


def open_input_file(location: str | os.PathLike) -> BinaryIO:
    """A seekable binary file (for Parquet footers)."""
    filesystem, path = resolve(location)
    return filesystem.open_input_file(path)


def list_files(folder: str | os.PathLike, suffix: str = "") -> list[str]:
    """Locations of the files directly inside ``folder`` ending in ``suffix``, sorted; [] if absent.
    Hidden names (``.x``, temp files of a write in flight) are left out."""
    text = os.fspath(folder)
    filesystem, path = resolve(text)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except NotADirectoryError:
        return []
    except Exception as exc:
        raise StorageError(f"cannot list {redact(text)}: {exc}") from None
    names = sorted(i.base_name for i in infos
                   if i.type == pafs.FileType.File and i.base_name.endswith(suffix) and not i.base_name.startswith("."))
    return [join(text, n) for n in names]


# ---------------------------------------------------------------- writes


def makedirs(location: str | os.PathLike) -> None:
    """Create a local folder and its parents; object stores have no folders, so nothing there."""
    if is_local(location):
        os.makedirs(local_path(location), exist_ok=True)


def write_bytes(location: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` as the whole new content of ``location``, atomically.

    Local: a temp file in the same folder, flushed (and fsynced when ``durable``), then ``os.replace``;
    the temp file is removed if anything fails. Object stores: one PUT (an object appears complete or
    not at all). Either way a reader sees the old content or the new, never a part.
    """
    text = os.fspath(location)
    if is_local(text):
        _write_local(pathlib.Path(local_path(text)), data, durable)
        return
    filesystem, path = resolve(text)
    try:
        with filesystem.open_output_stream(path) as stream:
            stream.write(data)
    except Exception as exc:
        raise StorageError(f"cannot write {redact(text)}: {exc}") from None


def _write_local(dst: pathlib.Path, data: bytes, durable: bool) -> None:
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        sync_dir(dst.parent)


def sync_dir(folder: str | os.PathLike) -> None:
    """Persist renames in a local folder (best effort; no-op for object stores)."""
    if not is_local(folder):
        return
    try:
        dir_fd = os.open(local_path(folder), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def create_exclusive(location: str | os.PathLike, data: bytes) -> bool:
    """Create a *local* file only if it does not exist (``O_EXCL``); False when it already does."""
    path = local_path(location)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


def open_output(location: str | os.PathLike) -> BinaryIO:
    """A writable stream (not atomic locally; on object stores the object appears on close)."""
    filesystem, path = resolve(location)
    return filesystem.open_output_stream(path)


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename (``os.replace`` locally; copy + delete on object stores)."""
    if is_local(src) and is_local(dst):
        os.replace(local_path(src), local_path(dst))
        return
    filesystem, src_path = resolve(src)
    _, dst_path = resolve(dst)
    try:
        filesystem.move(src_path, dst_path)
    except Exception as exc:
        raise StorageError(f"cannot move {redact(os.fspath(src))} to {redact(os.fspath(dst))}: {exc}") from None


def delete(location: str | os.PathLike, missing_ok: bool = True) -> None:
    """Delete one file."""
    filesystem, path = resolve(location)
    try:
        filesystem.delete_file(path)
    except FileNotFoundError:
        if not missing_ok:
            raise StorageError(f"not found: {redact(os.fspath(location))}") from None
    except Exception as exc:
        if missing_ok and filesystem.get_file_info(path).type == pafs.FileType.NotFound:
            return
        raise StorageError(f"cannot delete {redact(os.fspath(location))}: {exc}") from None
