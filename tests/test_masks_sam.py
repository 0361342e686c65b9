"""segment-anything masks with a tiny random-weight SAM: prompts, one embedding per image, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from editflow.masks.auto import AutoMasker, MaskSettings
from editflow.masks.sam import SamCheckpointError, SamMasker, build_sam, import_segment_anything
from editflow.masks.spec import parse_mask_spec
from tests.conftest import textured_image

TINY_BUILDER = "tests.test_masks_sam:tiny_sam"


def tiny_sam(checkpoint: str | None = None):
    """A SAM with the real architecture at toy size (256 px input, 32-dim features), random
    weights seeded for repeatability; loads `checkpoint` (a state dict) when given."""
    import torch

    import_segment_anything()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    dim, size, patch = 32, 256, 16
    sam = Sam(
        image_encoder=ImageEncoderViT(img_size=size, patch_size=patch, embed_dim=dim, depth=1, num_heads=2,
                                      out_chans=dim, window_size=4, global_attn_indexes=()),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(size // patch, size // patch),
                                     input_image_size=(size, size), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2), transformer_dim=dim,
            iou_head_depth=2, iou_head_hidden_dim=16),
    )
    if checkpoint:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam.eval()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("sam") / "tiny_sam.pth"
    torch.save(tiny_sam().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def masker() -> SamMasker:
    # random weights predict low IoUs: keep every segment the generator proposes
    return SamMasker(model=tiny_sam(), device="cpu", points_per_side=4,
                     generator_options={"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})


IMAGE = textured_image(120, 90, seed=3)


@pytest.mark.parametrize("spec", ["sam:points=30,40,1", "sam:points=30,40,1;90,60,0", "sam:box=10,10,80,70"])
def test_prompts_give_image_sized_binary_masks(masker: SamMasker, spec: str) -> None:
    mask = masker.mask(parse_mask_spec(spec), IMAGE)
    assert mask.shape == IMAGE.shape[:2] and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0} and mask.any()


def test_one_embedding_for_every_prompt_on_an_image(masker: SamMasker) -> None:
    image = textured_image(100, 80, seed=11)
    before = masker.embeddings_computed
    for spec in ("sam:points=10,10,1", "sam:points=50,40,1;20,20,0", "sam:box=5,5,60,50", "sam:auto"):
        masker.mask(parse_mask_spec(spec), image)
    assert masker.embeddings_computed == before + 1  # auto reuses the predictor's embedding too
    masker.mask(parse_mask_spec("sam:box=5,5,60,50"), textured_image(100, 80, seed=12))
    assert masker.embeddings_computed == before + 2


def test_auto_selects_largest_or_the_segment_at_a_point(masker: SamMasker) -> None:
    largest = masker.mask(parse_mask_spec("sam:auto"), IMAGE)
    assert largest.shape == IMAGE.shape[:2] and largest.any()
    ys, xs = np.nonzero(largest)
    at = masker.mask(parse_mask_spec(f"sam:auto={xs[0]},{ys[0]}"), IMAGE)
    assert at[ys[0], xs[0]] == 1.0
    with pytest.raises(ValueError, match="outside"):
        masker.mask(parse_mask_spec("sam:auto=500,500"), IMAGE)


def test_missing_checkpoint_names_file_place_and_setting(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDITFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("EDITFLOW_SAM_CHECKPOINT", raising=False)
    with pytest.raises(SamCheckpointError) as info:
        build_sam(None, "vit_b")
    message = str(info.value)
    assert "sam_vit_b_01ec64.pth" in message and str(tmp_path / "sam") in message and "sam_checkpoint" in message
    with pytest.raises(SamCheckpointError, match="not found"):
        build_sam(str(tmp_path / "nope.pth"), "vit_l")


def test_checkpoint_loads_through_the_builder_setting(tiny_checkpoint: Path) -> None:
    auto = AutoMasker(MaskSettings(sam_checkpoint=str(tiny_checkpoint), sam_model_type=TINY_BUILDER, device="cpu"))
    a = auto.make(parse_mask_spec("sam:box=10,10,80,70"), IMAGE)
    b = SamMasker(model=tiny_sam(str(tiny_checkpoint)), device="cpu").mask(parse_mask_spec("sam:box=10,10,80,70"), IMAGE)
    np.testing.assert_array_equal(a, b)
