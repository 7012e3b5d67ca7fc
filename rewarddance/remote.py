"""Judges over HTTP, with the local judge's ``score`` / ``compare`` / ``prefer`` API.

- ``RewardModel.from_server(url, api_key=...)`` builds a :class:`RemoteRewardModel`, a client of
  ``rewarddance serve``. Each call is cut into batches of ``batch_size`` items, sent concurrently (``concurrency``
  at a time); images travel as base64 PNG (:mod:`rewarddance.serving.wire`).
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
from .serving.wire import context_to_json, encode_image

API_KEY_ENV = "REWARDDANCE_API_KEY"  # the key a spec-loaded judge sends when none is given
SPEC_HELP = "http(s)://HOST:PORT (rewarddance serve) or openai:BASE_URL#MODEL (vLLM, SGLang, any OpenAI-style server)"


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
        self, images, prompts, context: RewardContext | None = None, batch_size: int | None = None, references=None
    ) -> RewardOutput:
        """As :meth:`rewarddance.model.RewardModel.score`, computed by the server."""
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
        self, images, references, prompts, context: RewardContext | None = None, batch_size: int | None = None
    ) -> RewardOutput:
        """As :meth:`rewarddance.model.RewardModel.compare`: image 1 = ``references[i]``, image 2 = ``images[i]``."""
        if references is None:
            raise ValueError("references: pairwise comparison needs a reference image per candidate")
        return self.score(images, prompts, context=context, batch_size=batch_size, references=references)

    def prefer(
        self, a, b, prompts, context: RewardContext | None = None, objective: str | None = None, batch_size=None
    ) -> Preference:
        """As :meth:`rewarddance.model.RewardModel.prefer`; ``objective`` defaults to the served judge's own."""
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

        parts = self._map(send, _chunks(n, batch_size or self.batch_size))

        def cat(key: str) -> torch.Tensor | None:
            if key not in parts[0]:
                return None
            return torch.tensor([v for p in parts for v in p[key]], dtype=torch.float32)

        return Preference(cat("p_b_better"), cat("margin"), parts[0]["objective"], cat("p_yes_a"), cat("p_yes_b"))


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
