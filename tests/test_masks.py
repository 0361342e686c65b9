"""Mask specs, geometric masks, mask files and grow/feather: 1 = edit everywhere."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from editflow.masks import ops
from editflow.masks.render import render_geometric
from editflow.masks.spec import MaskSpecError, parse_mask_spec
from editflow.media import MediaPolicy, load_mask_file


def test_specs_parse_to_kinds():
    assert parse_mask_spec(None).kind == "auto"
    assert parse_mask_spec("  ").kind == "auto"
    assert parse_mask_spec("full").kind == "full"
    assert parse_mask_spec("masks/m.png").uri == "masks/m.png"
    assert parse_mask_spec("s3://bucket/m.png").kind == "file"
    sam = parse_mask_spec("sam:points=10,20,1;30,40,0")
    assert sam.kind == "sam" and sam.points == ((10, 20), (30, 40)) and sam.labels == (1, 0)
    assert parse_mask_spec("sam:box=1,2,3,4").box == (1, 2, 3, 4)
    assert parse_mask_spec("face:lips+eyes").parts == ("lips", "eyes")
    assert parse_mask_spec("garment:upper").parts == ("upper",)
    for bad in ("box:4,4,1,1", "face:nose", "garment:hat", "sam:points=1,2,7", "sam:what=1"):
        with pytest.raises(MaskSpecError):
            parse_mask_spec(bad)


def test_box_is_clipped_to_the_image():
    mask = render_geometric(parse_mask_spec("box:-10,50,30,500"), width=40, height=60)
    assert mask.shape == (60, 40) and mask.dtype == np.float32
    assert mask[50:, :30].all() and mask[:50].sum() == 0 and mask[:, 30:].sum() == 0


def test_box_outside_the_image_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        render_geometric(parse_mask_spec("box:100,100,200,200"), width=40, height=60)


def test_polygon_fills_its_inside():
    mask = render_geometric(parse_mask_spec("polygon:10,10;50,10;50,40;10,40"), width=64, height=64)
    assert mask[25, 30] == 1 and mask[5, 5] == 0 and mask[45, 55] == 0


def test_mask_file_is_binarised_and_resized_nearest(tmp_path):
    grey = np.zeros((10, 20), np.uint8)
    grey[:, 10:] = 200  # right half edits
    grey[0, 0] = 127  # exactly 127 keeps
    Image.fromarray(grey).save(tmp_path / "m.png")
    mask = load_mask_file(str(tmp_path / "m.png"), MediaPolicy(), (40, 20))
    assert mask.shape == (20, 40)
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert mask[:, 20:].all() and not mask[:, :20].any()


def test_grow_and_feather():
    mask = np.zeros((41, 41), np.float32)
    mask[15:26, 15:26] = 1
    grown = ops.grow(mask, 3)
    assert grown.sum() > mask.sum() and grown[12, 20] == 1 and grown[10, 20] == 0
    assert ops.grow(grown, -3)[15:26, 15:26].all()
    soft = ops.feather(mask, 5)
    assert (soft[mask == 1] == 1).all(), "feathering never shrinks the edit region"
    assert 0 < soft[20, 12] < 1 and soft[20, 5] == 0
    assert ops.bounding_box(mask) == (15, 15, 26, 26)
