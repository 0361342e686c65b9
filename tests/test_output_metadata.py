"""Metadata other tools read: A1111 `parameters` text (PNG chunk, JPEG/WebP EXIF UserComment),
the input's ICC profile kept, the output format from -o's extension, and --quality."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageCms

from editflow import cli
from editflow.config import RunConfig, format_for_path
from editflow.infotext import format_infotext
from editflow.media import MediaError, MediaPolicy, decode_image, encode_image
from editflow.runners.payload import rows_to_table, table_to_rows
from editflow.runners.stages import PrepareStage, new_row
from tests.conftest import textured_image

SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
TEXT = "a red dress, silk\nNegative prompt: blurry\nSteps: 20, Sampler: DDIMScheduler, Seed: 7, Size: 10x8"
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286


def user_comment(data: bytes) -> bytes:
    return Image.open(io.BytesIO(data)).getexif().get_ifd(EXIF_IFD)[USER_COMMENT]


def test_png_has_parameters_chunk_beside_editflow_json():
    a = textured_image(10, 8)
    im = Image.open(io.BytesIO(encode_image(a, "png", metadata={"editflow": '{"seed": 7}'}, parameters=TEXT)))
    assert im.text["parameters"] == TEXT
    assert json.loads(im.text["editflow"]) == {"seed": 7}


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_lossy_formats_carry_parameters_in_exif_user_comment(fmt):
    data = encode_image(textured_image(10, 8), fmt, parameters=TEXT)
    assert user_comment(data) == b"ASCII\0\0\0" + TEXT.encode()
    unicode_text = "une robe rouge, soie ✓\nNegative prompt: flou\nSteps: 20, Seed: 1, Size: 10x8"
    raw = user_comment(encode_image(textured_image(10, 8), fmt, parameters=unicode_text))
    assert raw[:8] == b"UNICODE\0" and raw[8:].decode("utf-16-be") == unicode_text


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_icc_profile_is_embedded(fmt):
    data = encode_image(textured_image(10, 8), fmt, icc_profile=SRGB_ICC)
    assert Image.open(io.BytesIO(data)).info["icc_profile"] == SRGB_ICC
    assert "icc_profile" not in Image.open(io.BytesIO(encode_image(textured_image(10, 8), fmt))).info


def _saved(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_decode_keeps_rgb_icc_and_drops_profiles_of_other_colour_spaces():
    rgb = Image.fromarray(textured_image(12, 9))
    assert decode_image(_saved(rgb, "PNG", icc_profile=SRGB_ICC), MediaPolicy()).icc_profile == SRGB_ICC
    assert decode_image(_saved(rgb, "PNG"), MediaPolicy()).icc_profile is None
    grey_icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # not an RGB profile
    assert grey_icc[16:20] != b"RGB "
    assert decode_image(_saved(rgb.convert("L"), "PNG", icc_profile=grey_icc), MediaPolicy()).icc_profile is None


def test_icc_travels_through_the_ray_payload(tmp_path):
    Image.fromarray(textured_image(12, 9)).save(tmp_path / "p.png", icc_profile=SRGB_ICC)
    config = RunConfig(out_dir=str(tmp_path / "out"), base_dir=str(tmp_path))
    rows = PrepareStage(config)([new_row({"id": "r", "task": "inpaint", "image": "p.png", "mask": "full"}, "run")])
    assert rows[0]["_icc"] == SRGB_ICC
    back = table_to_rows(rows_to_table(rows))[0]
    assert back["_icc"] == SRGB_ICC and np.array_equal(back["_image"], rows[0]["_image"])
    assert rows_to_table(rows).schema.field("_icc").type == pa.binary()


def test_infotext_is_a1111_shaped():
    row = {"prompt": "a hat", "negative_prompt": "ugly", "steps": 20, "scheduler": "DDIMScheduler",
           "guidance_scale": 7.5, "seed": 11, "width": 64, "height": 48, "model": "org/sd-inpaint",
           "strength": 0.75, "task": "inpaint", "engine": "sd", "nfe": 15, "mask_spec": "box:1,2,3,4",
           "editflow_version": "0.1.0"}
    prompt, negative, settings = format_infotext(row).split("\n")
    assert prompt == "a hat" and negative == "Negative prompt: ugly"
    assert settings.startswith("Steps: 20, Sampler: DDIMScheduler, CFG scale: 7.5, Seed: 11, Size: 64x48, "
                               "Model: org/sd-inpaint, Denoising strength: 0.75, ")
    assert 'Mask: "box:1,2,3,4"' in settings  # values with commas are quoted, as A1111 does


def test_format_for_path():
    assert format_for_path("x.webp") == "webp" and format_for_path("a/x.JPG") == "jpeg"
    assert format_for_path("x.jpeg", "jpg") == "jpeg" and format_for_path("x", "webp") == "webp"
    assert format_for_path("x") == "png"
    with pytest.raises(MediaError, match="contradicts"):
        format_for_path("x.png", "webp")
    with pytest.raises(MediaError, match="cannot tell the output format"):
        format_for_path("x.bmp")


def _edit(tmp_path: Path, out: str, *extra: str) -> int:
    Image.fromarray(textured_image(96, 64, seed=3)).save(tmp_path / "in.png", icc_profile=SRGB_ICC)
    return cli.main(["edit", str(tmp_path / "in.png"), "--mask", "box:10,10,40,40", "--engine", "opencv",
                     "--prompt", "fix the corner", "--seed", "5", "-o", str(tmp_path / out), *extra])


@pytest.mark.parametrize("name, pil", [("o.png", "PNG"), ("o.jpg", "JPEG"), ("o.webp", "WEBP")])
def test_edit_writes_the_extensions_format_with_metadata_and_icc(tmp_path, name, pil):
    assert _edit(tmp_path, name) == 0
    im = Image.open(tmp_path / name)
    assert im.format == pil and im.size == (96, 64)
    assert im.info["icc_profile"] == SRGB_ICC
    if pil == "PNG":
        text = im.text["parameters"]
        assert json.loads(im.text["editflow"])["seed"] == 5
    else:
        raw = im.getexif().get_ifd(EXIF_IFD)[USER_COMMENT]
        assert raw.startswith(b"ASCII\0\0\0")
        text = raw[8:].decode()
    assert text.startswith("fix the corner\nNegative prompt: \nSteps: ")
    assert "Seed: 5, Size: 96x64" in text and "Engine: opencv" in text


def test_edit_format_contradicting_the_extension_is_an_error(tmp_path, capsys):
    assert _edit(tmp_path, "o.png", "--format", "webp") == cli.EXIT_FATAL
    assert "contradicts" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
    assert _edit(tmp_path, "o2.webp", "--format", "webp") == 0  # agreeing is fine
    assert Image.open(tmp_path / "o2.webp").format == "WEBP"


@pytest.mark.parametrize("ext", ["jpg", "webp"])
def test_quality_changes_size_and_png_ignores_it(tmp_path, ext):
    assert _edit(tmp_path, f"lo.{ext}", "--quality", "30") == 0
    assert _edit(tmp_path, f"hi.{ext}", "--quality", "98") == 0
    assert (tmp_path / f"lo.{ext}").stat().st_size < (tmp_path / f"hi.{ext}").stat().st_size
    for word, quality in (("lo", "30"), ("hi", "98")):  # same name: the row id is the file's stem
        (tmp_path / word).mkdir()
        assert _edit(tmp_path, f"{word}/o.png", "--quality", quality) == 0
    assert (tmp_path / "lo" / "o.png").read_bytes() == (tmp_path / "hi" / "o.png").read_bytes()


def test_quality_out_of_range_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _edit(tmp_path, "o.jpg", "--quality", "0")
    assert "quality must be" in capsys.readouterr().err


@pytest.mark.slow
def test_icc_and_parameters_survive_a_ray_run_byte_for_byte(tmp_path):
    """On Ray the ICC profile crosses stages as an in-flight bytes column; the output matches local."""
    Image.fromarray(textured_image(96, 64, seed=4)).save(tmp_path / "p.png", icc_profile=SRGB_ICC)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "icc", "task": "inpaint", "engine": "opencv", "image": "p.png",
                                    "mask": "box:8,8,40,40", "prompt": "patch"}) + "\n")
    outputs = {}
    for executor in ("local", "ray"):
        out = tmp_path / executor
        assert cli.main(["run", str(manifest), "-o", str(out), "--executor", executor, "--quiet",
                         "--format", "webp", "--quality", "90"]) == 0
        [outputs[executor]] = (out / "images").iterdir()
    assert outputs["ray"].read_bytes() == outputs["local"].read_bytes()
    im = Image.open(outputs["ray"])
    assert im.format == "WEBP" and im.info["icc_profile"] == SRGB_ICC
    assert im.getexif().get_ifd(EXIF_IFD)[USER_COMMENT].startswith(b"ASCII\0\0\0patch\nNegative prompt: ")
