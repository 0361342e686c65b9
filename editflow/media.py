"""Safe image I/O: URI resolution, fetch caps, SSRF guard, decompression-bomb guard,
EXIF orientation, mode normalisation, deterministic encoding, atomic writes, safe names.

Manifest values are attacker-controllable, so everything here fails closed with a
``MediaError`` whose message a person can act on (see /work/shared/research/ray_batch.md §5).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import ipaddress
import os
import pathlib
import re
import socket
import ssl
import stat
import time
import warnings
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit
from urllib.request import url2pathname

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from editflow import storage
from editflow.errors import EditflowError

__all__ = [
    "DEFAULT_QUALITY", "DecodedImage", "MediaError", "MediaPolicy", "decode_image",
    "encode_image", "load_image", "load_mask_file", "read_bytes", "resolve_uri",
    "safe_join", "safe_output_name", "sha256_hex",
]

# Formats Pillow may open. Deliberately excludes EPS/PDF-style plugins that shell out.
DECODE_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_MAX_REDIRECTS = 5
DEFAULT_QUALITY = 95  # JPEG/WebP quality of outputs unless --quality says otherwise
EXIF_IFD = 0x8769  # the Exif sub-IFD, where UserComment lives
USER_COMMENT = 0x9286


class MediaError(EditflowError, ValueError):
    """A bad input image/URI/path; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class MediaPolicy:
    """What the loaders may touch. Defaults are the safe choice for untrusted manifests."""

    allowed_schemes: frozenset[str] = frozenset({"file"})  # "file" = local paths and file:// URIs
    allow_private_hosts: bool = False  # http(s) to loopback/private/link-local/CGNAT/... refused
    max_bytes: int = 64 * 2**20
    max_pixels: int = 50_000_000  # checked on the header size, before decoding
    timeout_s: float = 30.0
    local_root: str | None = None  # if set, local reads must resolve inside it (symlinks too)

    def __post_init__(self) -> None:  # accept any iterable / case of scheme names
        schemes = frozenset(s.lower().removesuffix("://") for s in self.allowed_schemes)
        object.__setattr__(self, "allowed_schemes", schemes)


@dataclass
class DecodedImage:
    array: np.ndarray  # (H, W, 3) uint8 RGB, orientation applied
    source_mode: str
    source_size: tuple[int, int]  # (w, h) before orientation
    exif_orientation: int | None
    frames: int
    icc_profile: bytes | None = None  # the source's RGB ICC profile, kept for the output


def _rgb_icc(im: Image.Image) -> bytes | None:
    """The image's ICC profile if it describes RGB data (the decoded array is RGB; a CMYK or
    grey profile would mislabel it). Bytes 16-19 of an ICC header name its colour space."""
    icc = im.info.get("icc_profile")
    return bytes(icc) if isinstance(icc, (bytes, bytearray)) and icc[16:20] == b"RGB " else None


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _redact(uri: str) -> str:
    """URI for messages: no credentials, no query (may hold signed tokens), bounded length."""
    m = _SCHEME_RE.match(uri)
    if m and m.group(1).lower() != "file":
        p = urlsplit(uri)
        host = p.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = f":{p.port}" if _safe_port(p) else ""
        uri = f"{p.scheme}://{host}{port}{p.path}"
    return uri if len(uri) <= 200 else uri[:197] + "..."


def _safe_port(p) -> int | None:
    try:
        return p.port
    except ValueError:
        return None


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def _scheme(uri: str) -> str:
    m = _SCHEME_RE.match(uri)
    return m.group(1).lower() if m else "file"


def resolve_uri(uri: str, base_dir: str | os.PathLike | None) -> str:
    """Resolve a manifest value: relative paths join ``base_dir`` (the manifest's folder, a
    local path or a URI: under a URI they may not climb above its bucket), ``file://`` URIs
    become local paths, remote URIs are returned unchanged."""
    if not isinstance(uri, str) or not uri.strip():
        raise MediaError(f"empty or non-string image URI: {uri!r}")
    if "\x00" in uri:
        raise MediaError(f"URI contains a NUL byte: {uri!r}")
    m = _SCHEME_RE.match(uri)
    if m is None:
        path = pathlib.Path(uri)
        if base_dir is not None and not path.is_absolute():
            if not storage.is_local(base_dir):
                try:
                    return storage.relative_to(base_dir, uri)
                except storage.StorageError as exc:
                    raise MediaError(str(exc)) from None
            path = pathlib.Path(base_dir) / path
        return str(path)
    if m.group(1).lower() != "file":
        return uri
    p = urlsplit(uri)
    if p.netloc not in ("", "localhost"):
        raise MediaError(f"file:// URI with a remote host is not supported: {uri}")
    return url2pathname(p.path)


