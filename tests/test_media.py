"""Tests for editflow.media: every image is generated here into tmp_path (no fixtures on disk)."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import socket
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from editflow import media, storage
from editflow.media import (
    MediaError,
    MediaPolicy,
    decode_image,
    encode_image,
    load_image,
    load_mask_file,
    read_bytes,
    resolve_uri,
    safe_join,
    safe_output_name,
    sha256_hex,
)

POLICY = MediaPolicy()


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _decode(im: Image.Image, fmt: str = "PNG", **kw) -> media.DecodedImage:
    return decode_image(_save(im, fmt, **kw), POLICY)


def _png_with_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares width x height (1-bit grey); the data is bogus."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


# ---------------------------------------------------------------- modes -> RGB


def test_rgb_passthrough():
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    d = _decode(Image.fromarray(a))
    assert d.array.dtype == np.uint8 and d.array.shape == (5, 7, 3)
    np.testing.assert_array_equal(d.array, a)
    assert (d.source_mode, d.source_size, d.exif_orientation, d.frames) == ("RGB", (7, 5), None, 1)


def test_mode_l_and_1():
    d = _decode(Image.fromarray(np.full((2, 3), 77, np.uint8), "L"))
    assert d.source_mode == "L" and (d.array == 77).all() and d.array.shape == (2, 3, 3)
    bw = Image.new("1", (2, 1))
    bw.putpixel((1, 0), 1)
    d = _decode(bw)
    assert d.source_mode == "1"
    assert d.array[0, 0].tolist() == [0, 0, 0] and d.array[0, 1].tolist() == [255, 255, 255]


def test_rgba_and_la_composited_on_white():
    a = np.array([[[10, 20, 30, 0], [0, 0, 0, 128], [1, 2, 3, 255]]], np.uint8)
    d = _decode(Image.fromarray(a, "RGBA"))
    assert d.source_mode == "RGBA"
    assert d.array[0, 0].tolist() == [255, 255, 255]  # fully transparent -> white
    assert all(abs(int(v) - 127) <= 1 for v in d.array[0, 1])  # half alpha black over white
    assert d.array[0, 2].tolist() == [1, 2, 3]
    la = np.array([[[100, 0], [100, 255]]], np.uint8)
    d = _decode(Image.fromarray(la, "LA"))
    assert d.source_mode == "LA"
    assert d.array[0, 0].tolist() == [255] * 3 and d.array[0, 1].tolist() == [100] * 3


def test_palette_with_and_without_transparency():
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    d = _decode(p, transparency=1)
    assert d.source_mode == "P"
    assert d.array[0, 0].tolist() == [255, 0, 0] and d.array[0, 1].tolist() == [255, 255, 255]
    d = _decode(p)
    assert d.array[0, 1].tolist() == [0, 255, 0]


def test_cmyk():
    c = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255]]], np.uint8)
    d = _decode(Image.fromarray(c, "CMYK"), "TIFF")
    assert d.source_mode == "CMYK"
    assert d.array[0].tolist() == [[255, 255, 255], [0, 255, 255], [0, 0, 0]]


def test_16_bit_grey_scaled_by_top_byte():
    a = np.array([[0, 200 * 256 + 5, 65535, 255]], np.uint16)
    d = _decode(Image.fromarray(a))
    assert d.source_mode in ("I;16", "I")
    assert d.array[0, :, 0].tolist() == [0, 200, 255, 0]
    assert (d.array[..., 0] == d.array[..., 2]).all()


def test_int32_and_float_modes():
    i = Image.fromarray(np.array([[0, 1000, 70000]], np.int32), "I")
    d = _decode(i, "TIFF")
    assert d.source_mode == "I" and d.array[0, :, 0].tolist() == [0, 4, 255]  # min..max stretch
    f = Image.fromarray(np.array([[0.0, 0.25, 1.0]], np.float32), "F")
    d = _decode(f, "TIFF")
    assert d.source_mode == "F" and d.array[0, :, 0].tolist() == [0, 64, 255]  # 0..1 -> 0..255


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (4, 3), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    d = decode_image(data, POLICY)
    assert d.frames == 3 and d.array.shape == (3, 4, 3)
    assert (d.array == [255, 0, 0]).all()


def test_animated_webp_first_frame():
    frames = [Image.new("RGB", (4, 3), c) for c in ((0, 0, 255), (0, 255, 0))]
    data = _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    d = decode_image(data, POLICY)
    assert d.frames == 2 and (d.array == [0, 0, 255]).all()


# ---------------------------------------------------------------- EXIF orientation


def _oriented_jpeg(orientation: int) -> bytes:
    a = np.zeros((20, 40, 3), np.uint8)  # w=40, h=20: left half red, right half blue
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(Image.fromarray(a), "JPEG", exif=exif, quality=95)


def _is_red(px) -> bool:
    return px[0] > 200 and px[2] < 60


def _is_blue(px) -> bool:
    return px[2] > 200 and px[0] < 60


def test_exif_orientation_6_rotates_clockwise():
    d = decode_image(_oriented_jpeg(6), POLICY)
    assert d.exif_orientation == 6 and d.source_size == (40, 20)
    assert d.array.shape == (40, 20, 3)  # now portrait
    assert _is_red(d.array[5, 10]) and _is_blue(d.array[35, 10])  # left -> top


def test_exif_orientation_3_rotates_180():
    d = decode_image(_oriented_jpeg(3), POLICY)
    assert d.exif_orientation == 3 and d.array.shape == (20, 40, 3)
    assert _is_blue(d.array[10, 5]) and _is_red(d.array[10, 35])


# ---------------------------------------------------------------- bad inputs


def test_zero_bytes_missing_corrupt(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match=r"file is empty \(0 bytes\)"):
        load_image(str(empty), POLICY)
    with pytest.raises(MediaError, match=r"file is empty \(0 bytes\)"):
        decode_image(b"", POLICY)
    with pytest.raises(MediaError, match=r"image not found: .*nope.png"):
        load_image(str(tmp_path / "nope.png"), POLICY)
    with pytest.raises(MediaError, match="not a decodable image"):
        decode_image(b"definitely not an image", POLICY, name="x.png")
    with pytest.raises(MediaError, match="not a regular file"):
        load_image(str(tmp_path), POLICY)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(fmt):
    a = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _save(Image.fromarray(a), fmt)
    with pytest.raises(MediaError, match=r"truncated|corrupt") as ei:
        decode_image(data[: len(data) // 2], POLICY, name="half")
    assert "half" in str(ei.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_eps_is_not_opened():
    with pytest.raises(MediaError, match="not a decodable image"):
        decode_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", POLICY)


def test_decompression_bomb_refused_before_decoding(monkeypatch):
    def no_decode(self):
        raise AssertionError("pixel data must not be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    filters_before = list(warnings.filters)
    max_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(MediaError, match=r"8000x8000 = 64 MP exceeds the 50 MP cap"):
        decode_image(_png_with_header(8000, 8000), POLICY)  # under Pillow's limit, over ours
    with pytest.raises(MediaError, match=r"900 MP exceeds the 50 MP cap \(decompression bomb"):
        decode_image(_png_with_header(30000, 30000), POLICY)  # Pillow's own error
    with pytest.raises(MediaError, match=r"144 MP exceeds the 89.5 MP cap \(decompression bomb"):
        decode_image(_png_with_header(12000, 12000), MediaPolicy(max_pixels=10**9))  # warning
    assert warnings.filters == filters_before
    assert max_before == Image.MAX_IMAGE_PIXELS


def test_lowered_max_pixels():
    data = _save(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(MediaError, match=r"100x100 = 0.01 MP exceeds the 0.005 MP cap"):
        decode_image(data, MediaPolicy(max_pixels=5000))
    assert decode_image(data, MediaPolicy(max_pixels=10_000)).array.shape == (100, 100, 3)


def test_byte_cap(tmp_path):
    p = tmp_path / "big.png"
    p.write_bytes(_save(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG") + b"\0" * 2000)
    with pytest.raises(MediaError, match="file too large"):
        read_bytes(str(p), MediaPolicy(max_bytes=1000))
    with pytest.raises(MediaError, match="file too large"):
        decode_image(p.read_bytes(), MediaPolicy(max_bytes=1000))
    assert load_image(str(p), POLICY).array.shape == (64, 64, 3)


# ---------------------------------------------------------------- URIs


def test_resolve_uri(tmp_path):
    assert resolve_uri("imgs/a.png", tmp_path) == str(tmp_path / "imgs" / "a.png")
    assert resolve_uri("/abs/a.png", tmp_path) == "/abs/a.png"
    assert resolve_uri("rel.png", None) == "rel.png"
    assert resolve_uri("file:///tmp/a%20b.png", tmp_path) == "/tmp/a b.png"
    assert resolve_uri("file://localhost/tmp/x.png", None) == "/tmp/x.png"
    assert resolve_uri("s3://bucket/k.png", tmp_path) == "s3://bucket/k.png"
    assert resolve_uri("HTTPS://h/x.png", tmp_path) == "HTTPS://h/x.png"
    for bad in ("", "a\x00b", "file://evil.host/x.png"):
        with pytest.raises(MediaError):
            resolve_uri(bad, tmp_path)


def test_load_relative_and_file_uri(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a b.png").write_bytes(_save(Image.new("RGB", (3, 2), (9, 8, 7)), "PNG"))
    d = load_image("imgs/a b.png", POLICY, base_dir=tmp_path)
    assert d.array[0, 0].tolist() == [9, 8, 7]
    uri = (tmp_path / "imgs" / "a b.png").as_uri()
    assert uri.startswith("file://") and "%20" in uri
    assert load_image(uri, POLICY).array.shape == (2, 3, 3)


def test_local_root_confines_reads(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(_save(Image.new("RGB", (2, 2)), "PNG"))
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    policy = MediaPolicy(local_root=str(root))
    for uri in ("../secret.png", "link.png", str(tmp_path / "secret.png")):
        with pytest.raises(MediaError, match="outside the input root"):
            load_image(uri, policy, base_dir=root)


def test_scheme_allow_list():
    with pytest.raises(MediaError, match=r"URL scheme 'http' is not allowed \(allowed: file\); "
                                         r"pass --allow-scheme http"):
        read_bytes("http://example.com/a.png", POLICY)
    with pytest.raises(MediaError, match="scheme 's3' is not allowed"):
        load_image("s3://bucket/a.png", POLICY)
    with pytest.raises(MediaError, match="scheme 'file' is not allowed"):
        read_bytes("/etc/hostname", MediaPolicy(allowed_schemes=frozenset({"https"})))
    assert MediaPolicy(allowed_schemes={"HTTPS", "s3://"}).allowed_schemes == {"https", "s3"}


def test_pyarrow_filesystem_path():
    policy = MediaPolicy(allowed_schemes=frozenset({"mock"}))
    with pytest.raises(MediaError, match=r"image not found: mock:///nothing.png"):
        read_bytes("mock:///nothing.png", policy)


HTTP = MediaPolicy(allowed_schemes=frozenset({"http", "https"}))


@pytest.mark.parametrize("url, word", [
    ("http://169.254.169.254/latest/meta-data/", "address 169.254.169.254 is link-local"),
    ("http://127.0.0.1:8265/api/jobs/", "address 127.0.0.1 is loopback"),
    ("http://10.1.2.3/x.png", "address 10.1.2.3 is private"),
    ("http://100.64.0.1/x.png", "CGNAT"),
    ("http://[::1]/x.png", "address ::1 is loopback"),
    ("http://[::ffff:169.254.169.254]/x", "link-local"),
    ("http://0.0.0.0/x", "unspecified"),
    ("http://2130706433/x", "loopback"),  # decimal 127.0.0.1
])
def test_private_addresses_refused(monkeypatch, url, word):
    def no_connect(*a, **k):
        raise AssertionError("must refuse before connecting")

    monkeypatch.setattr(socket, "create_connection", no_connect)
    with pytest.raises(MediaError, match="refusing to fetch http://.*" + word):
        read_bytes(url, HTTP)


def test_every_resolved_address_checked(monkeypatch):
    def fake_getaddrinfo(host, port, *a, **k):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                for ip in ("93.184.215.14", "127.0.0.1")]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(MediaError, match=r"address 127.0.0.1 is loopback"):
        read_bytes("https://user:pw@rebind.example/a.png?sig=secret", HTTP)
    try:
        read_bytes("https://user:pw@rebind.example/a.png?sig=secret", HTTP)
    except MediaError as exc:
        assert "secret" not in str(exc) and "pw" not in str(exc)


@pytest.fixture
def http_root(tmp_path):
    """A bounded local http.server on 127.0.0.1 serving tmp_path (plus /redir-* paths)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/redir-"):
                self.send_response(302)
                self.send_header("Location", self.path[len("/redir-"):].replace("~", "://"))
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path)))
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_fetch_local_server(http_root):
    root, base = http_root
    png = _save(Image.new("RGB", (5, 4), (1, 2, 3)), "PNG")
    (root / "a.png").write_bytes(png)
    with pytest.raises(MediaError, match="loopback"):
        read_bytes(f"{base}/a.png", HTTP)
    ok = MediaPolicy(allowed_schemes=frozenset({"http"}), allow_private_hosts=True, timeout_s=5)
    assert read_bytes(f"{base}/a.png", ok) == png
    assert load_image(f"{base}/a.png", ok).array[0, 0].tolist() == [1, 2, 3]
    assert read_bytes(f"{base}/redir-/a.png", ok) == png  # same-host redirect, re-checked
    with pytest.raises(MediaError, match="HTTP 404"):
        read_bytes(f"{base}/missing.png", ok)
    with pytest.raises(MediaError, match="file too large"):
        read_bytes(f"{base}/a.png", MediaPolicy(allowed_schemes=ok.allowed_schemes,
                                                allow_private_hosts=True, max_bytes=10))
    with pytest.raises(MediaError, match="scheme 's3' is not allowed"):
        read_bytes(f"{base}/redir-s3~bucket/a.png", ok)
    both = MediaPolicy(allowed_schemes=frozenset({"http", "file"}), allow_private_hosts=True)
    with pytest.raises(MediaError, match="refusing to follow a redirect"):
        read_bytes(f"{base}/redir-file~/etc/hostname", both)


