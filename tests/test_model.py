"""RewardModel: P(yes) definition, batching, shared-prefix cache, quantisation, gradients, context."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from rewarddance import Example, RewardContext, RewardModel
from rewarddance.model import RewardOutput
from rewarddance.preprocess import image_inputs
from rewarddance.testing.tiny import FAMILIES

PROMPT = "a red circle left of a blue square"


def _images(n: int, seed: int = 0, sizes=None) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = sizes or [(64, 64)] * n
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes[:n]]


def _cat(outs):
    """One RewardOutput of several (p_yes and margin concatenated)."""
    return RewardOutput(p_yes=torch.cat([o.p_yes for o in outs]), margin=torch.cat([o.margin for o in outs]))


def _assert_same_scores(got, want, tol: float = 1e-4):
    """Same margins and log P(yes) to ``tol`` (absolute, in nats)."""
    torch.testing.assert_close(got.margin, want.margin, atol=tol, rtol=0)
    torch.testing.assert_close(got.p_yes.log(), want.p_yes.log(), atol=tol, rtol=0)


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
    torch.testing.assert_close(got.p_yes, expected, atol=0, rtol=1e-4)
    # the margin is log P(yes) - log P(no) over the same definition
    p_no = _independent_p_yes(rm, inputs, "no")
    torch.testing.assert_close(got.margin, (expected.log() - p_no.log()), atol=1e-4, rtol=1e-4)
    assert (got.margin[0] - got.margin[1]).abs() > 1e-2, "tiny model should react to its inputs"


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_and_cached_equal_one_at_a_time(rm_cache, family):
    rm = rm_cache(family)
    imgs = _images(3, seed=1, sizes=[(64, 64), (48, 80), (72, 56)])
    single = _cat([rm.score([im], PROMPT) for im in imgs])
    assert single.margin.max() - single.margin.min() > 0.01, "the images should score differently"
    before = rm.stats["prefix_cached_items"]
    cached = rm.score(imgs, PROMPT)
    assert rm.stats["prefix_cached_items"] == before + 3, "the shared-prefix path was not taken"
    rm.prefix_cache = False
    try:
        plain = rm.score(imgs, PROMPT, batch_size=2)
    finally:
        rm.prefix_cache = True
    # margins and log P(yes) (P(yes) itself is ~0.005 on these models); measured deviations are ~1e-6, while the
    # three images' margins differ by 0.08-1.9
    _assert_same_scores(plain, single)
    _assert_same_scores(cached, single)


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
    assert plain.margin.max() - plain.margin.min() > 0.01, "the candidates should score differently"
    _assert_same_scores(cached, plain)
    # the question is really pairwise: image 1 is the reference, image 2 the candidate
    text = rm.render(imgs[:1], PROMPT, references=[ref])[0]
    assert "Image 1" in text and "Image 2" in text and "better than image 1" in text


def test_qwen_cached_path_needs_explicit_mrope_positions(rm_cache):
    """With a reused cache, Qwen's default positions would be flat; the scores must still match."""
    rm = rm_cache("qwen2_vl")
    imgs = _images(2, seed=3, sizes=[(56, 112), (112, 56)])
    cached = rm.score(imgs, PROMPT)
    single = _cat([rm.score([im], PROMPT) for im in imgs])
    _assert_same_scores(cached, single)