def read_bytes(uri: str, policy: MediaPolicy) -> bytes:
    """Read a local path, file://, http(s):// or pyarrow-supported (s3://, gs://) URI,
    enforcing the scheme allow-list, the byte cap and (for http) the address policy."""
    scheme = _scheme(uri)
    _check_scheme(scheme, policy)
    if scheme == "file":
        return _read_local(resolve_uri(uri, None), policy)
    if scheme in ("http", "https"):
        return _read_http(uri, policy)
    return _read_remote(uri, policy)


def check_uri_allowed(uri: str, policy: MediaPolicy) -> None:
    """Raise MediaError when the policy forbids the URI's scheme (no I/O)."""
    _check_scheme(_scheme(uri), policy)


def _check_scheme(scheme: str, policy: MediaPolicy) -> None:
    if scheme not in policy.allowed_schemes:
        allowed = ", ".join(sorted(policy.allowed_schemes)) or "none"
        raise MediaError(f"URL scheme {scheme!r} is not allowed (allowed: {allowed}); "
                         f"pass --allow-scheme {scheme}")


def _too_big(name: str, size: int | None, policy: MediaPolicy) -> MediaError:
    what = f"is {_fmt_bytes(size)}" if size is not None else "is larger than that"
    return MediaError(f"file too large: {name} {what}, over the {_fmt_bytes(policy.max_bytes)} "
                      f"cap (raise max_bytes to allow it)")


