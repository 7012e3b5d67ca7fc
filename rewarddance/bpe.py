"""Byte-level BPE tokenizers trained in-process, CLIP style, for models built from scratch.

The bundled ShapesWorld generator (``rewarddance.shapes.generator``) has no hub tokenizer: it learns one from its own
prompt words with this builder, and the tiny test pipelines of ``rewarddance.testing.tiny_diffusion`` do the same
from a small fixed corpus.
"""

from __future__ import annotations

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def build_bpe_tokenizer(texts: list[str], max_length: int, vocab_size: int = 300, add_prefix_space: bool = False):
    """A ``PreTrainedTokenizerFast`` whose byte-level BPE is trained on ``texts``.

    Every encoding starts with ``<|startoftext|>`` and ends with ``<|endoftext|>``, which also pads, as CLIP's
    tokenizer does; ``max_length`` (tokens) becomes ``model_max_length``. ``vocab_size`` caps the learned vocabulary
    (special tokens and the 256 byte symbols included). ``add_prefix_space`` makes a word at the start of a text
    encode like the same word after a space.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise ValueError("texts: need at least one training text for the tokenizer")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, tok.token_to_id(BOS)), (EOS, tok.token_to_id(EOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS, model_max_length=max_length
    )


__all__ = ["build_bpe_tokenizer"]