def test_average_orders_asks_both_orders(rm_cache):
    """average_orders averages the question as asked with the question with the two images swapped."""
    rm = rm_cache("llava")
    a, b = _images(2, seed=4)
    ctx = RewardContext(average_orders=True)
    avg = rm.compare([b], [a], PROMPT, context=ctx)
    asked = rm.compare([b], [a], PROMPT)  # image 1 = a, image 2 = b
    swapped = rm.compare([a], [b], PROMPT)  # image 1 = b, image 2 = a
    assert (asked.margin - swapped.margin).abs() > 0.05, "the order should matter to this model"
    torch.testing.assert_close(avg.margin, (asked.margin - swapped.margin) / 2, atol=1e-4, rtol=0)
    torch.testing.assert_close(avg.p_yes, (asked.p_yes + 1 - swapped.p_yes) / 2, atol=1e-6, rtol=0)
    ba = rm.compare([a], [b], PROMPT, context=ctx)
    torch.testing.assert_close(avg.margin, -ba.margin, atol=1e-4, rtol=0)


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
    _assert_same_scores(a, b)
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
    _assert_same_scores(out, plain)
    # reasoning first: the reward is read after the decoded reason and the final-answer cue
    ctx = RewardContext(cot="reasoning_first", max_reason_tokens=5)
    reasoning = rm.score(imgs, PROMPT, context=ctx)
    assert reasoning.reasons is not None and len(reasoning.reasons) == 2
    for i, (img, text) in enumerate(zip(imgs, rm.render(imgs, PROMPT, context=ctx))):
        follow = text + reasoning.reasons[i] + "\nFinal answer (yes or no):"
        inputs = rm.processor(text=[follow], images=[img], return_tensors="pt")
        expected = _independent_p_yes(rm, inputs)
        torch.testing.assert_close(reasoning.p_yes[i : i + 1], expected, atol=0, rtol=1e-4)
    # ... which is not where the judgment-first reward is read
    assert (reasoning.p_yes.log() - plain.p_yes.log()).abs().min() > 1e-2


QUANT_PROMPTS = [PROMPT, "two green triangles", "a yellow cat on the left", "one black dog"]


def _quant_margins(rm: RewardModel) -> torch.Tensor:
    """Margins on 3 images x 4 prompts: P(yes) is ~0.005 on these models, so margins are the scale that means
    something; 12 items so that a chance correlation between two unrelated models is unlikely."""
    imgs = _images(3, seed=7)
    return rm.score([im for im in imgs for _ in QUANT_PROMPTS], QUANT_PROMPTS * 3).margin


def _agrees(got: torch.Tensor, want: torch.Tensor, what: str) -> bool:
    """Margins that agree: correlation > 0.95 and no item off by a standard deviation of ``want``.

    Measured on qwen2_vl: 8-bit vs fp32 (0.999, 0.13 sd), 4-bit vs the fp32 model with NF4-rounded weights (0.991,
    0.24 sd); a model whose weights were re-randomised (seeds 1-6) at best (0.78, 2.6 sd).
    """
    corr = torch.corrcoef(torch.stack([got, want]))[0, 1].item()
    dev = ((got - want).abs().max() / want.std()).item()
    print(f"{what}: correlation {corr:.3f}, max |d margin| {dev:.2f} sd")
    return corr > 0.95 and dev < 1.0