def _read_local(path: str, policy: MediaPolicy) -> bytes:
    if policy.local_root is not None:
        root = pathlib.Path(policy.local_root).resolve()
        if not pathlib.Path(path).resolve().is_relative_to(root):
            raise MediaError(f"refusing to read {path}: it resolves outside the input root {root}")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MediaError(f"image not found: {path}") from None
    except OSError as exc:
        raise MediaError(f"cannot access {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise MediaError(f"not a regular file: {path}")
    if st.st_size == 0:
        raise MediaError(f"file is empty (0 bytes): {path}")
    if st.st_size > policy.max_bytes:
        raise _too_big(path, st.st_size, policy)
    try:
        with open(path, "rb") as f:
            data = f.read(policy.max_bytes + 1)
    except OSError as exc:
        raise MediaError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > policy.max_bytes:
        raise _too_big(path, None, policy)
    if not data:
        raise MediaError(f"file is empty (0 bytes): {path}")
    return data


def _read_remote(uri: str, policy: MediaPolicy) -> bytes:
    """Any other scheme (s3://, gs://, ...) through the one filesystem layer: one GET, at most
    the byte cap + 1 bytes of it."""
    name = _redact(uri)
    try:
        data = storage.read_bytes(uri, max_bytes=policy.max_bytes)
    except storage.StorageNotFound:
        raise MediaError(f"image not found: {name}") from None
    except Exception as exc:  # StorageError, or a backend's own error type
        raise MediaError(f"cannot read {name}: {exc}") from None
    if len(data) > policy.max_bytes:
        raise _too_big(name, None, policy)
    if not data:
        raise MediaError(f"file is empty (0 bytes): {name}")
    return data


def _address_problem(addr: str) -> str | None:
    """Why an IP must not be fetched from (None if it is a public unicast address)."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    for attr, word in (("is_loopback", "loopback"), ("is_link_local", "link-local"),
                       ("is_unspecified", "unspecified"), ("is_multicast", "multicast")):
        if getattr(ip, attr):
            return word
    if ip.version == 4 and ip in _CGNAT:
        return "carrier-grade NAT (CGNAT)"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    return None if ip.is_global else "not globally routable"


def _checked_addresses(url: str, host: str, port: int, policy: MediaPolicy) -> list[str]:
    """Resolve ``host`` and check every address; the caller connects only to these."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise MediaError(f"cannot resolve host {host!r} for {_redact(url)}: {exc}") from None
    addrs = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not policy.allow_private_hosts:
        for addr in addrs:
            problem = _address_problem(addr)
            if problem:
                raise MediaError(f"refusing to fetch {_redact(url)}: address {addr} is {problem} "
                                 f"(set allow_private_hosts to permit it)")
    if not addrs:
        raise MediaError(f"host {host!r} resolved to no addresses: {_redact(url)}")
    return addrs


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP connection to an already-checked IP (no second DNS lookup: no rebinding)."""

    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        self._ctx = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._ctx)
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)


def _read_http(url: str, policy: MediaPolicy) -> bytes:
    deadline = time.monotonic() + policy.timeout_s
    for _ in range(_MAX_REDIRECTS + 1):
        p = urlsplit(url)
        scheme = p.scheme.lower()
        _check_scheme(scheme, policy)
        if scheme not in ("http", "https") or not p.hostname:
            raise MediaError(f"refusing to follow a redirect to {_redact(url)}")
        port = _safe_port(p) or (443 if scheme == "https" else 80)
        addrs = _checked_addresses(url, p.hostname, port, policy)
        target = (p.path or "/") + (f"?{p.query}" if p.query else "")
        conn_cls = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
        last_exc: Exception | None = None
        for ip in addrs:
            conn = conn_cls(p.hostname, port, ip, max(0.1, deadline - time.monotonic()))
            try:
                conn.request("GET", target, headers={"User-Agent": "editflow",
                                                     "Accept-Encoding": "identity"})
                resp = conn.getresponse()
                if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                    url = urljoin(url, resp.getheader("Location"))
                    break
                if resp.status != 200:
                    raise MediaError(f"HTTP {resp.status} {resp.reason} fetching {_redact(url)}")
                length = resp.getheader("Content-Length")
                if length and length.isdigit() and int(length) > policy.max_bytes:
                    raise _too_big(_redact(url), int(length), policy)
                return _read_capped(resp, url, policy, deadline)
            except MediaError:
                raise
            except (OSError, http.client.HTTPException) as exc:
                last_exc = exc  # try the next checked address
            finally:
                conn.close()
        else:  # no break (redirect): every address failed
            raise MediaError(f"cannot fetch {_redact(url)}: {last_exc}")
    raise MediaError(f"too many redirects (> {_MAX_REDIRECTS}) fetching {_redact(url)}")


def _read_capped(resp: http.client.HTTPResponse, url: str, policy: MediaPolicy,
                 deadline: float) -> bytes:
    chunks, total = [], 0
    while True:
        if time.monotonic() > deadline:
            raise MediaError(f"timed out after {policy.timeout_s:g}s fetching {_redact(url)}")
        chunk = resp.read(min(1 << 16, policy.max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > policy.max_bytes:
            raise _too_big(_redact(url), None, policy)
    if not total:
        raise MediaError(f"file is empty (0 bytes): {_redact(url)}")
    return b"".join(chunks)


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:.3g}"


def _bomb_error(exc: Exception, policy: MediaPolicy, name: str) -> MediaError:
    """Pillow's own bomb warning/error, phrased like ours (its cap may be below ours)."""
    m = re.search(r"\((\d+) pixels\)", str(exc))
    got = f"{_mp(int(m.group(1)))} MP" if m else "the image"
    cap = min(policy.max_pixels, Image.MAX_IMAGE_PIXELS or policy.max_pixels)
    return MediaError(f"image too large: {got} exceeds the {_mp(cap)} MP cap "
                      f"(decompression bomb guard): {name}")


def _open_checked(
    data: bytes, policy: MediaPolicy, name: str
) -> tuple[Image.Image, int, int | None, tuple[int, int]]:
    """Open, bomb-check the header, load the first frame, apply EXIF orientation.

    Returns (image, frames, exif_orientation, source_size)."""
    if not data:
        raise MediaError(f"file is empty (0 bytes): {name}")
    if len(data) > policy.max_bytes:
        raise _too_big(name, len(data), policy)
    Image.init()
    formats = [f for f in DECODE_FORMATS if f in Image.OPEN]
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=formats)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(exc, policy, name) from None
        except UnidentifiedImageError:
            raise MediaError(f"not a decodable image: {name} (unrecognised or unsupported format; "
                             f"allowed: {', '.join(formats)})") from None
        except Exception as exc:
            raise MediaError(f"not a decodable image: {name} ({exc})") from None
        w, h = im.size
        if w * h > policy.max_pixels:
            raise MediaError(f"image too large: {w}x{h} = {_mp(w * h)} MP exceeds the "
                             f"{_mp(policy.max_pixels)} MP cap (decompression bomb guard): {name}")
        try:
            frames = int(getattr(im, "n_frames", 1) or 1)
            if frames > 1:
                im.seek(0)
            orientation = im.getexif().get(0x0112)
            im.load()
            im = ImageOps.exif_transpose(im)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(exc, policy, name) from None
        except Exception as exc:
            word = "truncated" if "truncated" in str(exc) else "corrupt"
            raise MediaError(f"image is {word}, cannot decode: {name} ({exc})") from None
    return im, frames, (int(orientation) if orientation else None), (w, h)


