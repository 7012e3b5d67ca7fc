"""Differentiable preprocessing (``rewarddance.preprocess``) against the stock Hugging Face processors.

Every family is checked on tiny models of the real architectures (their processors at 56 px) and on image
processors set up like the hub checkpoints that users load (448-2048 px, tiling on). Images are uint8 noise, the
hardest case for resampling filters, so the PIL input of the stock path and our tensor input hold the same values.

Tolerance, measured on these images (one "level" is 1/255 of the pixel range, i.e. 1/255/std after normalising):
the stock processors round to uint8 after every resize and we do not, so Qwen-VL, InternVL, LLaVA and LLaVA-OneVision
differ by at most 1.09 levels, and Idefics3 / SmolVLM, which resize up to three times, by at most 1.75 levels (1.95 on
larger multi-image samples tried by hand). The tests allow 1.5 and 2.5 levels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rewarddance.images import ImageError
from rewarddance.preprocess import SUPPORTED_FAMILIES, image_inputs
from rewarddance.testing.tiny import FAMILIES

LEVELS = {"idefics3": 2.5, "smolvlm": 2.5}  # allowed deviation in uint8 levels; 1.5 for the other families
CASES = {  # (height, width) of the images of one sample
    "square": [(64, 64)],
    "wide": [(48, 80)],
    "tall": [(100, 60)],
    "panorama": [(30, 120)],  # LLaVA-OneVision picks a 1x2 anyres canvas, Idefics3 a 1x2 tile grid
    "three": [(64, 64), (48, 80), (100, 60)],  # several images in one sample: OneVision pads to squares
}


def _images(shapes, seed: int = 0) -> tuple[list[Image.Image], list[torch.Tensor]]:
    """The same uint8 noise as PIL images (stock path) and as [3, H, W] tensors in [0, 1] (ours)."""
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    pils = [Image.fromarray(a) for a in arrays]
    tensors = [torch.from_numpy(a).permute(2, 0, 1).float().div(255).requires_grad_() for a in arrays]
    return pils, tensors


def _stock(processor, pils) -> dict[str, torch.Tensor]:
    """Image keys of the full processor's output for one sample holding ``pils``."""
    content = [{"type": "image"}] * len(pils) + [{"type": "text", "text": "hi"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    out = processor(text=[text], images=[pils], return_tensors="pt")
    return {k: v for k, v in out.items() if k in processor.image_processor.model_input_names}


def _assert_matches(ours: dict, stock: dict, image_processor, family: str) -> None:
    assert set(ours) == set(stock)
    for key, ref in stock.items():
        assert ours[key].shape == ref.shape, key
        assert ours[key].dtype == ref.dtype, key
        if key != "pixel_values":
            assert torch.equal(ours[key], ref), key
    std = np.min(image_processor.image_std)
    tol = LEVELS.get(family, 1.5) / 255 / std
    err = (ours["pixel_values"].detach() - stock["pixel_values"]).abs().max().item()
    assert err <= tol, f"{family}: max |diff| {err:.4f} = {err * 255 * std:.2f} levels"


def _assert_gradients(ours: dict, tensors: list[torch.Tensor]) -> None:
    pixels = ours["pixel_values"]
    weights = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0))
    (pixels * weights).sum().backward()
    for t in tensors:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def processors(tiny_vlm):
    """``processors(family)`` -> a freshly loaded processor of the tiny ``family`` model (built once)."""
    from transformers import AutoProcessor

    return lambda family: AutoProcessor.from_pretrained(tiny_vlm(family))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_stock_processor(processors, family, case):
    processor = processors(family)
    pils, tensors = _images(CASES[case])
    ours = image_inputs(processor, tensors, family)
    _assert_matches(ours, _stock(processor, pils), processor.image_processor, family)
    _assert_gradients(ours, tensors)


@pytest.mark.parametrize(
    "family,setting,value",
    [
        ("idefics3", "do_image_splitting", False),  # one square resize instead of tiles
        ("smolvlm", "max_image_size", {"longest_edge": 16}),  # 4x4 tiles of 16 px + global view
        ("qwen2_vl", "size", {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16}),  # upscales small images
        ("internvl", "max_patches", 6),  # wider tile grids
        ("llava", "crop_size", {"height": 42, "width": 56}),  # non-square crop
    ],
)
def test_changed_settings_are_followed(processors, family, setting, value):
    processor = processors(family)
    setattr(processor.image_processor, setting, value)
    pils, tensors = _images(CASES["three"], seed=1)
    ours = image_inputs(processor, tensors, family)
    _assert_matches(ours, _stock(processor, pils), processor.image_processor, family)
    _assert_gradients(ours, tensors)


