"""Single-file (LDM layout) checkpoints: written by rewarddance.training.export, read back by diffusers'
``from_single_file``, and trained from by the ReFL trainer."""

from __future__ import annotations

import pytest
import torch

from rewarddance.testing.tiny_diffusion import build_tiny_pipeline
from rewarddance.training.export import save_single_file
from rewarddance.training.refl import load_pipeline, train_refl
from rewarddance.training.refl_config import ReFLConfig


@pytest.fixture(scope="module")
def sd_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    pipe = build_tiny_pipeline("sd", "ddim")
    pipe.save_pretrained(root / "pipe")
    save_single_file(pipe, root / "tiny-sd.safetensors")
    return pipe, root


def test_single_file_round_trips_through_diffusers(sd_files):
    import diffusers

    pipe, root = sd_files
    loaded = diffusers.StableDiffusionPipeline.from_single_file(
        str(root / "tiny-sd.safetensors"), config=str(root / "pipe"), safety_checker=None
    )
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
    kw = dict(num_inference_steps=2, height=32, width=32, output_type="pt")
    x = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kw).images
    y = loaded("a red circle", generator=torch.Generator().manual_seed(0), **kw).images
    assert torch.equal(x, y)


def test_refl_trains_from_a_single_file(sd_files, tiny_vlm, tmp_path):
    pipe, root = sd_files
    cfg = ReFLConfig(
        pretrained=str(root / "tiny-sd.safetensors"),
        model_type="sd",
        single_file_config=str(root / "pipe"),
        reward_model=tiny_vlm("llava", init_std=0.02),
        prompts=["a red circle"],
        output_dir=str(tmp_path / "out"),
        num_inference_steps=4,
        stop_range=[2, 3],
        resolution=32,
        lora_rank=2,
        batch_size=1,
        max_steps=2,
        save_every=0,
        device="cpu",
    )
    loaded = load_pipeline(cfg, torch.float32)
    assert torch.equal(loaded.unet.conv_in.weight, pipe.unet.conv_in.weight)
    res = train_refl(cfg, progress=False)
    assert res["step"] == 2 and (tmp_path / "out" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_single_file_needs_a_model_type_and_rejects_other_families(sd_files, tmp_path):
    _, root = sd_files
    cfg = ReFLConfig(
        pretrained=str(root / "tiny-sd.safetensors"),
        reward_model="unused",
        prompts=["x"],
        output_dir=str(tmp_path),
        num_inference_steps=4,
        stop_range=[2, 3],
    )
    with pytest.raises(ValueError, match="needs model_type"):
        load_pipeline(cfg, torch.float32)
    with pytest.raises(ValueError, match="only SD 1.x pipelines"):
        save_single_file(build_tiny_pipeline("sdxl"), tmp_path / "x.safetensors")
    sd2 = build_tiny_pipeline("sd")
    sd2.unet.register_to_config(use_linear_projection=True)
    with pytest.raises(ValueError, match="SD 2.x"):
        save_single_file(sd2, tmp_path / "y.safetensors")
    assert not (tmp_path / "y.safetensors").exists()
