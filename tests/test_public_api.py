"""RewardModel's public verbs (what the trainers and benchmarks call) and the shared-prefix engine's small steps."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rewarddance import RewardContext, RewardModel
from rewarddance.families import family_for
from rewarddance.judge_info import TrainedFor
from rewarddance.prefix import expand_cache, split_at_candidate, suffix_batch

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle above a blue square"


def _images(n: int, seed: int, size=(64, 64)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def test_trainers_and_benchmarks_use_only_public_members():
    """Training code and benchmarks reach the reward model through its public verbs, never ``rm._...``."""
    hits = []
    for folder in ("rewarddance/training", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if re.search(r"\brm\._[a-z]", line):
                    hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "private RewardModel members used:\n" + "\n".join(hits)


def test_the_package_exports_the_result_records():
    """``from rewarddance import ...`` gives the model's classes and both result records, prefer()'s included."""
    import rewarddance
    import rewarddance.model
    from rewarddance import Preference, RewardOutput

    assert Preference is rewarddance.model.Preference and RewardOutput is rewarddance.model.RewardOutput
    assert {"Preference", "RewardModel", "RewardOutput"} <= set(rewarddance.__all__) <= set(dir(rewarddance))
    for name in rewarddance.__all__:  # every listed name resolves
        assert getattr(rewarddance, name).__name__ == name


def test_no_library_module_is_much_over_600_lines():
    """Modules stay small enough to read in one sitting (issue "One step of architecture": about 600 lines)."""
    limit = 625  # "about 600": room for a docstring's growth, not for another section
    long = []
    for path in sorted((ROOT / "rewarddance").rglob("*.py")):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > limit:
            long.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not long, f"modules over {limit} lines:\n" + "\n".join(long)


def test_hidden_states_and_read_match_the_full_logits(rm_cache):
    """encode -> hidden_states -> read gives P(yes) and the margin of the model's own softmax over the vocabulary."""
    rm = rm_cache("llava")
    context = RewardContext()
    imgs = _images(2, seed=1)
    texts = rm.prompt_texts([PROMPT, "two green triangles"], context, pairwise=False)
    inputs = rm.encode(texts, [[im] for im in imgs])
    with torch.no_grad():
        hidden = rm.hidden_states(inputs)  # [B, T, H]
        p, margin = rm.read(hidden[:, -1], context)
        logp = rm.model(**rm.to_device(inputs)).logits[:, -1].float().log_softmax(-1)  # [B, V]
    assert hidden.shape[:2] == inputs["input_ids"].shape
    yes, no = rm.verdict_ids(context)
    lp_yes, lp_no = logp[:, yes].logsumexp(-1), logp[:, no].logsumexp(-1)
    torch.testing.assert_close(p, lp_yes.exp(), atol=0, rtol=1e-4)
    torch.testing.assert_close(margin, lp_yes - lp_no, atol=1e-4, rtol=1e-4)
    assert (margin[0] - margin[1]).abs() > 1e-2, "the two items should score differently"


def test_read_with_a_frozen_or_trainable_head(rm_cache):
    """The frozen head (scoring, rewards) gets no gradient; the trainable one does; token_log_probs is the head's
    log-softmax at the targets."""
    rm = rm_cache("llava")
    weight = rm.model.get_output_embeddings().weight
    was = weight.requires_grad
    weight.requires_grad_(True)
    try:
        hidden = torch.randn(3, weight.shape[1], requires_grad=True)
        _, margin = rm.read(hidden, RewardContext())
        margin.sum().backward()
        assert weight.grad is None and hidden.grad is not None and hidden.grad.abs().sum() > 0
        _, margin = rm.read(hidden, RewardContext(), trainable=True)
        margin.sum().backward()
        assert weight.grad is not None and weight.grad.abs().sum() > 0
        targets = torch.tensor([1, 5, 7])
        got = rm.token_log_probs(hidden, targets)
        w, b = rm.head()
        want = F.linear(hidden, w, b).float().log_softmax(-1).gather(1, targets[:, None])[:, 0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert not rm.head()[0].requires_grad and rm.head(trainable=True)[0].requires_grad
    finally:
        weight.grad = None
        weight.requires_grad_(was)


def test_save_loads_back_with_the_same_scores(tiny_vlm, tmp_path):
    rm = RewardModel.from_pretrained(tiny_vlm("llava"), device="cpu")
    info = TrainedFor(objective="pairwise", cot="none", task="alignment")
    out = rm.save(tmp_path / "judge", trained_for=info)
    assert rm.trained_for == info and (out / "rewarddance.json").exists()
    back = RewardModel.from_pretrained(out, device="cpu")
    assert back.trained_for == info
    imgs = _images(2, seed=3)
    torch.testing.assert_close(back.score(imgs, PROMPT).margin, rm.score(imgs, PROMPT).margin, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------- prefix engine
def test_split_at_candidate_ends_before_the_candidate_image(rm_cache):
    """The prefix holds the reference's image block and none of the candidate's, and two candidates share it."""
    rm = rm_cache("llava")
    ref, a, b = _images(3, seed=4)
    text = rm.prompt_texts([PROMPT], RewardContext(), pairwise=True)[0]
    ids_a = rm.encode([text], [[ref, a]])["input_ids"][0]
    ids_b = rm.encode([text], [[ref, b]])["input_ids"][0]
    P = split_at_candidate(rm, text, [ref, a], ids_a)
    assert P is not None
    image = rm.tokenizer.convert_tokens_to_ids("<image>")
    n_image = int((ids_a == image).sum()) // 2  # two images of one size
    assert int((ids_a[:P] == image).sum()) == n_image and int((ids_a[P:] == image).sum()) == n_image
    assert torch.equal(ids_a[:P], ids_b[:P])
    assert split_at_candidate(rm, "no image placeholder here", [ref, a], ids_a) is None


def test_expand_cache_repeats_the_prefix_per_row_and_never_writes_it():
    k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)  # [1, heads, P, head_dim]
    keep = k.clone()
    cache = expand_cache([(k, v)], 3)
    layer = cache.layers[0]
    assert torch.equal(layer.keys, k.expand(3, 2, 5, 4)) and torch.equal(layer.values, v.expand(3, 2, 5, 4))
    new_k, _ = cache.update(torch.ones(3, 2, 1, 4), torch.ones(3, 2, 1, 4), 0)  # one suffix token per row
    assert new_k.shape == (3, 2, 6, 4) and torch.equal(new_k[:, :, :5], keep.expand(3, 2, 5, 4))
    assert torch.equal(k, keep), "the shared prefix must not be written"


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_suffix_batch_pads_right_and_masks_the_prefix(family):
    rm = SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0), family=family_for(family))
    ids = [torch.tensor([11, 12, 13, 14, 15]), torch.tensor([11, 12, 13, 16])]
    rope = mm_types = None
    if rm.family.mrope:
        rope = [torch.arange(5).expand(3, 1, 5) * 10, torch.arange(4).expand(3, 1, 4) * 10]  # [3, 1, L]
        mm_types = [torch.zeros(5, dtype=torch.int), torch.zeros(4, dtype=torch.int)]
    inputs, last = suffix_batch(rm, ids, 3, [0, 1], [{}, {}], rope, mm_types)
    assert inputs["input_ids"].tolist() == [[14, 15], [16, 0]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert last.tolist() == [1, 0]
    if rope is not None:
        # the real suffix keeps its positions; the padding goes on counting from the last real one
        assert inputs["position_ids"][0].tolist() == [[30, 40], [30, 31]]
