"""The family registry (rewarddance.families) and the test factories kept out of the product (rewarddance.testing)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from rewarddance import families, preprocess
from rewarddance.bpe import build_bpe_tokenizer
from rewarddance.families import FAMILIES, Family, family_named
from rewarddance.testing.tiny import FAMILIES as TINY_FAMILY_NAMES
from rewarddance.testing.tiny import TINY_FAMILIES


def test_product_imports_do_not_load_the_test_factories():
    code = (
        "import sys, rewarddance; import rewarddance.model, rewarddance.cli; "
        "print([m for m in sys.modules if m.startswith('rewarddance.testing')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_tiny_factory_covers_exactly_the_product_families():
    """Adding a ``Family`` without its tiny entry (or the reverse) must show up here, not in a distant test."""
    names = [f.name for f in FAMILIES]
    assert len(set(names)) == len(names)
    assert set(TINY_FAMILIES) == set(names)
    assert TINY_FAMILY_NAMES == tuple(names)
    assert preprocess.SUPPORTED_FAMILIES == tuple(names)


def test_image_inputs_uses_the_pipeline_of_the_family_record(monkeypatch):
    """One entry in FAMILIES is enough for image_inputs to accept a family: there is no second table to update."""
    calls = []

    def pipeline(images, settings):
        calls.append((len(images), settings.image_processor))
        return {"pixel_values": torch.stack(images)}

    extra = Family("toy", ("toy",), ("pixel_values",), {"pixel_values": torch.cat}, preprocess=pipeline)
    monkeypatch.setattr(families, "FAMILIES", FAMILIES + (extra,))
    marker = object()
    out = preprocess.image_inputs(marker, [torch.rand(3, 4, 5), torch.rand(3, 4, 5)], "toy")
    assert calls == [(2, marker)]
    assert out["pixel_values"].shape == (2, 3, 4, 5)


def test_unknown_family_name_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"unknown family 'blip2'; choose one of qwen2_vl, "):
        family_named("blip2")
    with pytest.raises(ValueError, match=r"unknown family 'blip2'"):
        preprocess.image_inputs(object(), [torch.rand(3, 4, 4)], "blip2")
    with pytest.raises(AttributeError, match="NO_SUCH_NAME"):
        preprocess.NO_SUCH_NAME  # noqa: B018


def test_bpe_tokenizer_wraps_texts_clip_style():
    tok = build_bpe_tokenizer(["a red circle above a blue square"] * 4, max_length=12, vocab_size=300)
    ids = tok("red circle", padding="max_length")["input_ids"]
    assert len(ids) == 12 and tok.model_max_length == 12
    assert ids[0] == tok.bos_token_id == tok.convert_tokens_to_ids("<|startoftext|>")
    assert tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    body = ids[1 : ids.index(tok.eos_token_id)]
    assert tok.decode(body).strip() == "red circle"
    assert ids[ids.index(tok.eos_token_id) :] == [tok.eos_token_id] * (12 - 1 - len(body))


def test_bpe_tokenizer_without_texts_is_an_error():
    with pytest.raises(ValueError, match="texts"):
        build_bpe_tokenizer([], max_length=8)
