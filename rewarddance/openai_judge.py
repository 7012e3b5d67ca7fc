"""A judge served by any OpenAI-compatible chat server (vLLM, SGLang, ``rewarddance serve``), read from the
log-probabilities of its first answer token: ``RewardModel.from_openai(base_url, model)``.

Each item is one ``POST {base_url}/chat/completions`` with ``max_tokens=1``, ``logprobs=true`` and
``top_logprobs=k`` (20 by default, the most OpenAI's API allows). The messages are the local judge's own
(:meth:`rewarddance.context.RewardContext.messages`: task instruction, criteria, few-shot examples, the question),
each image part an ``image_url`` holding a ``data:image/png;base64,...`` URL, so a served copy of a judge is asked
exactly what the local one is asked. Videos (``videos=``) are decoded and sampled here (:mod:`rewarddance.video`) and
sent as their frames, one ``image_url`` part each, in the one message: what the local judge sees for a family without
video input (LLaVA, InternVL, Idefics3); a Qwen-VL judge reads its frames as images here, not as one video.

Reading the answer. Of the ``k`` tokens the server lists, those whose text is a spelling of "yes" (by
:func:`rewarddance.tokens.is_spelling`: ``yes``, `` Yes``, ``YES`` ...) are summed into ``P_yes``, the "no"
spellings into ``P_no`` (explicit string ``answer_tokens`` in the context match those exact token texts instead).
Then, as the local judge under the same ``context.normalize``:

- ``"vocab"`` (the default): ``p_yes = P_yes``; ``"yes_no"``: ``p_yes = P_yes / (P_yes + P_no)``;
- ``margin = log P_yes - log P_no``.

The approximation: spellings outside the top ``k`` are missing from the sums. When every spelling is listed (a
judge that answers yes or no, with ``k`` at least the number of spellings; 20 covers the usual 4 to 8), the numbers
equal the local judge's up to the server's arithmetic. When one side has no spelling in the list at all, its
probability is taken as that of the last listed token (the most any unlisted token can have), so the margin stays
finite and errs toward 0. When neither side appears, the model is not answering yes or no: a
:class:`AnswerNotFoundError` names the image and prompt.
"""

from __future__ import annotations

import math
from urllib.parse import urlsplit

import torch

from .context import RewardContext
from .judge_info import OBJECTIVES, TrainedFor
from .model import RewardModel, RewardOutput
from .remote import HTTPJudge, RemoteRequestError
from .serving.wire import encode_image
from .tokens import is_spelling
from .video import load_batch
from .video import messages as video_messages

MAX_TOP_LOGPROBS = 20  # OpenAI's limit, and vLLM's default --max-logprobs


class AnswerNotFoundError(ValueError):
    """Neither a yes nor a no spelling is among the server's top tokens for an item."""


def _matcher(spec, word: str):
    """A test of a token text: the spellings of ``word``, or the exact strings of an explicit ``answer_tokens``
    entry (ids cannot be matched without the served model's tokenizer)."""
    if spec is None:
        return lambda text: is_spelling(text, word)
    items = [spec] if isinstance(spec, (str, int)) else list(spec)
    if any(not isinstance(t, str) for t in items):
        raise ValueError(
            f"context.answer_tokens: the {word} entry {spec!r} holds token ids; a remote judge matches token texts, "
            "so give strings"
        )
    exact = set(items)
    return lambda text: text in exact


def read_answer(top: list[tuple[str, float]], context: RewardContext, label: str) -> tuple[float, float]:
    """``(p_yes, margin)`` from one answer's ``top`` list of (token text, logprob), as the module docstring says;
    ``label`` names the item in the error raised when neither answer is listed."""
    yes_of, no_of = (_matcher(spec, w) for spec, w in zip(context.answer_tokens or (None, None), ("yes", "no")))
    p_yes = sum(math.exp(lp) for text, lp in top if yes_of(text))
    p_no = sum(math.exp(lp) for text, lp in top if no_of(text))
    if p_yes == 0.0 and p_no == 0.0:
        listed = ", ".join(repr(text) for text, _ in top[:8]) or "none"
        raise AnswerNotFoundError(
            f"{label}: neither a yes nor a no answer is among the server's top {len(top)} tokens (top: {listed}); "
            "the model is not answering yes or no to this question"
        )
    floor = math.exp(min(lp for _, lp in top))  # the most an unlisted token can have
    p_yes, p_no = p_yes or floor, p_no or floor
    margin = math.log(p_yes) - math.log(p_no)
    return (p_yes if context.normalize == "vocab" else p_yes / (p_yes + p_no)), margin