def test_image_processor_alone(processors):
    """An image processor works in place of a processor; without InternVLProcessor nothing turns tiling on."""
    image_processor = processors("internvl").image_processor
    pils, tensors = _images(CASES["three"])
    ours = image_inputs(image_processor, tensors, "internvl")
    stock = dict(image_processor(pils, return_tensors="pt"))
    stock.pop("num_patches")
    assert ours["pixel_values"].shape[0] == 3
    _assert_matches(ours, stock, image_processor, "internvl")


CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
HUB_SETTINGS = {  # image settings of the named checkpoints' preprocessor configs, written out (no download)
    "Qwen/Qwen2-VL-2B-Instruct": ("qwen2_vl", "Qwen2VLImageProcessor", dict(min_pixels=3136, max_pixels=12845056)),
    "Qwen/Qwen3-VL-2B-Instruct": (
        "qwen3_vl",
        "Qwen2VLImageProcessor",
        dict(
            size={"shortest_edge": 65536, "longest_edge": 16777216},
            patch_size=16,
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
        ),
    ),
    "HuggingFaceTB/SmolVLM-256M-Instruct": (
        "smolvlm",
        "SmolVLMImageProcessor",
        dict(
            size={"longest_edge": 2048}, max_image_size={"longest_edge": 512}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),
    ),
    "OpenGVLab/InternVL3-1B-hf": (
        "internvl",
        "GotOcr2ImageProcessor",
        # crop_to_patches is what InternVLProcessor passes on every call
        dict(
            size={"height": 448, "width": 448},
            crop_to_patches=True,
            max_patches=12,
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        ),
    ),
    "llava-hf/llava-1.5-7b-hf": (
        "llava",
        "CLIPImageProcessor",
        dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
    ),
    "LlavaImageProcessor with do_pad (pad to square)": (
        "llava",
        "LlavaImageProcessor",
        dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_pad=True),
    ),
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf": (
        "llava_onevision",
        "LlavaOnevisionImageProcessor",
        dict(size={"height": 384, "width": 384}, image_mean=[0.5] * 3, image_std=[0.5] * 3),
    ),
}


@pytest.mark.parametrize("checkpoint", list(HUB_SETTINGS))
def test_hub_checkpoint_settings(checkpoint):
    import transformers

    family, cls, kwargs = HUB_SETTINGS[checkpoint]
    image_processor = getattr(transformers, cls)(**kwargs)
    pils, tensors = _images([(200, 330)], seed=2)
    ours = image_inputs(image_processor, tensors, family)
    stock = image_processor([pils], return_tensors="pt")
    stock = {k: v for k, v in stock.items() if k in image_processor.model_input_names}
    _assert_matches(ours, stock, image_processor, family)
    _assert_gradients(ours, tensors)


def test_supported_families_are_the_tiny_families():
    assert set(SUPPORTED_FAMILIES) == set(FAMILIES)


def _bad(kind: str):
    good = torch.rand(3, 8, 8)
    return {
        "not a list": good,
        "empty": [],
        "not a tensor": [np.zeros((3, 8, 8), dtype=np.float32)],
        "HWC": [good.permute(1, 2, 0)],
        "batched": [good[None]],
        "grayscale": [good[:1]],
        "uint8": [(good * 255).to(torch.uint8)],
        "above 1": [good * 2],
        "negative": [good - 0.5],
        "NaN": [torch.where(good > 0.5, torch.nan, good)],
    }[kind]


@pytest.mark.parametrize(
    "kind",
    ["not a list", "empty", "not a tensor", "HWC", "batched", "grayscale", "uint8", "above 1", "negative", "NaN"],
)
def test_bad_images_raise(processors, kind):
    with pytest.raises(ImageError, match="images"):
        image_inputs(processors("llava"), _bad(kind), "llava")


def test_unknown_family_raises(processors):
    with pytest.raises(ValueError, match="unknown family 'blip2'.*qwen2_vl"):
        image_inputs(processors("llava"), [torch.rand(3, 8, 8)], "blip2")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_matches_cpu(processors, family):
    """On CUDA the outputs stay on the device and agree with the CPU path (Lanczos runs on the CPU for both)."""
    processor = processors(family)
    _, tensors = _images(CASES["three"])
    cpu = image_inputs(processor, tensors, family)
    cuda_inputs = [t.detach().cuda().requires_grad_() for t in tensors]
    gpu = image_inputs(processor, cuda_inputs, family)
    for key, value in cpu.items():
        assert gpu[key].device.type == "cuda"
        torch.testing.assert_close(gpu[key].cpu(), value.detach(), atol=1e-4, rtol=0)
    _assert_gradients(gpu, cuda_inputs)
