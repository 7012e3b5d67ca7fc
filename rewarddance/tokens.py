"""Answer-token resolution: which vocabulary ids count as "yes" and which as "no".

Definition (README, "What P(yes) means"): the *yes ids* are every vocabulary token whose text, decoded by the
tokenizer on its own, stripped of surrounding whitespace and lowercased, is exactly ``yes`` (likewise ``no``).
This covers ``yes``, `` yes``, ``Yes``, ``YES`` and the SentencePiece ``▁Yes`` spellings at once. Users who must
reproduce another tool's numbers name the tokens explicitly instead.
"""

from __future__ import annotations

from collections.abc import Sequence


class AnswerTokenError(ValueError):
    """The tokenizer cannot express the requested answer as single tokens."""


def _vocab_size(tokenizer) -> int:
    return len(tokenizer)


def is_spelling(text: str, word: str) -> bool:
    """Whether a token's decoded ``text`` is a spelling of ``word`` by the definition above (stripped of
    surrounding whitespace and lowercased, it equals ``word``, itself lowercase). Also used on the token texts an
    OpenAI-compatible server sends back (:mod:`rewarddance.openai_judge`)."""
    return text.strip().lower() == word


def resolve_answer_ids(tokenizer, word: str) -> list[int]:
    """All ids whose decoded text, stripped and lowercased, equals ``word`` (lowercase). Sorted, non-empty.

    Raises :class:`AnswerTokenError` if no token qualifies (the model cannot answer ``word`` in one token).
    """
    word = word.strip().lower()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = tokenizer.get_vocab()  # token string -> id
    # The raw token text of a match always contains the word's letters in some case; filter cheaply first so that
    # only a handful of the ~150k entries are decoded.
    candidates = [i for tok, i in vocab.items() if word in tok.lower() and i not in special]
    ids = sorted({i for i in candidates if is_spelling(tokenizer.decode([i]), word)})
    if not ids:
        raise AnswerTokenError(
            f"tokenizer {type(tokenizer).__name__} has no single token that decodes to {word!r}; "
            "this model cannot be read as a yes/no judge. Name the answer tokens explicitly with "
            "answer_tokens=(yes, no), as strings or ids."
        )
    return ids


def _explicit_ids(tokenizer, spec, role: str) -> list[int]:
    items = [spec] if isinstance(spec, (str, int)) else list(spec)
    if not items:
        raise AnswerTokenError(f"answer_tokens: the {role} entry is empty")
    ids = []
    V = _vocab_size(tokenizer)
    for item in items:
        if isinstance(item, int):
            if not 0 <= item < V:
                raise AnswerTokenError(f"answer_tokens: {role} id {item} is outside the vocabulary [0, {V})")
            ids.append(item)
            continue
        enc = tokenizer.encode(item, add_special_tokens=False)
        if len(enc) != 1:
            raise AnswerTokenError(
                f"answer_tokens: {role} string {item!r} is {len(enc)} tokens ({enc}) for this tokenizer; "
                "each answer must be a single token"
            )
        ids.append(enc[0])
    return sorted(set(ids))


def answer_ids(tokenizer, answer_tokens: Sequence | None = None) -> tuple[list[int], list[int]]:
    """(yes_ids, no_ids) for ``tokenizer``.

    ``answer_tokens=None`` resolves by the definition above; otherwise ``(yes, no)`` where each is a string, an id,
    or a list of them (every string must be a single token). The two sets must not overlap.
    """
    if answer_tokens is None:
        yes, no = resolve_answer_ids(tokenizer, "yes"), resolve_answer_ids(tokenizer, "no")
    else:
        if isinstance(answer_tokens, (str, int)) or len(answer_tokens) != 2:
            raise AnswerTokenError(f"answer_tokens must be a pair (yes, no), got {answer_tokens!r}")
        yes = _explicit_ids(tokenizer, answer_tokens[0], "yes")
        no = _explicit_ids(tokenizer, answer_tokens[1], "no")
    overlap = set(yes) & set(no)
    if overlap:
        raise AnswerTokenError(f"answer_tokens: ids {sorted(overlap)} are in both the yes and the no set")
    return yes, no