def _data_url(image, label: str) -> str:
    return "data:image/png;base64," + encode_image(image, label)


def _with_urls(msgs: list[dict], image_urls: list[str]) -> list[dict]:
    """``msgs`` with each ``{"type": "image"}`` part replaced by the next data URL, in order."""
    urls = iter(image_urls)
    for m in msgs:
        m["content"] = [
            {"type": "image_url", "image_url": {"url": next(urls)}} if p["type"] == "image" else p for p in m["content"]
        ]
    return msgs


class OpenAIJudge(HTTPJudge):
    """A yes/no judge served by an OpenAI-compatible server; the API of :class:`rewarddance.model.RewardModel`
    (``score`` / ``compare`` / ``prefer``, returning :class:`~rewarddance.model.RewardOutput`), no gradients.

    ``base_url`` is the API root as the ``openai`` client takes it (``http://host:8000/v1``; a URL without a path
    gets ``/v1``), ``model`` the served model's name. Items are sent ``concurrency`` at a time, each retried with
    backoff (``retries``, ``backoff``); ``top_logprobs`` is ``k`` above. ``objective`` is how :meth:`prefer` asks
    by default: ``"pairwise"`` unless the served judge was trained pointwise. ``extra_body`` is merged into every
    request (e.g. ``{"chat_template_kwargs": {...}}`` for vLLM).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        concurrency: int = 8,
        backoff: float = 0.5,
        top_logprobs: int = MAX_TOP_LOGPROBS,
        objective: str | None = None,
        extra_body: dict | None = None,
    ):
        if not 1 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be between 1 and {MAX_TOP_LOGPROBS}, got {top_logprobs}")
        if objective is not None and objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        base_url = base_url.rstrip("/")
        if urlsplit(base_url).path in ("", "/"):
            base_url += "/v1"
        super().__init__(base_url, api_key, timeout, retries, concurrency, backoff)
        self.model_name, self.top_logprobs, self.extra_body = model, top_logprobs, dict(extra_body or {})
        self.trained_for = TrainedFor(objective=objective) if objective else None  # read by prefer()

    # ------------------------------------------------------------------------------------------------- one item
    def ask(self, messages: list[dict]) -> list[tuple[str, float]]:
        """One chat completion of one token: the server's top (token text, logprob) list for the answer."""
        body = {
            "model": self.model_name,
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
            **self.extra_body,
        }
        out = self._request("POST", "/chat/completions", body)
        try:
            first = out["choices"][0]["logprobs"]["content"][0]
            return [(str(t["token"]), float(t["logprob"])) for t in first["top_logprobs"]] or [
                (str(first["token"]), float(first["logprob"]))
            ]
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise RemoteRequestError(
                f"{self.url}/chat/completions: the answer carries no top_logprobs ({type(err).__name__}: {err}); "
                "the server must support logprobs"
            ) from err

    def messages(self, prompt: str, context: RewardContext, image_urls: list[str], pairwise: bool) -> list[dict]:
        """The local judge's messages for one item with its images, in order, as data URLs."""
        return _with_urls(context.messages(prompt, pairwise), image_urls)

    # ------------------------------------------------------------------------------------------------- videos
    def _score_videos(self, images, videos, prompts, references, context, num_frames, fps, pairwise) -> RewardOutput:
        """Videos as frames (see the module docstring); ``context.average_orders`` as the local judge does."""
        if images is not None:
            raise ValueError("images and videos: give one of them, not both")
        context = context or RewardContext(task="video_alignment")  # the local judge's default for videos
        pairwise = pairwise or references is not None
        prompts, cands, refs, firsts = load_batch(
            self._items, videos, prompts, references, context, pairwise, num_frames, fps
        )
        urls: dict[int, tuple] = {}  # by clip or image: each encoded once, before the concurrent requests
        for clip in cands + (refs or []):
            if id(clip) not in urls:
                frames = clip.frames.detach().cpu()
                urls[id(clip)] = (clip, [_data_url(f, f"{clip.sample.name} frame {k}") for k, f in enumerate(frames)])
        for img in firsts or []:
            urls.setdefault(id(img), (img, [_data_url(img, "first_frame")]))
        examples = [_data_url(x, f"examples[{k}]") for k, x in enumerate(context.example_images(pairwise))]

        def ask_all(cands, refs) -> tuple[torch.Tensor, torch.Tensor]:
            def one(i: int) -> tuple[float, float]:
                shown = ([refs[i]] if pairwise else []) + [cands[i]]
                parts = examples + (urls[id(firsts[i])][1] if firsts else [])
                parts += [u for c in shown for u in urls[id(c)][1]]
                msgs = video_messages(context, prompts[i], pairwise, [c.frames.shape[0] for c in shown])
                top = self.ask(_with_urls(msgs, parts))
                return read_answer(top, context, f"{cands[i].sample.name} (prompt {prompts[i]!r})")

            got = self._map(one, [(i,) for i in range(len(cands))])
            return torch.tensor([p for p, _ in got]), torch.tensor([m for _, m in got])

        p, m = ask_all(cands, refs)
        if pairwise and context.average_orders:
            p_swapped, m_swapped = ask_all(refs, cands)
            p, m = (p + 1.0 - p_swapped) / 2, (m - m_swapped) / 2
        return RewardOutput(p_yes=p.float(), margin=m.float(), videos=[c.sample for c in cands])

    # ------------------------------------------------------------------------------------------------- scoring
    def _score_items(self, cands, prompts, refs, context: RewardContext) -> RewardOutput:
        pairwise = refs is not None
        examples = [_data_url(x, f"examples[{k}]") for k, x in enumerate(context.example_images(pairwise))]
        ref_urls: dict[int, str] = {}

        def one(i: int) -> tuple[float, float]:
            urls = list(examples)
            if pairwise:
                urls.append(ref_urls.setdefault(id(refs[i]), _data_url(refs[i], f"references[{i}]")))
            urls.append(_data_url(cands[i], f"images[{i}]"))
            top = self.ask(self.messages(prompts[i], context, urls, pairwise))
            return read_answer(top, context, f"images[{i}] (prompt {prompts[i]!r})")

        got = self._map(one, [(i,) for i in range(len(cands))])
        return RewardOutput(
            p_yes=torch.tensor([p for p, _ in got], dtype=torch.float32),
            margin=torch.tensor([m for _, m in got], dtype=torch.float32),
        )

    def _items(self, images, prompts, references, context: RewardContext):
        if context.wants_reasons:
            raise ValueError(
                f"context: cot={context.cot!r} with decode_reasons={context.decode_reasons} needs decoding; a judge "
                "read from one token's logprobs takes cot='none' or 'judgment_first' without decode_reasons"
            )
        return RewardModel._items(self, images, prompts, references, context, references is not None)

    def score(
        self, images=None, prompts=None, context: RewardContext | None = None, batch_size: int | None = None,
        references=None, videos=None, num_frames: int | None = None, fps: float | None = None,
    ) -> RewardOutput:  # fmt: skip
        """As :meth:`rewarddance.model.RewardModel.score` (``batch_size`` is accepted and unused: one request per
        item, ``concurrency`` at a time); ``videos``: see the module docstring."""
        if videos is not None:
            return self._score_videos(images, videos, prompts, references, context, num_frames, fps, False)
        context = context or RewardContext()
        if references is not None:
            return self.compare(images, references, prompts, context=context)
        cands, prompts, _ = self._items(images, prompts, None, context)
        return self._score_items(cands, prompts, None, context)

    def compare(
        self, images=None, references=None, prompts=None, context: RewardContext | None = None,
        batch_size: int | None = None, videos=None, num_frames: int | None = None, fps: float | None = None,
    ) -> RewardOutput:  # fmt: skip
        """As :meth:`rewarddance.model.RewardModel.compare`: image 1 = ``references[i]``, image 2 = ``images[i]``;
        ``context.average_orders`` also asks the swapped question and averages the same way."""
        if videos is not None:
            return self._score_videos(images, videos, prompts, references, context, num_frames, fps, True)
        context = context or RewardContext()
        cands, prompts, refs = self._items(images, prompts, references, context)
        out = self._score_items(cands, prompts, refs, context)
        if context.average_orders:
            swapped = self._score_items(refs, prompts, cands, context)
            out = RewardOutput(p_yes=(out.p_yes + 1.0 - swapped.p_yes) / 2, margin=(out.margin - swapped.margin) / 2)
        return out

    prefer = RewardModel.prefer  # the same pairing and Bradley-Terry logic over this class's score / compare
    # (videos included: rewarddance.video.prefer_videos asks through score / compare)
