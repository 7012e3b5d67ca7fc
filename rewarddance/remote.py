"""Judges over HTTP, with the local judge's ``score`` / ``compare`` / ``prefer`` API.

- ``RewardModel.from_server(url, api_key=...)`` builds a :class:`RemoteRewardModel`, a client of
  ``rewarddance serve``. Each call is cut into batches of ``batch_size`` items, sent concurrently (``concurrency``
  at a time); images travel as base64 PNG (:mod:`rewarddance.serving.wire`). Videos (``videos=``, the local forms)
  are decoded and sampled here, by the local decoder (:mod:`rewarddance.video`), so only the frames the judge sees
  travel, as lossless PNG with their indices in the source; the output records the same sampled frames as the local
  judge's.
- ``RewardModel.from_openai(base_url, model)`` builds a :class:`rewarddance.openai_judge.OpenAIJudge`, which reads
  P(yes) from any OpenAI-compatible chat server (vLLM, SGLang, ``rewarddance serve``).
- :func:`load_judge` turns a judge *spec* into one of them: ``http(s)://HOST:PORT`` is ``rewarddance serve``,
  ``openai:BASE_URL#MODEL`` an OpenAI-compatible server. The trainers, the command line (``--server``) and the
  ComfyUI loader take these specs wherever they take a model name.

Connection errors, 429 and 5xx answers are retried with exponential backoff; a 4xx answer is a
:class:`RemoteRequestError` (a ``ValueError``, as local bad input is) with the server's message. A remote judge
gives scores, not gradients: its ``reward`` raises :class:`NoGradientError`. Needs ``httpx``
(``pip install rewarddance[serve]``).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from .context import RewardContext
from .images import as_image_list
from .model import Preference, RewardOutput
from .preference import pair_up
from .serving.wire import context_to_json, encode_image, encode_video
from .video import as_video_list, first_frames, load_videos

API_KEY_ENV = "REWARDDANCE_API_KEY"  # the key a spec-loaded judge sends when none is given
SPEC_HELP = "http(s)://HOST:PORT (rewarddance serve) or openai:BASE_URL#MODEL (vLLM, SGLang, any OpenAI-style server)"
VIDEO_REQUEST_BYTES = 16 * 1024 * 1024  # frames per request: half the server's default body limit


class RemoteRequestError(ValueError):
    """The server refused a request (4xx); the message is the server's."""


class RemoteUnavailableError(ConnectionError):
    """No answer from the server after every retry."""


class NoGradientError(ValueError):
    """A remote judge was asked for something that needs gradients through the judge (ReFL, ``reward()``)."""


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _side(items: list, start: int, end: int) -> list:
    """A batch's slice of one side; a side of one image is sent once and broadcast by the server."""
    return items if len(items) == 1 else items[start:end]


def _video_spans(sizes: list[int], batch_size: int) -> list[tuple[int, int]]:
    """Batches of at most ``batch_size`` items whose encoded frames (``sizes[i]`` bytes) stay under
    :data:`VIDEO_REQUEST_BYTES`; an item over it goes alone."""
    spans, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= batch_size or total + size > VIDEO_REQUEST_BYTES):
            spans.append((start, i))
            start, total = i, 0
        total += size
    return spans + [(start, len(sizes))]


class _Encoded:
    """Each clip or image encoded once, by object (a shared reference or first frame is sent as one text)."""

    def __init__(self):
        self._done: dict[int, tuple] = {}

    def video(self, clip) -> dict:
        if id(clip) not in self._done:
            self._done[id(clip)] = (clip, encode_video(clip, clip.sample.name))  # the clip kept alive with its id
        return self._done[id(clip)][1]

    def image(self, img, label: str) -> str:
        if id(img) not in self._done:
            self._done[id(img)] = (img, encode_image(img, label))
        return self._done[id(img)][1]

    def size(self, clip) -> int:
        return sum(len(f) for f in self.video(clip)["frames"])


def is_remote(judge) -> bool:
    """Whether ``judge`` is a remote judge or a spec of one (``http://``, ``https://`` or ``openai:``)."""
    if isinstance(judge, str):
        return judge.strip().startswith(("http://", "https://", "openai:"))
    return isinstance(judge, HTTPJudge)