def _to_8bit(im: Image.Image) -> np.ndarray:
    """Scale integer/float single-band images (I;16*, I, F) to uint8 greyscale."""
    a = np.asarray(im)
    if a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.rint(a * 255.0).astype(np.uint8)
    else:
        a = a.astype(np.int64)
        lo, hi = int(a.min()), int(a.max())
        if lo >= 0 and (hi > 255 or im.mode.startswith("I;16")) and hi <= 65535:
            return (a >> 8).astype(np.uint8)  # 16-bit data: keep the top byte
    if lo >= 0 and hi <= 255:
        return np.rint(a).astype(np.uint8)
    span = (hi - lo) or 1  # anything else: stretch min..max to 0..255
    return np.rint((a - lo) * (255.0 / span)).astype(np.uint8)


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        im.mode in ("P", "L", "RGB") and im.info.get("transparency") is not None)


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB, alpha composited on white."""
    if im.mode.startswith("I") or im.mode == "F":
        im = Image.fromarray(_to_8bit(im), "L")
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def decode_image(data: bytes, policy: MediaPolicy, *, name: str = "image") -> DecodedImage:
    """Decode bytes to RGB uint8 safely: byte and pixel caps before decoding, first frame
    of animations, EXIF orientation applied, every mode converted to RGB (alpha on white)."""
    im, frames, orientation, size = _open_checked(data, policy, name)
    mode = im.mode
    try:
        array = _to_rgb(im)
    except Exception as exc:
        raise MediaError(f"cannot convert image mode {mode} to RGB: {name} ({exc})") from None
    return DecodedImage(array, mode, size, orientation, frames, _rgb_icc(im))


def load_image(
    uri: str, policy: MediaPolicy, base_dir: str | os.PathLike | None = None
) -> DecodedImage:
    """Resolve, read and decode one image URI under ``policy``."""
    resolved = resolve_uri(uri, base_dir)
    return decode_image(read_bytes(resolved, policy), policy, name=_redact(resolved))


def load_mask_file(uri: str, policy: MediaPolicy, size: tuple[int, int],
                   base_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Load a mask image as float32 (H, W) with 1 = edit, resized NEAREST to ``size``=(w, h).

    Grey value > 127 means edit. With an alpha channel: if the colour is uniform the alpha
    is the mask; otherwise grey is premultiplied by alpha (transparent = keep)."""
    w, h = (int(size[0]), int(size[1]))
    if w <= 0 or h <= 0:
        raise MediaError(f"mask target size must be positive, got {size}")
    resolved = resolve_uri(uri, base_dir)
    name = _redact(resolved)
    im, _, _, _ = _open_checked(read_bytes(resolved, policy), policy, name)
    try:
        if im.mode.startswith("I") or im.mode == "F":
            grey = _to_8bit(im)
        elif _has_alpha(im):
            rgba = np.asarray(im.convert("RGBA"))
            grey = np.asarray(Image.fromarray(rgba[..., :3], "RGB").convert("L"), dtype=np.uint16)
            alpha = rgba[..., 3].astype(np.uint16)
            grey = alpha if grey.min() == grey.max() else (grey * alpha + 127) // 255
        else:
            grey = np.asarray(im.convert("L"))
    except Exception as exc:
        raise MediaError(f"cannot read mask {name} as greyscale ({exc})") from None
    binary = Image.fromarray(np.where(grey > 127, 255, 0).astype(np.uint8), "L")
    if binary.size != (w, h):
        binary = binary.resize((w, h), Image.Resampling.NEAREST)
    return (np.asarray(binary) > 127).astype(np.float32)


