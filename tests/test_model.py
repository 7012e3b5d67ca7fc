"""RewardModel: P(yes) definition, batching, shared-prefix cache, quantisation, gradients, context."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rewarddance import Example, RewardContext, RewardModel
from rewarddance.tiny import FAMILIES

PROMPT = "a red circle left of a blue square"


def _images(n: int, seed: int = 0, sizes=None) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = sizes or [(64, 64)] * n
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes[:n]]


def _independent_p_yes(rm: RewardModel, inputs, word: str = "yes") -> torch.Tensor:
    """Full forward with logits, softmax at the last position, summed over every token that decodes to ``word``."""
    tok = rm.tokenizer
    special = set(tok.all_special_ids)
    ids = [i for i in range(len(tok)) if i not in special and tok.decode([i]).strip().lower() == word]
    with torch.no_grad():
        logits = rm.model(**inputs).logits[:, -1].float()  # [B, V]
    return logits.softmax(-1)[:, ids].sum(-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_p_yes_matches_independent_computation(rm_cache, family):
    rm = rm_cache(family)
    imgs = _images(2, sizes=[(64, 64), (48, 80)])
    inputs = rm.prepare(imgs, [PROMPT, "two green triangles"])
    expected = _independent_p_yes(rm, inputs)
    got = rm.score(imgs, [PROMPT, "two green triangles"])
    assert got.p_yes.dtype == torch.float32 and got.p_yes.shape == (2,)
    torch.testing.assert_close(got.p_yes, expected, atol=1e-5, rtol=0)
    # the margin is log P(yes) - log P(no) over the same definition
    p_no = _independent_p_yes(rm, inputs, "no")
    torch.testing.assert_close(got.margin, (expected.log() - p_no.log()), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got.p_yes[0], got.p_yes[1]), "tiny model should react to its inputs"


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_and_cached_equal_one_at_a_time(rm_cache, family):
    rm = rm_cache(family)
    imgs = _images(3, seed=1, sizes=[(64, 64), (48, 80), (72, 56)])
    single = torch.cat([rm.score([im], PROMPT).p_yes for im in imgs])
    before = rm.stats["prefix_cached_items"]
    cached = rm.score(imgs, PROMPT)
    assert rm.stats["prefix_cached_items"] == before + 3, "the shared-prefix path was not taken"
    rm.prefix_cache = False
    try:
        plain = rm.score(imgs, PROMPT, batch_size=2)
    finally:
        rm.prefix_cache = True
    torch.testing.assert_close(plain.p_yes, single, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached.p_yes, single, atol=1e-4, rtol=0)
    assert (plain.p_yes - single).abs().max() < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_pairwise_cached_equals_uncached(rm_cache, family):
    rm = rm_cache(family)
    ref = _images(1, seed=5, sizes=[(60, 60)])[0]
    imgs = _images(3, seed=2, sizes=[(64, 64), (48, 80), (64, 64)])
    before = rm.stats["prefix_cached_items"]
    cached = rm.compare(imgs, ref, PROMPT, batch_size=2)
    assert rm.stats["prefix_cached_items"] == before + 3
    rm.prefix_cache = False
    try:
        plain = rm.compare(imgs, [ref] * 3, PROMPT)
    finally:
        rm.prefix_cache = True
    torch.testing.assert_close(cached.p_yes, plain.p_yes, atol=1e-4, rtol=0)
    torch.testing.assert_close(cached.margin, plain.margin, atol=1e-3, rtol=0)
    # the question is really pairwise: image 1 is the reference, image 2 the candidate
    text = rm.render(imgs[:1], PROMPT, references=[ref])[0]
    assert "Image 1" in text and "Image 2" in text and "better than image 1" in text


def test_qwen_cached_path_needs_explicit_mrope_positions(rm_cache):
    """With a reused cache, Qwen's default positions would be flat; the scores must still match."""
    rm = rm_cache("qwen2_vl")
    imgs = _images(2, seed=3, sizes=[(56, 112), (112, 56)])
    cached = rm.score(imgs, PROMPT)
    single = torch.cat([rm.score([im], PROMPT).p_yes for im in imgs])
    torch.testing.assert_close(cached.p_yes, single, atol=1e-4, rtol=0)


def test_average_orders_is_symmetric(rm_cache):
    rm = rm_cache("llava")
    a, b = _images(2, seed=4)
    ctx = RewardContext(average_orders=True)
    ab = rm.compare([b], [a], PROMPT, context=ctx).p_yes
    ba = rm.compare([a], [b], PROMPT, context=ctx).p_yes
    torch.testing.assert_close(ab + ba, torch.ones(1), atol=1e-5, rtol=0)


