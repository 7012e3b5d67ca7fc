"""Tiny random vision-language models of real architectures, built offline.

Tests, benchmarks and the bundled demo models need VLMs without the Hugging Face hub. This module builds one of
each family of :data:`rewarddance.families.FAMILIES` from a config (hidden ~64, 2 layers by default), with a
byte-level BPE tokenizer trained in-process with `tokenizers` and the family's real image processor, and saves it
with ``save_pretrained`` so that it loads back through ``RewardModel.from_pretrained(path)`` like any hub checkpoint.

What the builder needs per family is one :class:`TinyFamily` entry of :data:`TINY_FAMILIES`, keyed by the product
family's name: adding a family is one ``Family`` in ``rewarddance/families.py`` and one entry here (a test checks
that the two registries name the same families).

The chat templates below are written for these tiny models; they follow the turn layout of each family's
published template (role markers, where the image goes, the assistant prefix), which is what the reward model's
prompt rendering depends on.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..families import FAMILIES as _PRODUCT_FAMILIES

# Words the tokenizer learns whole, so that "yes"/"no" in their spellings are single tokens as in real vocabularies.
_ANSWER_WORDS = ["yes", "no", "Yes", "No", "YES", "NO"]
_CORPUS_WORDS = (
    "a an the image picture photo figure of with and or is are does this show shows image better than "
    "please answer question red green blue yellow purple orange white black circle square triangle left right "
    "above below one two three four cat dog on in at quality aesthetics plausible text rendering reason because "
    "prompt candidate reference first second criteria task evaluate judge whether matches describes scene "
    "object objects color colour shape count position user assistant system you helpful"
).split()

_CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' and default_system %}"
    "<|im_start|>system\n{{ default_system }}<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}IMAGE_SLOT"
    "{% elif part['type'] == 'video' %}VIDEO_SLOT"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _chatml(image_slot: str, default_system: str = "", video_slot: str = "") -> str:
    """A ChatML template; ``video_slot`` is what a ``{"type": "video"}`` part becomes (nothing when the family's
    processor takes no video)."""
    template = _CHATML.replace("IMAGE_SLOT", image_slot).replace("VIDEO_SLOT", video_slot)
    system = json.dumps(default_system)
    return "{% set default_system = " + system + " %}" + template


_IDEFICS3 = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

_LLAVA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}{{ message['role'] | upper }}: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class TinySizes:
    """The sizes a tiny model is built at (see :func:`build_tiny_vlm`)."""

    hidden: int
    vision_hidden: int
    image_size: int  # pixels: the processor's working resolution
    vision_layers: int
    patch_size: int | None  # vision patch in pixels, for families whose entry allows choosing it


@dataclass(frozen=True)
class TinyFamily:
    """How the tiny builder makes one family's tokenizer, config and processor."""

    specials: tuple[str, ...]  # special tokens; the first one ends texts and pads
    named: dict[str, str]  # special-token attributes the family's processor looks up, e.g. image_token
    chat_template: str
    # (tokenizer, text config dict, sizes) -> (config kwargs, processor). It completes the text config in place
    # (model_type, rotary settings) and keeps the model small: a few dozen image tokens per image.
    parts: Callable[..., tuple[dict, object]]
    patch_size: int | None = None  # default vision patch where the caller may choose another; None: fixed