# ---------------------------------------------------------------- masks


def test_mask_grey_threshold_and_resize(tmp_path):
    a = np.array([[0, 127], [128, 255]], np.uint8)
    (tmp_path / "m.png").write_bytes(_save(Image.fromarray(a, "L"), "PNG"))
    m = load_mask_file("m.png", POLICY, (2, 2), base_dir=tmp_path)
    assert m.dtype == np.float32 and m.tolist() == [[0, 0], [1, 1]]
    m = load_mask_file("m.png", POLICY, (4, 6), base_dir=tmp_path)
    assert m.shape == (6, 4) and set(np.unique(m).tolist()) == {0.0, 1.0}
    assert m[:3].sum() == 0 and m[3:].all()  # NEAREST: no blended grey


def test_mask_alpha_only_rgb_and_1bit(tmp_path):
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, :, 3] = (0, 100, 200)  # black everywhere, alpha carries the mask
    (tmp_path / "a.png").write_bytes(_save(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert load_mask_file(str(tmp_path / "a.png"), POLICY, (3, 1)).tolist() == [[0, 0, 1]]
    rgb = np.array([[[255, 255, 255], [0, 0, 0]]], np.uint8)
    (tmp_path / "c.png").write_bytes(_save(Image.fromarray(rgb), "PNG"))
    assert load_mask_file(str(tmp_path / "c.png"), POLICY, (2, 1)).tolist() == [[1, 0]]
    bw = Image.new("1", (2, 1))
    bw.putpixel((0, 0), 1)
    (tmp_path / "b.png").write_bytes(_save(bw, "PNG"))
    assert load_mask_file(str(tmp_path / "b.png"), POLICY, (2, 1)).tolist() == [[1, 0]]
    with pytest.raises(MediaError, match="image not found"):
        load_mask_file("nope.png", POLICY, (2, 1), base_dir=tmp_path)


# ---------------------------------------------------------------- encoding


def test_png_roundtrip_with_metadata_and_determinism():
    a = np.random.default_rng(2).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    meta = {"editflow": json.dumps({"row_id": "r1", "seed": 7, "prompt": "a café"}),
            "note": "ünïcødé ✓"}
    data = encode_image(a, "png", metadata=meta)
    im = Image.open(io.BytesIO(data))
    assert json.loads(im.text["editflow"])["prompt"] == "a café"
    assert im.text["note"] == "ünïcødé ✓"  # iTXt
    np.testing.assert_array_equal(np.asarray(im), a)
    assert encode_image(a.copy(), "png", metadata=dict(reversed(meta.items()))) == data
    again = encode_image(a, "PNG", metadata=meta)
    assert sha256_hex(again) == sha256_hex(data)


@pytest.mark.parametrize("fmt, pil", [("jpeg", "JPEG"), ("jpg", "JPEG"), ("webp", "WEBP")])
def test_lossy_formats(fmt, pil):
    a = np.full((8, 10, 3), (200, 100, 50), np.uint8)
    data = encode_image(a, fmt, metadata={"editflow": "{}"}, quality=90)
    assert encode_image(a, fmt, metadata={"editflow": "{}"}, quality=90) == data
    im = Image.open(io.BytesIO(data))
    assert im.format == pil and im.size == (10, 8)
    assert np.abs(np.asarray(im.convert("RGB")).astype(int) - a).max() < 8


def test_encode_rejects_bad_input():
    with pytest.raises(MediaError, match="uint8"):
        encode_image(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(MediaError, match="unsupported output format"):
        encode_image(np.zeros((2, 2, 3), np.uint8), "bmp")
    with pytest.raises(MediaError, match="alpha"):
        encode_image(np.zeros((2, 2, 4), np.uint8), "jpeg")
    assert Image.open(io.BytesIO(encode_image(np.zeros((2, 2), np.uint8)))).mode == "L"


# ---------------------------------------------------------------- files and names


def test_atomic_write(tmp_path):
    dst = tmp_path / "out.png"
    storage.write_bytes(dst, b"one")
    storage.write_bytes(str(dst), b"two")
    assert dst.read_bytes() == b"two" and os.listdir(tmp_path) == ["out.png"]



IDS = ["../../etc/passwd", "a/b", "a_b", "", ".hidden", "..", "x" * 500, "x" * 501,
       "café", "cafe", "写真/1", "写真/2", "CON", "A", "a", "a\\b", "a\x00b", "-rf"]


def test_safe_output_name():
    names = [safe_output_name(i, ".png") for i in IDS]
    assert len(set(names)) == len(IDS)  # distinct ids -> distinct names
    for raw, name in zip(IDS, names, strict=True):
        assert "/" not in name and "\\" not in name and "\x00" not in name
        assert not name.startswith((".", "-")) and name.endswith(".png")
        assert len(name) <= 80 + 1 + 12 + 4
        stem, digest = name[:-4].rsplit("-", 1)
        assert digest == sha256_hex(raw.encode())[:12]
        assert os.path.basename(name) == name and stem not in ("", ".", "..")  # one component
    assert safe_output_name("../../etc/passwd", ".png").startswith("_.._etc_passwd-")
    assert safe_output_name("a/b", "-mask.png").startswith("a_b-")
    assert safe_output_name(".hidden", ".png").startswith("hidden-")
    assert safe_output_name("r1", ".png") == safe_output_name("r1", ".png")
    for bad in ("/x.png", "../x", ".p/ng"):
        with pytest.raises(MediaError):
            safe_output_name("r1", bad)


def test_safe_join(tmp_path):
    root = tmp_path / "out"
    (root / "sub").mkdir(parents=True)
    assert safe_join(root, "sub/a.png") == (root / "sub" / "a.png").resolve()
    assert safe_join(str(root), safe_output_name("../../x", ".png")).parent == root.resolve()
    (root / "esc").symlink_to(tmp_path)
    (root / "inside").symlink_to(root / "sub")
    assert safe_join(root, "inside/a.png") == (root / "sub" / "a.png").resolve()
    for bad in ("../x.png", "sub/../../x.png", "/etc/passwd", "esc/x.png", "", ".", "a\x00b",
                "C:\\x.png"):
        with pytest.raises(MediaError):
            safe_join(root, bad)