def test_normalize_yes_no_and_explicit_answer_tokens(rm_cache):
    rm = rm_cache("qwen2_vl")
    img = _images(1)
    vocab = rm.score(img, PROMPT)
    yn = rm.score(img, PROMPT, context=RewardContext(normalize="yes_no"))
    # renormalised over yes and no: p = sigmoid(margin), and the margin itself does not change
    torch.testing.assert_close(yn.p_yes, torch.sigmoid(vocab.margin), atol=1e-5, rtol=0)
    torch.testing.assert_close(yn.margin, vocab.margin)
    one = rm.score(img, PROMPT, context=RewardContext(answer_tokens=("Yes", "No")))
    yes_id = rm.tokenizer.encode("Yes", add_special_tokens=False)[0]
    inputs = rm.prepare(img, PROMPT)
    with torch.no_grad():
        expected = rm.model(**inputs).logits[:, -1].float().softmax(-1)[:, yes_id]
    torch.testing.assert_close(one.p_yes, expected, atol=1e-6, rtol=0)
    assert float(one.p_yes) < float(vocab.p_yes)


def test_vqascore_layout_and_reading(rm_cache):
    rm = rm_cache("llava")
    img = _images(1)
    ctx = RewardContext(task="vqascore")
    text = rm.render(img, "a cat", context=ctx)[0]
    # image first, then exactly the VQAScore question, in the family's chat template
    assert text == 'USER: <image>\nDoes this figure show "a cat"? Please answer yes or no. ASSISTANT:'
    out = rm.score(img, "a cat", context=ctx)
    yes_id = rm.tokenizer.encode("Yes", add_special_tokens=False)[0]
    with torch.no_grad():
        expected = rm.model(**rm.prepare(img, "a cat", context=ctx)).logits[:, -1].float().softmax(-1)[:, yes_id]
    torch.testing.assert_close(out.p_yes, expected, atol=1e-6, rtol=0)


def test_context_renders_task_criteria_examples(rm_cache):
    rm = rm_cache("qwen2_vl")
    ex_img = _images(1, seed=9)[0]
    ctx = RewardContext(
        task="quality",
        criteria="no extra fingers",
        examples=(Example(ex_img, "a dog", True, reason="it shows a dog"),),
        cot="judgment_first",
    )
    text = rm.render(_images(1), "a cat", context=ctx)[0]
    assert "no extra fingers" in text and "Example 1" in text and "it shows a dog" in text
    assert text.count("<|image_pad|>") == 2 and "first, then give a short reason" in text
    # examples are real images in the inputs: two image grids
    assert rm.prepare(_images(1), "a cat", context=ctx)["image_grid_thw"].shape[0] == 2
    a = rm.score(_images(2), "a cat", context=ctx)
    rm.prefix_cache = False
    try:
        b = rm.score(_images(2), "a cat", context=ctx)
    finally:
        rm.prefix_cache = True
    torch.testing.assert_close(a.p_yes, b.p_yes, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="unknown task"):
        RewardContext(task="nope")
    with pytest.raises(ValueError, match="cot"):
        RewardContext(cot="sometimes")


def test_chain_of_thought_reasons(rm_cache):
    rm = rm_cache("llava")
    imgs = _images(2)
    first = RewardContext(cot="judgment_first", decode_reasons=True, max_reason_tokens=5)
    out = rm.score(imgs, PROMPT, context=first)
    assert out.reasons is not None and len(out.reasons) == 2 and all(isinstance(r, str) for r in out.reasons)
    # judgment first: the reward is read at the first answer token, so decoding does not change it
    plain = rm.score(imgs, PROMPT, context=RewardContext(cot="judgment_first"))
    assert plain.reasons is None
    torch.testing.assert_close(out.p_yes, plain.p_yes, atol=1e-5, rtol=0)
    reasoning = rm.score(imgs, PROMPT, context=RewardContext(cot="reasoning_first", max_reason_tokens=5))
    assert reasoning.reasons is not None and torch.isfinite(reasoning.p_yes).all()
    assert ((reasoning.p_yes > 0) & (reasoning.p_yes < 1)).all()


