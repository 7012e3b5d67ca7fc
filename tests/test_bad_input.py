"""Bad input gets a clear error naming the input, or is converted where that is the right thing to do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rewarddance import RewardContext, RewardModel
from rewarddance.families import UnsupportedModelError
from rewarddance.images import ImageError, load_image, to_tensor
from rewarddance.model import ModelLoadError, PromptTooLongError
from rewarddance.tokens import AnswerTokenError, answer_ids


def _png(path, arr, mode=None):
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def test_truncated_and_unreadable_files_name_the_file(tmp_path):
    good = _png(tmp_path / "good.png", np.full((32, 32, 3), 120, np.uint8))
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    for name in ("cut.png", "text.png", "missing.png"):
        with pytest.raises(ImageError, match=name):
            load_image(tmp_path / name)
    assert load_image(good).size == (32, 32)


def test_odd_modes_are_converted_to_rgb(tmp_path):
    rng = np.random.default_rng(0)
    gray = _png(tmp_path / "gray.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    rgba = tmp_path / "rgba.png"
    Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), mode="RGBA").save(rgba)
    pal = tmp_path / "pal.png"
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert("P").save(pal)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(deep)  # 16-bit grayscale, full white
    for path in (gray, rgba, pal, deep):
        img = load_image(path)
        assert img.mode == "RGB" and img.size == (16, 16)
    assert to_tensor(load_image(deep)).min() == 1.0  # 16-bit white stays white, not clipped to 8-bit garbage
    # transparent pixels composite over white
    clear = Image.fromarray(np.zeros((4, 4, 4), np.uint8), mode="RGBA")
    assert to_tensor(load_image(clear)).min() == 1.0


def test_decompression_bomb_is_refused(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (4000, 3000)).save(path)
    with pytest.raises(ImageError, match="huge.png.*exceeds the limit"):
        load_image(path, max_pixels=1_000_000)


def test_nan_and_out_of_range_pixels(rm_cache):
    rm = rm_cache("llava")
    bad = torch.rand(2, 3, 32, 32)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ImageError, match="NaN"):
        rm.reward(bad, "a cat")
    with pytest.raises(ImageError, match="NaN"):
        rm.score(bad, "a cat")
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        rm.score(torch.full((1, 3, 32, 32), 3.0), "a cat")


def test_empty_prompt_and_mismatched_batch(rm_cache):
    rm = rm_cache("llava")
    img = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"prompts\[1\]: empty prompt"):
        rm.score(img, ["a cat", "  "])
    with pytest.raises(ValueError, match="2 prompts for 1 images|got 2 prompts"):
        rm.score(img[:1], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        rm.score([], "a cat")


def test_prompt_longer_than_context_is_an_error(tiny_vlm):
    rm = RewardModel.from_pretrained(tiny_vlm("llava"), device="cpu")
    rm.max_length = 64  # the tiny config allows 4096; shrink the window rather than build a huge prompt
    with pytest.raises(PromptTooLongError, match="item 0.*longer than the model's context of 64"):
        rm.score(torch.rand(1, 3, 32, 32), "a cat " * 40)


def test_model_directory_without_safetensors(tiny_vlm, tmp_path):
    import shutil

    src = tiny_vlm("llava")
    dst = tmp_path / "nosafe"
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(ModelLoadError, match="no .safetensors weights"):
        RewardModel.from_pretrained(dst)
    with pytest.raises(ModelLoadError, match="no config.json"):
        RewardModel.from_pretrained(tmp_path)


def test_unknown_family_lists_supported(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(
        tmp_path
    )
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedModelError, match="'bert'.*supported: .*idefics3.*qwen2_vl"):
        RewardModel.from_pretrained(tmp_path)


def test_remote_code_needed_but_not_given(tmp_path):
    cfg = {"model_type": "my_secret_vlm", "auto_map": {"AutoConfig": "configuration_secret.SecretConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "configuration_secret.py").write_text("raise RuntimeError('must not run')\n")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="trust_remote_code=True"):
        RewardModel.from_pretrained(tmp_path)


def test_tokenizer_without_yes_token():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ")}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    with pytest.raises(AnswerTokenError, match="no single token that decodes to 'yes'"):
        answer_ids(fast)
    with pytest.raises(AnswerTokenError, match="single token"):
        answer_ids(fast, ("yes", "no"))
    with pytest.raises(AnswerTokenError, match="outside the vocabulary"):
        answer_ids(fast, (5, 999))
    assert answer_ids(fast, (["y"], "n")) == ([vocab["y"]], [vocab["n"]])


def test_answer_ids_cover_all_spellings(rm_cache):
    rm = rm_cache("qwen2_vl")
    decoded = {rm.tokenizer.decode([i]) for i in rm.yes_ids}
    assert {"yes", " yes", "Yes", " Yes"} <= decoded
    assert all(d.strip().lower() == "yes" for d in decoded)
    with pytest.raises(ValueError, match="vqascore' is pointwise only"):
        rm.compare(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), "x", context=RewardContext(task="vqascore"))