def load_judge(spec: str, api_key: str | None = None, **options):
    """A remote judge from a spec: ``http(s)://HOST:PORT`` -> :class:`RemoteRewardModel` (``rewarddance serve``);
    ``openai:BASE_URL#MODEL`` -> :class:`~rewarddance.openai_judge.OpenAIJudge`. ``api_key`` defaults to the
    ``REWARDDANCE_API_KEY`` environment variable; ``options`` go to the client."""
    spec = spec.strip()
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    if spec.startswith("openai:"):
        base, sep, model = spec.removeprefix("openai:").partition("#")
        if not sep or not model.strip() or not base.startswith(("http://", "https://")):
            raise ValueError(
                f"judge {spec!r}: expected openai:BASE_URL#MODEL, e.g. openai:http://127.0.0.1:8000/v1#Qwen/Qwen2-VL-7B"
            )
        from .openai_judge import OpenAIJudge

        return OpenAIJudge(base, model.strip(), api_key=api_key, **options)
    if spec.startswith(("http://", "https://")):
        return RemoteRewardModel(spec, api_key=api_key, **options)
    raise ValueError(f"judge {spec!r}: not a remote judge; give {SPEC_HELP}")


def refuse_remote(judge, what: str) -> None:
    """A :class:`NoGradientError` when ``judge`` (an object or a spec) is remote: ``what`` needs its gradients."""
    if is_remote(judge):
        name = judge if isinstance(judge, str) else getattr(judge, "url", type(judge).__name__)
        raise NoGradientError(
            f"{what}: the judge {name} is remote: it returns scores, not gradients; load the judge locally "
            "(RewardModel.from_pretrained), or use a method that needs scores only (GRPO, best-of-N, search)"
        )