def test_quantized_8bit_close_to_fp32(tiny_vlm):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    path = tiny_vlm("qwen2_vl")
    imgs = _images(3, seed=7)
    fp32 = RewardModel.from_pretrained(path, device="cpu").score(imgs, PROMPT)
    q8 = RewardModel.from_pretrained(path, device="cpu", quantization="8bit")
    linear8 = [m for m in q8.model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert linear8, "no 8-bit layers"
    assert not isinstance(q8.model.get_output_embeddings(), bnb.nn.Linear8bitLt), "lm_head must stay full precision"
    out = q8.score(imgs, PROMPT)
    dev = (out.p_yes - fp32.p_yes).abs().max()
    print(f"8-bit max |dP(yes)| = {dev:.5f} |dmargin| = {(out.margin - fp32.margin).abs().max():.4f}")
    assert dev < 0.05


def test_quantized_4bit_really_quantized(tiny_vlm):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    # bitsandbytes' CPU 4-bit kernels need every Linear's in_features to be a multiple of the block size (64), as
    # in any real checkpoint; the default tiny vision tower (width 32) is not, so widen it here.
    path = tiny_vlm("qwen2_vl", vision_hidden=64)
    imgs = _images(3, seed=7)
    fp32 = RewardModel.from_pretrained(path, device="cpu").score(imgs, PROMPT)
    q4 = RewardModel.from_pretrained(path, device="cpu", quantization="4bit")
    linear4 = [m for m in q4.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) >= 8
    assert all(m.weight.dtype == torch.uint8 for m in linear4), "4-bit weights are stored packed in uint8"
    out = q4.score(imgs, PROMPT)
    # NF4 with one 64-wide block per row is coarse on a width-64 model. Measured here: max |dP(yes)| 0.002 on
    # P(yes) ~ 0.007 (about 30 % relative) and max |d margin| printed below; the bounds leave headroom for seeds.
    dev = (out.p_yes - fp32.p_yes).abs().max()
    dm = (out.margin - fp32.margin).abs().max()
    print(f"4-bit max |dP(yes)| = {dev:.4f} |dmargin| = {dm:.4f}; fp32 P(yes) = {fp32.p_yes.tolist()}")
    assert dev < 0.1, dev
    assert dm < 1.0, dm
    assert ((out.p_yes > 0) & (out.p_yes < 1)).all()


def _smooth_pixels(B: int, H: int, W: int, seed: int = 0) -> torch.Tensor:
    """Smooth images (random low-resolution colour fields upsampled), like generated images rather than noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(B, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(H, W), mode="bilinear", align_corners=False).clamp(0, 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_reward_is_differentiable_and_matches_score(rm_cache, family):
    rm = rm_cache(family)
    pixels = _smooth_pixels(2, 48, 80).requires_grad_()
    r = rm.reward(pixels, [PROMPT, "a blue square"])
    assert r.shape == (2,) and r.dtype == torch.float32
    r.sum().backward()
    grad = pixels.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # same numbers as the PIL path within the uint8 rounding the stock processors apply after resizing
    with torch.no_grad():
        plain = rm.score(pixels.detach(), [PROMPT, "a blue square"]).p_yes
    dev = (r.detach() - plain).abs().max()
    print(f"{family}: reward() vs score() max |dP(yes)| = {dev:.2e}")
    assert dev < 2e-3


def test_pairwise_reward_gradients_reach_candidates_only(rm_cache):
    rm = rm_cache("qwen2_vl")
    pixels = _smooth_pixels(2, 56, 56, seed=1).requires_grad_()
    refs = _smooth_pixels(2, 56, 56, seed=2)
    m = rm.reward(pixels, PROMPT, references=refs, output="margin")
    m.sum().backward()
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
    with torch.no_grad():
        plain = rm.compare(pixels.detach(), refs, PROMPT).margin
    assert (m.detach() - plain).abs().max() < 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_preprocessing_matches_hf_processor(rm_cache, family):
    """The differentiable pixel inputs equal the stock processor's on the same image, to uint8 rounding."""
    rm = rm_cache(family)
    pixels = _smooth_pixels(1, 48, 80, seed=3)
    ours = rm._differentiable_image_inputs([pixels[0]])
    stock = rm.prepare(pixels, PROMPT)
    for key, value in ours.items():
        if torch.is_floating_point(value):
            dev = (value - stock[key]).abs().max()
            print(f"{family}: max |d {key}| = {dev:.4f} (normalised units)")
            # the stock path rounds to uint8 after each resize: at most ~1.75 uint8 levels (1.75/255/std); see
            # tests/test_preprocess.py for noise images and hub-sized processor settings
            assert dev < 2.5 / 255 / min(rm.processor.image_processor.image_std), dev
        else:
            assert torch.equal(value, stock[key]), key