def _qwen_parts(tokenizer, text: dict, s: TinySizes, family: str) -> tuple[dict, object]:
    import transformers as tf

    tid = tokenizer.convert_tokens_to_ids
    if family == "qwen3_vl":
        text["rope_scaling"] = {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True}
        text["head_dim"] = text["hidden_size"] // text["num_attention_heads"]
    else:
        text["rope_scaling"] = {"type": "mrope", "mrope_section": [2, 3, 3]}
    text["model_type"] = f"{family}_text"
    patch = 16 if family == "qwen3_vl" else 14
    vision = dict(depth=s.vision_layers, num_heads=2, patch_size=patch, spatial_merge_size=2, temporal_patch_size=2)
    if family == "qwen2_vl":
        vision.update(embed_dim=s.vision_hidden, hidden_size=s.hidden, mlp_ratio=2)
    elif family == "qwen2_5_vl":
        vision.update(
            hidden_size=s.vision_hidden,
            out_hidden_size=s.hidden,
            intermediate_size=s.vision_hidden * 2,
            window_size=112,
            fullatt_block_indexes=[1],
        )
    else:
        vision.update(
            hidden_size=s.vision_hidden,
            out_hidden_size=s.hidden,
            intermediate_size=s.vision_hidden * 2,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0],
        )
    kwargs = dict(
        text_config=text,
        vision_config=vision,
        image_token_id=tid("<|image_pad|>"),
        video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"),
        vision_end_token_id=tid("<|vision_end|>"),
    )
    unit = patch * 2  # one merged image token covers unit x unit pixels
    pixels = {"shortest_edge": unit * unit, "longest_edge": (s.image_size // unit * unit) ** 2}
    image_processor = tf.Qwen2VLImageProcessor(size=pixels, patch_size=patch, merge_size=2)
    if family == "qwen3_vl":
        video_processor = tf.Qwen3VLVideoProcessor(size=pixels, patch_size=patch, merge_size=2)
    else:
        video_processor = tf.Qwen2VLVideoProcessor(size=pixels, patch_size=patch, merge_size=2)
    cls = {"qwen2_vl": tf.Qwen2VLProcessor, "qwen2_5_vl": tf.Qwen2_5_VLProcessor, "qwen3_vl": tf.Qwen3VLProcessor}
    processor = cls[family](
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=tokenizer.chat_template,
    )
    return kwargs, processor


def _vision_common(s: TinySizes) -> dict:
    return dict(num_hidden_layers=s.vision_layers, num_attention_heads=2, intermediate_size=s.vision_hidden * 2)


def _internvl_parts(tokenizer, text: dict, s: TinySizes) -> tuple[dict, object]:
    import transformers as tf

    text["model_type"] = "qwen2"
    patch = 14
    side = s.image_size // (patch * 2) * patch * 2
    seq = (side // patch) ** 2 // 4  # pixel shuffle with downsample ratio 0.5
    vision = dict(hidden_size=s.vision_hidden, image_size=[side, side], patch_size=[patch, patch], **_vision_common(s))
    image_token = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    kwargs = dict(text_config=text, vision_config=vision, image_token_id=image_token, image_seq_length=seq)
    size = {"height": side, "width": side}
    image_processor = tf.GotOcr2ImageProcessor(size=size, crop_to_patches=False, max_patches=2)
    video_processor = tf.InternVLVideoProcessor(size=size)
    processor = tf.InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_length=seq,
        chat_template=tokenizer.chat_template,
    )
    return kwargs, processor


def _idefics_parts(tokenizer, text: dict, s: TinySizes, smolvlm: bool) -> tuple[dict, object]:
    import transformers as tf

    text["model_type"] = "llama"
    patch = 8
    tile = max(32, s.image_size // 2 // 16 * 16)  # a tile must split into patches that pixel-shuffle by 2
    seq = (tile // patch) ** 2 // 4  # scale_factor 2
    vision = dict(hidden_size=s.vision_hidden, image_size=tile, patch_size=patch, **_vision_common(s))
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    kwargs = dict(text_config=text, vision_config=vision, image_token_id=image_token, scale_factor=2)
    ip_kwargs = dict(size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile})
    chat = tokenizer.chat_template
    if not smolvlm:
        image_processor = tf.Idefics3ImageProcessor(**ip_kwargs)
        processor = tf.Idefics3Processor(
            image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq, chat_template=chat
        )
        return kwargs, processor
    processor = tf.SmolVLMProcessor(
        image_processor=tf.SmolVLMImageProcessor(**ip_kwargs),
        tokenizer=tokenizer,
        video_processor=tf.SmolVLMVideoProcessor(**ip_kwargs),
        image_seq_len=seq,
        chat_template=chat,
    )
    return kwargs, processor


def _llava_parts(tokenizer, text: dict, s: TinySizes) -> tuple[dict, object]:
    import transformers as tf

    text["model_type"] = "llama"
    patch = s.patch_size
    side = s.image_size // patch * patch
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=s.vision_hidden,
        image_size=side,
        patch_size=patch,
        projection_dim=s.vision_hidden,
        **_vision_common(s),
    )
    kwargs = dict(
        text_config=text,
        vision_config=vision,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(side // patch) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    image_processor = tf.CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    processor = tf.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    return kwargs, processor


def _llava_onevision_parts(tokenizer, text: dict, s: TinySizes) -> tuple[dict, object]:
    import transformers as tf

    text["model_type"] = "qwen2"
    tid = tokenizer.convert_tokens_to_ids
    patch = 14
    side = s.image_size // (2 * patch) * patch
    grid = [[side, side], [side, 2 * side], [2 * side, side], [2 * side, 2 * side]]
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=s.vision_hidden,
        image_size=side,
        patch_size=patch,
        **_vision_common(s),
    )
    kwargs = dict(
        text_config=text,
        vision_config=vision,
        image_token_index=tid("<image>"),
        video_token_index=tid("<video>"),
        image_grid_pinpoints=grid,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    size = {"height": side, "width": side}
    processor = tf.LlavaOnevisionProcessor(
        image_processor=tf.LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=grid),
        tokenizer=tokenizer,
        video_processor=tf.LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(side // patch) ** 2,
        vision_feature_select_strategy="full",
        chat_template=tokenizer.chat_template,
    )
    return kwargs, processor


def _qwen(family: str) -> TinyFamily:
    specials = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")
    system = "You are a helpful assistant." if family != "qwen3_vl" else ""
    return TinyFamily(
        specials=specials + ("<|image_pad|>", "<|video_pad|>"),
        named={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        chat_template=_chatml(
            "<|vision_start|><|image_pad|><|vision_end|>", system, "<|vision_start|><|video_pad|><|vision_end|>"
        ),
        parts=functools.partial(_qwen_parts, family=family),
    )


def _idefics(smolvlm: bool) -> TinyFamily:
    specials = ("<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>")
    specials += ("<global-img>",) + tuple(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))
    return TinyFamily(
        specials=specials,
        named={"image_token": "<image>", "end_of_utterance_token": "<end_of_utterance>"},
        chat_template=_IDEFICS3,
        parts=functools.partial(_idefics_parts, smolvlm=smolvlm),
    )


TINY_FAMILIES: dict[str, TinyFamily] = {
    "qwen2_vl": _qwen("qwen2_vl"),
    "qwen2_5_vl": _qwen("qwen2_5_vl"),
    "qwen3_vl": _qwen("qwen3_vl"),
    "internvl": TinyFamily(
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
        named={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        chat_template=_chatml("<IMG_CONTEXT>\n", ""),
        parts=_internvl_parts,
    ),
    "idefics3": _idefics(smolvlm=False),
    "smolvlm": _idefics(smolvlm=True),
    "llava": TinyFamily(
        specials=("<|endoftext|>", "<image>"),
        named={"image_token": "<image>"},
        chat_template=_LLAVA,
        parts=_llava_parts,
        patch_size=14,  # CLIP's
    ),
    "llava_onevision": TinyFamily(
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"),
        named={"image_token": "<image>", "video_token": "<video>"},
        chat_template=_chatml("<image>\n", "", "<video>\n"),
        parts=_llava_onevision_parts,
    ),
}
# The product's families, in its order; tests parametrise over these names.
FAMILIES: tuple[str, ...] = tuple(f.name for f in _PRODUCT_FAMILIES)


def _tiny_family(family: str) -> TinyFamily:
    entry = TINY_FAMILIES.get(family)
    if entry is None:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    return entry


def build_tokenizer(family: str, vocab_size: int = 1024, extra_text: list[str] | None = None):
    """A byte-level BPE ``PreTrainedTokenizerFast`` for ``family``, trained offline on a small fixed corpus.

    "yes", "no" and their capitalised forms, with and without a leading space, are single tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    entry = _tiny_family(family)
    specials = list(entry.specials)
    words = _CORPUS_WORDS + _ANSWER_WORDS
    corpus = [" ".join(words[i : i + 7]) for i in range(0, len(words), 3)]
    corpus += [f"{a} {b}" for a, b in itertools.product(_ANSWER_WORDS, words[:40])]
    corpus += list(extra_text or [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the answer words so BPE merges them whole before the budget runs out.
    tok.train_from_iterator(corpus + [" ".join(_ANSWER_WORDS * 4)] * 50, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=specials[0],
        pad_token=specials[0],
        unk_token=None,
        extra_special_tokens=dict(entry.named),
    )
    fast.chat_template = entry.chat_template
    return fast


def _text_config(vocab: int, hidden: int, layers: int, heads: int) -> dict:
    """The text model's config shared by all families; each family's ``parts`` completes it."""
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=0,
    )


def build_tiny_vlm(
    family: str,
    out_dir: str | Path,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    vision_hidden: int = 32,
    image_size: int = 56,
    vocab_size: int = 1024,
    seed: int = 0,
    init_std: float = 0.02,
    vision_layers: int = 2,
    patch_size: int | None = None,
) -> Path:
    """Build a random ``family`` VLM with its tokenizer and processor, save it to ``out_dir`` and return the path.

    ``image_size`` (pixels) sets the processor's working resolution; the defaults give a few dozen image tokens.
    ``patch_size`` (LLaVA only; default 14, CLIP's) sets the vision patch: smaller patches give more image tokens
    and let the vision tower see small shapes. ``init_std`` is the weights' initialisation scale: raise it (e.g.
    0.2) so that random outputs depend visibly on the image, as tests comparing code paths want.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    entry = _tiny_family(family)
    if patch_size is not None and entry.patch_size is None:
        choosable = [name for name, e in TINY_FAMILIES.items() if e.patch_size is not None]
        raise ValueError(f"patch_size is only supported for {', '.join(choosable)}, not {family!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(family, vocab_size=vocab_size)
    text = _text_config(len(tokenizer), hidden, layers, heads)
    sizes = TinySizes(hidden, vision_hidden, image_size, vision_layers, patch_size or entry.patch_size)
    config_kwargs, processor = entry.parts(tokenizer, text, sizes)
    config = AutoConfig.for_model(family, **config_kwargs)
    for sub in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None)):
        if sub is not None and hasattr(sub, "initializer_range"):
            sub.initializer_range = init_std
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


__all__ = ["FAMILIES", "TINY_FAMILIES", "TinyFamily", "build_tokenizer", "build_tiny_vlm"]


def main(argv: list[str] | None = None) -> int:
    """``python -m rewarddance.testing.tiny FAMILY OUT_DIR``: save a tiny random VLM (for trying the CLI offline)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rewarddance.testing.tiny", description=main.__doc__)
    parser.add_argument("family", choices=FAMILIES, help="architecture to build")
    parser.add_argument("out_dir", help="folder to save the model, tokenizer and processor in")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    path = build_tiny_vlm(args.family, args.out_dir, seed=args.seed, init_std=0.2)
    print(f"saved a tiny random {args.family} model to {path} (random weights: its scores mean nothing)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