class HTTPJudge:
    """What every remote judge shares: one ``httpx`` client, retries with backoff, concurrent calls."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        concurrency: int = 4,
        backoff: float = 0.5,
    ):
        try:
            import httpx
        except ImportError as err:
            raise ImportError("a remote judge needs httpx: pip install 'rewarddance[serve]'") from err
        if retries < 0 or concurrency < 1:
            raise ValueError("retries must be >= 0 and concurrency >= 1")
        self.url = url.rstrip("/")
        self.retries, self.concurrency, self.backoff = retries, concurrency, backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._httpx = httpx
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def reward(self, *args, **kwargs):
        """Refused: a remote judge has no gradients (see :class:`NoGradientError`)."""
        refuse_remote(self, "reward()")

    # ------------------------------------------------------------------------------------------------- transport
    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                resp = self._client.request(method, path, json=body)
            except self._httpx.TransportError as err:  # refused, reset, timed out: try again
                last = f"{type(err).__name__}: {err}"
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"HTTP {resp.status_code}: {_message(resp)}"
                continue
            if resp.status_code >= 400:
                raise RemoteRequestError(f"{self.url}{path}: HTTP {resp.status_code}: {_message(resp)}")
            return resp.json()
        raise RemoteUnavailableError(f"{self.url}{path}: no answer after {self.retries + 1} tries ({last})")

    def _map(self, fn, spans: list) -> list:
        if len(spans) == 1:
            return [fn(*spans[0])]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(spans))) as pool:
            return list(pool.map(lambda span: fn(*span), spans))


class RemoteRewardModel(HTTPJudge):
    """A client of ``rewarddance serve`` at ``url`` (e.g. ``http://127.0.0.1:8000``)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        batch_size: int = 16,
        concurrency: int = 4,
        backoff: float = 0.5,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        super().__init__(url, api_key, timeout, retries, concurrency, backoff)
        self.batch_size = batch_size

    def health(self) -> dict:
        """The server's ``/health``: model name, device and batching counters."""
        return self._request("GET", "/health")

    # ------------------------------------------------------------------------------------------------- scoring
    def score(
        self, images=None, prompts=None, context: RewardContext | None = None, batch_size: int | None = None,
        references=None, videos=None, num_frames: int | None = None, fps: float | None = None,
    ) -> RewardOutput:  # fmt: skip
        """As :meth:`rewarddance.model.RewardModel.score`, computed by the server; ``videos`` are sampled here (see
        the module docstring), and ``batch_size`` videos at most go in one request, fewer when their frames are
        large."""
        if videos is not None:
            return self._score_videos(images, videos, prompts, references, context, batch_size, num_frames, fps)
        cands = as_image_list(images, "images")
        if not cands:
            raise ValueError("images: the batch is empty")
        n = len(cands)
        prompts = [prompts] * n if isinstance(prompts, str) or prompts is None else list(prompts)
        if len(prompts) != n:
            raise ValueError(f"prompts: got {len(prompts)} prompts for {n} images")
        refs = as_image_list(references, "references") if references is not None else None
        if refs is not None and len(refs) not in (1, n):
            raise ValueError(f"references: got {len(refs)} references for {n} images")
        ctx = context_to_json(context or RewardContext())
        ref_cache: dict[int, str] = {}

        def send(start: int, end: int) -> dict:
            body = dict(ctx, prompts=prompts[start:end])
            body["images"] = [encode_image(x, f"images[{start + k}]") for k, x in enumerate(cands[start:end])]
            if refs is not None:
                body["references"] = [
                    ref_cache.setdefault(id(r), encode_image(r, "references")) for r in _side(refs, start, end)
                ]
            return self._request("POST", "/v1/score", body)

        parts = self._map(send, _chunks(n, batch_size or self.batch_size))
        reasons = [r for p in parts for r in p["reasons"]] if "reasons" in parts[0] else None
        return RewardOutput(
            p_yes=torch.tensor([v for p in parts for v in p["p_yes"]], dtype=torch.float32),
            margin=torch.tensor([v for p in parts for v in p["margin"]], dtype=torch.float32),
            reasons=reasons,
        )

    def compare(
        self, images=None, references=None, prompts=None, context: RewardContext | None = None,
        batch_size: int | None = None, videos=None, num_frames: int | None = None, fps: float | None = None,
    ) -> RewardOutput:  # fmt: skip
        """As :meth:`rewarddance.model.RewardModel.compare`: image 1 = ``references[i]``, image 2 = ``images[i]``."""
        if videos is not None:
            return self._score_videos(images, videos, prompts, references, context, batch_size, num_frames, fps, True)
        if references is None:
            raise ValueError("references: pairwise comparison needs a reference image per candidate")
        return self.score(images, prompts, context=context, batch_size=batch_size, references=references)

    def prefer(
        self, a=None, b=None, prompts=None, context: RewardContext | None = None, objective: str | None = None,
        batch_size=None, videos=None, num_frames: int | None = None, fps: float | None = None,
    ) -> Preference:  # fmt: skip
        """As :meth:`rewarddance.model.RewardModel.prefer`; ``objective`` defaults to the served judge's own."""
        if videos is not None:
            return self._prefer_videos(a, b, videos, prompts, context, objective, batch_size, num_frames, fps)
        a, b = pair_up(as_image_list(a, "a"), as_image_list(b, "b"))
        n = len(a)
        prompts = [prompts] * n if isinstance(prompts, str) or prompts is None else list(prompts)
        if len(prompts) != n:
            raise ValueError(f"prompts: got {len(prompts)} prompts for {n} pairs")
        ctx = context_to_json(context or RewardContext())
        if objective is not None:
            ctx["objective"] = objective

        def send(start: int, end: int) -> dict:
            body = dict(ctx, prompts=prompts[start:end])
            body["a"] = [encode_image(x, "a") for x in _side(a, start, end)]
            body["b"] = [encode_image(x, "b") for x in _side(b, start, end)]
            return self._request("POST", "/v1/compare", body)

        return _preference(self._map(send, _chunks(n, batch_size or self.batch_size)))

    # ------------------------------------------------------------------------------------------------- videos
    def _score_videos(self, images, videos, prompts, references, context, batch_size, num_frames, fps, pairwise=False):
        if images is not None:
            raise ValueError("images and videos: give one of them, not both")
        context = context or RewardContext(task="video_alignment")  # the local judge's default for videos
        pairwise = pairwise or references is not None
        if pairwise and references is None:
            raise ValueError("references: pairwise comparison of videos needs a reference video per candidate")
        cands = load_videos(as_video_list(videos, "videos"), "videos", num_frames, fps)
        if not cands:
            raise ValueError("videos: the batch is empty")
        n = len(cands)
        refs = load_videos(as_video_list(references, "references"), "references", num_frames, fps) if pairwise else None
        if refs is not None and len(refs) not in (1, n):
            raise ValueError(f"references: got {len(refs)} references for {n} videos")
        prompts = [prompts] * n if isinstance(prompts, str) or prompts is None else list(prompts)
        if len(prompts) != n:
            raise ValueError(f"prompts: got {len(prompts)} prompts for {n} videos")
        firsts = first_frames(context, n)
        ctx, enc = context_to_json(context), _Encoded()
        sizes = [
            enc.size(c) + (enc.size(refs[i]) if refs is not None and len(refs) > 1 else 0) for i, c in enumerate(cands)
        ]

        def send(start: int, end: int) -> dict:
            body = dict(ctx, prompts=prompts[start:end], videos=[enc.video(c) for c in cands[start:end]])
            if refs is not None:
                body["references"] = [enc.video(r) for r in _side(refs, start, end)]
            _add_first_frames(body, firsts, start, end, enc)
            return self._request("POST", "/v1/score", body)

        parts = self._map(send, _video_spans(sizes, batch_size or self.batch_size))
        return RewardOutput(
            p_yes=torch.tensor([v for p in parts for v in p["p_yes"]], dtype=torch.float32),
            margin=torch.tensor([v for p in parts for v in p["margin"]], dtype=torch.float32),
            videos=[c.sample for c in cands],
        )

    def _prefer_videos(self, a, b, videos, prompts, context, objective, batch_size, num_frames, fps) -> Preference:
        if a is not None or b is not None:
            raise ValueError("a, b and videos: give the two batches as videos=(a, b), not both")
        if not isinstance(videos, (tuple, list)) or len(videos) != 2:
            raise ValueError("videos: prefer() takes a pair of video batches, videos=(a, b)")
        context = context or RewardContext(task="video_alignment")
        sides = [
            load_videos(as_video_list(v, f"videos[{k}]"), f"videos[{k}]", num_frames, fps) for k, v in enumerate(videos)
        ]
        n = len(pair_up(*sides, ("videos[0]", "videos[1]"), "videos")[0])
        prompts = [prompts] * n if isinstance(prompts, str) or prompts is None else list(prompts)
        if len(prompts) != n:
            raise ValueError(f"prompts: got {len(prompts)} prompts for {n} pairs")
        firsts = first_frames(context, n)
        ctx, enc = context_to_json(context), _Encoded()
        if objective is not None:
            ctx["objective"] = objective
        sizes = [sum(enc.size(s[i]) for s in sides if len(s) > 1) for i in range(n)]

        def send(start: int, end: int) -> dict:
            body = dict(ctx, prompts=prompts[start:end])
            body["videos"] = [[enc.video(c) for c in _side(s, start, end)] for s in sides]
            _add_first_frames(body, firsts, start, end, enc)
            return self._request("POST", "/v1/compare", body)

        return _preference(self._map(send, _video_spans(sizes, batch_size or self.batch_size)))


def _preference(parts: list[dict]) -> Preference:
    """The answers of ``/v1/compare`` to a call's batches, joined."""

    def cat(key: str) -> torch.Tensor | None:
        if key not in parts[0]:
            return None
        return torch.tensor([v for p in parts for v in p[key]], dtype=torch.float32)

    return Preference(cat("p_b_better"), cat("margin"), parts[0]["objective"], cat("p_yes_a"), cat("p_yes_b"))


def _add_first_frames(body: dict, firsts: list | None, start: int, end: int, enc: _Encoded) -> None:
    """Image-to-video: the first frames of a batch's videos, one text when they are one image."""
    if firsts is not None:
        sent = [enc.image(f, "first_frame") for f in firsts[start:end]]
        body["first_frame"] = sent[0] if all(x is sent[0] for x in sent) else sent


def _message(resp) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if not isinstance(body, dict):
        return str(body)[:300]
    err = body.get("error")  # OpenAI's shape; vLLM's own errors carry "message" at the top level
    if isinstance(err, dict):
        return str(err.get("message", err))
    return str(body.get("message") or err or body)[:300]