def encode_image(array: np.ndarray, fmt: str = "png", *, metadata: dict[str, str] | None = None,
                 quality: int = DEFAULT_QUALITY, parameters: str | None = None,
                 icc_profile: bytes | None = None) -> bytes:
    """Encode uint8 (H, W), (H, W, 3) or (H, W, 4) to png | jpeg | webp; same input, same bytes.

    PNG stores ``metadata`` as tEXt (latin-1) or iTXt chunks; JPEG stores it as one COM
    comment of ``key=value`` lines; WebP ignores it. ``parameters`` (A1111-style generation
    text, see editflow/infotext.py) goes where other tools look for it: the PNG ``parameters``
    chunk, or EXIF UserComment in JPEG and WebP. ``icc_profile`` is embedded as given;
    ``quality`` applies to JPEG and WebP only (PNG is lossless)."""
    fmt = {"jpg": "jpeg"}.get(fmt.lower(), fmt.lower())
    if fmt not in ("png", "jpeg", "webp"):
        raise MediaError(f"unsupported output format {fmt!r} (use png, jpeg or webp)")
    if not 1 <= int(quality) <= 100:
        raise MediaError(f"quality must be 1..100, got {quality}")
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise MediaError(f"encode_image expects uint8 pixels, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or 0 in a.shape:
        raise MediaError(f"encode_image expects (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    if fmt == "jpeg" and a.ndim == 3 and a.shape[2] == 4:
        raise MediaError("JPEG has no alpha channel; pass (H, W, 3) or use png/webp")
    im = Image.fromarray(np.ascontiguousarray(a))
    buf = io.BytesIO()
    meta = dict(sorted((metadata or {}).items()))
    extra: dict[str, object] = {"icc_profile": icc_profile} if icc_profile else {}
    if fmt == "png":
        if parameters is not None:
            meta["parameters"] = parameters
        info = PngImagePlugin.PngInfo()
        for key, value in meta.items():
            if not 1 <= len(key) <= 79 or not key.isascii():
                raise MediaError(f"PNG text key must be 1-79 ASCII characters: {key!r}")
            try:
                str(value).encode("latin-1")
                info.add_text(key, str(value))
            except UnicodeEncodeError:
                info.add_itxt(key, str(value))
        im.save(buf, "PNG", pnginfo=info, compress_level=6, **extra)
        return buf.getvalue()
    if parameters is not None:
        extra["exif"] = _exif_user_comment(parameters)
    if fmt == "jpeg":
        if meta:
            extra["comment"] = "\n".join(f"{k}={v}" for k, v in meta.items()).encode()
        im.save(buf, "JPEG", quality=int(quality), **extra)
    else:
        im.save(buf, "WEBP", quality=int(quality), method=4, **extra)
    return buf.getvalue()


def _exif_user_comment(text: str) -> bytes:
    """EXIF bytes holding ``text`` as UserComment: the 8-byte charset prefix, then ASCII or
    UTF-16 big-endian (what A1111 writes and piexif's UserComment.load reads)."""
    if text.isascii():
        comment = b"ASCII\0\0\0" + text.encode("ascii")
    else:
        comment = b"UNICODE\0" + text.encode("utf-16-be")
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = comment
    return exif.tobytes()


def safe_output_name(row_id: str, suffix: str) -> str:
    """File name for a row: sanitised id (≤ 80 chars of [A-Za-z0-9._-], no leading dots)
    + '-' + 12 hex of sha256(raw id) + ``suffix``. Distinct ids give distinct names."""
    if not re.fullmatch(r"[A-Za-z0-9._-]{0,32}", suffix) or ".." in suffix:
        raise MediaError(f"bad output suffix {suffix!r} (use e.g. '.png')")
    raw = str(row_id)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", raw)[:80].lstrip(".-") or "row"
    digest = sha256_hex(raw.encode("utf-8", "surrogatepass"))[:12]
    return f"{stem}-{digest}{suffix}"


def safe_join(root: str | os.PathLike, name: str) -> pathlib.Path:
    """``root / name`` resolved for a local ``root``; refuses absolute names, NUL bytes and anything
    that resolves outside ``root`` (including through symlinks) with ``MediaError``
    (``editflow.storage.child`` does the check, for URIs too)."""
    try:
        return pathlib.Path(storage.child(root, name))
    except storage.StorageError as exc:
        raise MediaError(str(exc)) from None