def test_quantized_8bit_close_to_fp32(tiny_vlm):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    path = tiny_vlm("qwen2_vl")
    fp32 = _quant_margins(RewardModel.from_pretrained(path, device="cpu"))
    q8 = RewardModel.from_pretrained(path, device="cpu", quantization="8bit")
    linear8 = [m for m in q8.model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert linear8, "no 8-bit layers"
    assert not isinstance(q8.model.get_output_embeddings(), bnb.nn.Linear8bitLt), "lm_head must stay full precision"
    assert _agrees(_quant_margins(q8), fp32, "8-bit")
    # the same comparison rejects a model whose weights were re-randomised
    broken = RewardModel.from_pretrained(tiny_vlm("qwen2_vl", seed=1), device="cpu", quantization="8bit")
    assert not _agrees(_quant_margins(broken), fp32, "8-bit, other weights")


def test_quantized_4bit_computes_with_the_nf4_weights(tiny_vlm):
    """NF4 (one 64-wide block per row) moves this width-64 random model's margins as far as re-randomising it would
    (measured: 4.5 sd), so the 4-bit model is compared with the fp32 model carrying the NF4-rounded weights."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    # bitsandbytes' CPU 4-bit kernels need every Linear's in_features to be a multiple of the block size (64), as
    # in any real checkpoint; the default tiny vision tower (width 32) is not, so widen it here.
    path = tiny_vlm("qwen2_vl", vision_hidden=64)
    q4 = RewardModel.from_pretrained(path, device="cpu", quantization="4bit")
    linear4 = {n: m for n, m in q4.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(linear4) >= 8
    assert all(m.weight.dtype == torch.uint8 for m in linear4.values()), "4-bit weights are stored packed in uint8"
    assert "lm_head" not in linear4, "lm_head must stay full precision"
    rounded = RewardModel.from_pretrained(path, device="cpu")
    modules = dict(rounded.model.named_modules())
    with torch.no_grad():
        for name, m in linear4.items():
            state = m.weight.quant_state
            assert state.quant_type == "nf4", name
            w = modules[name].weight
            w.copy_(bnbf.dequantize_4bit(*bnbf.quantize_4bit(w.data, blocksize=state.blocksize, quant_type="nf4")))
    want = _quant_margins(rounded)
    assert _agrees(_quant_margins(q4), want, "4-bit")
    broken = RewardModel.from_pretrained(
        tiny_vlm("qwen2_vl", vision_hidden=64, seed=1), device="cpu", quantization="4bit"
    )
    assert not _agrees(_quant_margins(broken), want, "4-bit, other weights")


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
    # same numbers as the PIL path within the uint8 rounding the stock processors apply after resizing: compared as
    # log P(yes) and margins (P(yes) is ~0.005 here); measured at most 0.01 nats, while the two items' margins differ
    # by 0.1-3.6
    with torch.no_grad():
        plain = rm.score(pixels.detach(), [PROMPT, "a blue square"])
        margin = rm.reward(pixels.detach(), [PROMPT, "a blue square"], output="margin")
    assert (plain.margin[0] - plain.margin[1]).abs() > 0.05
    dev = max((r.detach().log() - plain.p_yes.log()).abs().max(), (margin - plain.margin).abs().max())
    print(f"{family}: reward() vs score() max |d log P(yes)|, |d margin| = {dev:.2e}")
    assert dev < 0.02


def test_pairwise_reward_gradients_reach_candidates_only(rm_cache):
    rm = rm_cache("qwen2_vl")
    # pixels on the uint8 grid, at the processor's own size (56 px): the stock path neither rounds nor resizes, so
    # both paths see the same numbers (measured |d margin| ~2e-6)
    pixels = (_smooth_pixels(2, 56, 56, seed=1) * 255).round().div(255).requires_grad_()
    # references are fixed targets (ReFL): one that requires grad, as a generated reference would, gets none
    refs = (_smooth_pixels(2, 56, 56, seed=2) * 255).round().div(255).requires_grad_()
    m = rm.reward(pixels, PROMPT, references=refs, output="margin")
    m.sum().backward()
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
    assert refs.grad is None or not refs.grad.any(), "reward() must not send gradients to the references"
    refs = refs.detach()
    with torch.no_grad():
        plain = rm.compare(pixels.detach(), refs, PROMPT).margin
        other_refs = rm.compare(pixels.detach(), refs.flip(0), PROMPT).margin
    assert (other_refs - plain).abs().max() > 0.1, "the reference should matter to this model"
    torch.testing.assert_close(m.detach(), plain, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_preprocessing_matches_hf_processor(rm_cache, family):
    """The differentiable pixel inputs equal the stock processor's on the same image, to uint8 rounding."""
    rm = rm_cache(family)
    pixels = _smooth_pixels(1, 48, 80, seed=3)
    ours = image_inputs(rm.processor, [pixels[0]], rm.family.name)  # what reward() feeds the model
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


def test_reward_validates_pixels_once_and_makes_no_pil_images(rm_cache, monkeypatch):
    """reward() scans each tensor's values once (the whole batch, then each tensor reference) and never turns a
    tensor into a PIL image; the numbers stay those of the PIL-free preprocessing."""
    import rewarddance.images as images_mod
    import rewarddance.model as model_mod
    import rewarddance.preprocess as preprocess_mod

    rm = rm_cache("qwen2_vl")
    pixels = _smooth_pixels(2, 48, 80, seed=4)
    refs = _smooth_pixels(2, 48, 80, seed=5)

    def reference_margins(image_lists, references=None):  # text ids of the stock processor, torch image inputs
        inputs = dict(rm.prepare(pixels, PROMPT, references=references))
        inputs.update(
            rm.family.stack_image_inputs([image_inputs(rm.processor, lst, rm.family.name) for lst in image_lists])
        )
        with torch.no_grad():
            return rm.read(rm.hidden_states(inputs)[:, -1], RewardContext())[1]

    want = reference_margins([[p] for p in pixels])
    want_pairwise = reference_margins([[r, p] for r, p in zip(refs, pixels)], references=refs)
    checked, real_check = [], images_mod.check_pixels

    def counting_check(t, label="pixels"):
        checked.append((label, tuple(t.shape)))
        return real_check(t, label)

    real_load = images_mod.load_image

    def no_tensors(src, *args, **kwargs):
        assert not isinstance(src, torch.Tensor), "reward() turned a tensor into a PIL image"
        return real_load(src, *args, **kwargs)

    for module in (images_mod, model_mod, preprocess_mod):
        if hasattr(module, "check_pixels"):
            monkeypatch.setattr(module, "check_pixels", counting_check)
        if hasattr(module, "load_image"):
            monkeypatch.setattr(module, "load_image", no_tensors)
    with torch.no_grad():
        got = rm.reward(pixels, PROMPT, output="margin")
        assert checked == [("pixels", (2, 3, 48, 80))]
        checked.clear()
        got_pairwise = rm.reward(pixels, PROMPT, references=refs, output="margin")
        assert sorted(checked) == [("pixels", (2, 3, 48, 80)), ("references", (2, 3, 48, 80))]
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(got_pairwise, want_pairwise, atol=0, rtol=0)


def test_prefer_pairwise_and_pointwise(rm_cache):
    """prefer(a, b) is P(b better than a): pairwise it is compare(b, a); pointwise sigmoid(margin_b - margin_a) of
    score() (Bradley-Terry), the complement when a and b swap; the default objective is the judge's own."""
    from rewarddance.judge_info import TrainedFor

    rm = rm_cache("llava")
    a, b = _images(1, seed=1), _images(3, seed=2)
    prompts = [PROMPT, "a blue square", "two green triangles"]
    pw = rm.prefer(a, b, prompts)  # a general VLM (no rewarddance.json) is asked pairwise
    want = rm.compare(b, a * 3, prompts)
    assert pw.objective == "pairwise" and len(pw) == 3 and pw.p_yes_a is None
    torch.testing.assert_close(pw.p_b_better, want.p_yes, atol=1e-6, rtol=0)
    torch.testing.assert_close(pw.margin, want.margin, atol=1e-5, rtol=0)
    pt = rm.prefer(a, b, prompts, objective="pointwise")
    sa, sb = rm.score(a * 3, prompts), rm.score(b, prompts)
    old = [0.5 * (1 + math.tanh(float(mb - ma) / 2)) for ma, mb in zip(sa.margin, sb.margin)]  # the CLI's formula
    assert pt.objective == "pointwise" and pt.p_b_better.tolist() == pytest.approx(old, abs=1e-5)
    torch.testing.assert_close(pt.margin, sb.margin - sa.margin, atol=1e-5, rtol=0)
    torch.testing.assert_close(pt.p_yes_a, sa.p_yes, atol=1e-6, rtol=0)
    torch.testing.assert_close(pt.p_yes_b, sb.p_yes, atol=1e-6, rtol=0)
    assert (pt.p_b_better - pw.p_b_better).abs().max() > 1e-3  # the two objectives give different numbers here
    swapped = rm.prefer(b, a, prompts, objective="pointwise")
    torch.testing.assert_close(swapped.p_b_better, 1 - pt.p_b_better, atol=1e-5, rtol=0)
    old_trained_for = rm.trained_for
    try:
        rm.trained_for = TrainedFor(objective="pointwise")
        torch.testing.assert_close(rm.prefer(a, b, prompts).p_b_better, pt.p_b_better, atol=1e-6, rtol=0)
    finally:
        rm.trained_for = old_trained_for
    with pytest.raises(ValueError, match="objective must be one of"):
        rm.prefer(a, b, PROMPT, objective="listwise")
    with pytest.raises(ValueError, match="a has 2 images and b 3"):
        rm.prefer(_images(2), b, PROMPT)
    with pytest.raises(ValueError, match="prompts: got 2 prompts for 3 pairs"):
        rm.prefer(a, b, prompts[:2], objective="pointwise")
