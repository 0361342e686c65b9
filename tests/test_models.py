"""The model registry: specs, offline rules and the missing-weights message, device/dtype, `editflow models`."""

from __future__ import annotations

import argparse
import json
import struct

import pytest
import torch

from editflow import models
from editflow.models import (
    ModelNotAvailableError, RuntimeOptions, load_pixel_unet, load_sd_pipeline, local_status, parse_model_spec,
    select_dtype, single_file_layout,
)


def test_parse_hub_ids_with_and_without_revision():
    s = parse_model_spec("org/name")
    assert (s.kind, s.location, s.revision) == ("hub", "org/name", None)
    s = parse_model_spec("org/name@v1.0")
    assert (s.kind, s.location, s.revision) == ("hub", "org/name", "v1.0")


def test_parse_local_folder_and_file(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    assert parse_model_spec(str(folder)).kind == "dir"
    ckpt = tmp_path / "x.safetensors"
    ckpt.write_bytes(b"\0" * 8)
    assert parse_model_spec(str(ckpt)).kind == "file"


@pytest.mark.parametrize("spec", ["./missing-model", "/nowhere/model.safetensors", "a/b/c", "just-a-name"])
def test_missing_paths_and_malformed_ids_raise_with_the_spec(spec):
    with pytest.raises(ModelNotAvailableError, match=spec.split("/")[-1]):
        parse_model_spec(spec)


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="not a diffusers model"):
        parse_model_spec(str(tmp_path))


def test_dtype_choice():
    assert select_dtype("cpu") == torch.float32
    assert select_dtype("mps") == torch.float32
    assert select_dtype("cpu", "bf16") == torch.bfloat16
    assert select_dtype("cuda", "fp16") == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        select_dtype("cpu", "int3")


def test_runtime_options_from_kwargs_env_and_defaults(monkeypatch):
    monkeypatch.setenv("EDITFLOW_VAE_TILING", "1")
    monkeypatch.setenv("EDITFLOW_MICRO_BATCH", "3")
    o = RuntimeOptions.from_options({"attention_slicing": True})
    assert o.attention_slicing and o.vae_tiling and not o.cpu_offload and o.sdpa
    assert o.rows_per_call("cuda") == 3
    monkeypatch.delenv("EDITFLOW_MICRO_BATCH")
    o = RuntimeOptions.from_options({})
    assert o.rows_per_call("cpu") == 1 and o.rows_per_call("cuda") is None


def test_missing_hub_model_offline_names_model_cache_and_command(empty_hub_cache):
    status = local_status("acme/sd-inpaint@abc123")
    assert not status.available and "models--acme--sd-inpaint" in status.where
    with pytest.raises(ModelNotAvailableError) as info:
        load_sd_pipeline("acme/sd-inpaint@abc123", torch.float32)
    msg = str(info.value)
    assert "acme/sd-inpaint@abc123" in msg
    assert str(empty_hub_cache / "models--acme--sd-inpaint") in msg
    assert "hf download acme/sd-inpaint --revision abc123" in msg
    assert "HF_HUB_OFFLINE" in msg
    with pytest.raises(ModelNotAvailableError, match="hf download google/ddpm-x"):
        load_pixel_unet("google/ddpm-x", torch.float32)


def test_engine_construction_fails_with_the_message(empty_hub_cache):
    from editflow.engines.sd import SDEngine

    with pytest.raises(ModelNotAvailableError, match="stable-diffusion-v1-5/stable-diffusion-inpainting"):
        SDEngine.from_pretrained()  # the default model, not cached


def test_cached_hub_snapshot_is_found_offline(empty_hub_cache, tiny_models):
    """A hub model in the cache layout (refs/main -> snapshots/<commit>) loads offline and reports its commit."""
    import shutil

    repo = empty_hub_cache / "models--acme--tiny-sd"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_models["sd"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    status = local_status("acme/tiny-sd")
    assert status.available and status.revision == commit
    pipe, source, revision = load_sd_pipeline("acme/tiny-sd", torch.float32)
    assert source.kind == "hub" and revision == commit and pipe.unet.config.in_channels == 4


def test_local_folders_load_through_from_pretrained(tiny_models):
    pipe, source, _ = load_sd_pipeline(str(tiny_models["sd-inpaint"]), torch.float32)
    assert source.kind == "dir" and type(pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert pipe.unet.config.in_channels == 9
    unet, schedule, _, _ = load_pixel_unet(str(tiny_models["ddpm"]), torch.float32)
    assert type(unet).__name__ == "UNet2DModel" and schedule["num_train_timesteps"] == 1000


def test_single_file_layout_reads_the_header(tmp_path):
    def write(path, keys):
        header = json.dumps({k: {"dtype": "F32", "shape": s, "data_offsets": [0, 0]} for k, s in keys.items()}).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header)
        return path

    sd9 = write(tmp_path / "a.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": [320, 9, 3, 3]})
    xl4 = write(tmp_path / "b.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
                                            "conditioner.embedders.1.model.ln_final.weight": [1280]})
    assert single_file_layout(sd9) == {"xl": False, "in_channels": 9}
    assert single_file_layout(xl4) == {"xl": True, "in_channels": 4}


def test_models_command_lists_engines_and_availability(empty_hub_cache, tiny_models, capsys):
    from editflow.commands import models as models_cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    models_cli.add_parser(sub)
    args = parser.parse_args(["models", "--check", str(tiny_models["sd"])])
    assert models_cli.run(args) == 0
    out = capsys.readouterr().out
    for name in ("builtin", "opencv", "sd", "ddpm", "stable-diffusion-v1-5/stable-diffusion-inpainting",
                 "google/ddpm-ema-celebahq-256", "hf download google/ddpm-ema-celebahq-256"):
        assert name in out
    assert "yes" in out and "no" in out
    args = parser.parse_args(["models", "--json", "--engine", "ddpm"])
    assert models_cli.run(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["offline"] and {e["engine"] for e in data["models"]} == {"ddpm"}
    assert all(not e["available"] for e in data["models"])
    from editflow.engines import get_engine_class

    assert get_engine_class("ddpm").default_model() == "google/ddpm-ema-celebahq-256"
