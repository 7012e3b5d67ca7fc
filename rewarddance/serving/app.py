"""``rewarddance serve``: a judge behind HTTP (FastAPI + uvicorn).

Endpoints (bodies are JSON; images are base64 PNG, JPEG or WebP, optionally as ``data:`` URLs; nothing is pickled):

- ``POST /v1/score``: ``images``, ``prompts`` (one or one per image), optional ``references`` (then pairwise:
  "is image 2 better than image 1?") and the :class:`~rewarddance.context.RewardContext` fields -> ``p_yes``,
  ``margin`` (log P(yes) - log P(no)), ``normalisation`` and, when decoding was asked, ``reasons``;
- ``POST /v1/compare``: pairs ``a`` (image 1) and ``b`` (image 2) -> P(b better than a) by the judge's objective
  (:meth:`~rewarddance.model.RewardModel.prefer`);
- both take ``videos`` instead of images (``/v1/score``: ``videos`` and reference videos in ``references``;
  ``/v1/compare``: ``videos: [a, b]``), each a list of frames or an object (:mod:`.wire`), with optional
  ``num_frames`` / ``fps`` sampling here; the answer of ``/v1/score`` adds each video's sampled ``indices``;
- ``POST /get_reward``: OpenRLHF's remote reward body ``{"query": [...], "prompts": [...], "labels": [...]}``
  (queries are the images, prompts their text prompts, labels ignored) -> ``{"rewards": [...], "scores": [...]}``;
- ``POST /v1/chat/completions``: the OpenAI shape, one answer token with ``logprobs`` / ``top_logprobs`` from the
  judge's next-token distribution, so a client written for vLLM asks this server the same question;
- ``GET /health`` (no key needed: load balancers poll it; 503 once the worker thread has died) and ``GET /v1/models``.

Handlers only check limits, decode and enqueue; one worker thread runs the model (:mod:`.batcher`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ..context import VIDEO_TASK_NAMES
from .batcher import Batcher, Job
from .wire import RequestError, context_from_json, decode_image, decode_video

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 32 * 1024 * 1024
MAX_IMAGES = 64  # per request, references and examples included
MAX_PIXELS = 4096 * 4096  # per image; far below the library's 100 Mpx file limit: a server decodes for others
MAX_FRAMES = 128  # per video; each frame is also held to MAX_PIXELS, the request to MAX_REQUEST_BYTES
# what a request holds beside the reward context
REQUEST_FIELDS = {"images", "videos", "prompts", "references", "a", "b", "objective", "num_frames", "fps"}
MAX_TOP_LOGPROBS = 20  # as OpenAI's API


class ContextBody(BaseModel):
    """The :class:`~rewarddance.context.RewardContext` fields a request may set; left out: the judge's own task and
    chain-of-thought mode (its ``rewarddance.json``), else the defaults."""

    model_config = ConfigDict(extra="forbid")
    task: str | None = None
    criteria: str | None = None
    question: str | None = None
    system: str | None = None
    cot: str | None = None
    decode_reasons: bool | None = None
    max_reason_tokens: int | None = None
    normalize: Literal["vocab", "yes_no"] | None = None
    average_orders: bool | None = None
    answer_tokens: list[list[str | int]] | None = None
    examples: list[dict[str, Any]] | None = None
    first_frame: str | list[str] | None = None  # image-to-video: one image, or one per video


class ScoreBody(ContextBody):
    images: list[str] | None = None
    videos: list[Any] | None = None  # each a list of frames or {"frames": [...], "frame_rate": ...} (see .wire)
    prompts: str | list[str] | None = None
    references: list[Any] | None = None  # images, or videos when videos are scored
    num_frames: int | None = None
    fps: float | None = None


class CompareBody(ContextBody):
    a: list[str] | None = None
    b: list[str] | None = None
    videos: list[list[Any]] | None = None  # [a, b]: two lists of videos
    prompts: str | list[str] | None = None
    objective: Literal["pairwise", "pointwise"] | None = None
    num_frames: int | None = None
    fps: float | None = None


class RewardBody(BaseModel):
    """OpenRLHF's remote reward request; other keys it may send are ignored."""

    model_config = ConfigDict(extra="ignore")
    query: list[str]
    prompts: str | list[str] | None = None
    labels: Any = None
    output: Literal["p_yes", "margin"] = "p_yes"


class ChatBody(BaseModel):
    """An OpenAI chat-completions request; sampling settings (temperature, top_p, seed ...) are accepted and
    ignored: the answer is the most likely token."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    n: int = 1
    stream: bool = False


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "authentication_error" if status == 401 else "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _where(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _prompts(prompts, n: int, label: str = "prompts", noun: str = "images") -> list[str]:
    if prompts is None or isinstance(prompts, str):
        return [prompts or ""] * n
    if len(prompts) != n:
        raise RequestError(f"{label}: got {len(prompts)} prompts for {n} {noun}")
    return list(prompts)


def create_app(
    rm,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    max_batch: int = 16,
    max_wait_ms: float = 10.0,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_images: int = MAX_IMAGES,
    max_pixels: int = MAX_PIXELS,
    max_frames: int = MAX_FRAMES,
) -> FastAPI:
    """A FastAPI app serving the judge ``rm`` (a :class:`~rewarddance.model.RewardModel`); run it with uvicorn.

    ``api_key``: when set, every endpoint but ``/health`` needs ``Authorization: Bearer <key>`` (401 otherwise).
    ``max_batch`` items or ``max_wait_ms`` after the first waiting request close a batch. Requests over
    ``max_request_bytes`` get 413; over ``max_images`` images or an image over ``max_pixels``, 422 naming it; so do
    videos (each counts as one image) over ``max_frames`` frames, and each of their frames over ``max_pixels``.
    """
    name = model_name or str(getattr(rm.model.config, "_name_or_path", "") or "rewarddance")
    batcher = Batcher(rm, max_batch=max_batch, max_wait_ms=max_wait_ms)
    info = rm.trained_for
    defaults = {"task": info.task, "cot": info.cot} if info is not None else {}
    # videos: the judge's own task if it judges videos, else the local API's default for videos
    video_task = info.task if info is not None and info.task in VIDEO_TASK_NAMES else "video_alignment"
    video_defaults = {**defaults, "task": video_task}
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="rewarddance serve", lifespan=lifespan)
    app.state.batcher = batcher

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Auth, then the byte limit: a declared length over it is refused before the body is read."""
        if api_key is not None and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
                return _error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_request_bytes:
            return _error(413, f"request body of {int(length):,} bytes exceeds the limit of {max_request_bytes:,}")
        return await call_next(request)

    async def read_body(request: Request, model: type[BaseModel]):
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > max_request_bytes:
                raise RequestError(f"request body exceeds the limit of {max_request_bytes:,} bytes", status=413)
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise RequestError(f"body: not valid JSON ({err})", status=400) from err
        if not isinstance(data, dict):
            raise RequestError("body: expected a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            raise RequestError(f"{_where(first['loc'])}: {first['msg']}") from err

    def count_images(n: int, what: str = "images") -> None:
        if n > max_images:
            raise RequestError(f"{what}: {n} {what} in one request exceed the limit of {max_images}")

    def decode_all(items: list[str], label: str, cache: dict) -> list:
        """Decode each image once per request (equal base64 text, one image object)."""
        out = []
        for k, data in enumerate(items):
            if not isinstance(data, str):  # e.g. a video where an image belongs
                raise RequestError(f"{label}[{k}]: expected a base64 image, got {type(data).__name__}")
            if data not in cache:
                cache[data] = decode_image(data, f"{label}[{k}]", max_pixels)
            out.append(cache[data])
        return out

    def decode_clips(items: list, label: str, body, cache: dict) -> list:
        """Each video of ``items`` -> a Clip, sampled by the request's ``num_frames`` / ``fps``; equal videos give
        one Clip (a shared reference runs once in the prompt's prefix)."""
        clips: dict[str, Any] = {}
        out = []
        for k, item in enumerate(items):
            key = json.dumps(item, sort_keys=True)
            if key not in clips:
                where = f"{label}[{k}]"
                clips[key] = decode_video(item, where, max_pixels, max_frames, body.num_frames, body.fps, cache)
            out.append(clips[key])
        return out

    def first_frames_of(body: ContextBody) -> int:
        return 0 if body.first_frame is None else 1 if isinstance(body.first_frame, str) else len(body.first_frame)

    def context_of(body: ContextBody, video: bool = False):
        fields = body.model_dump(exclude=REQUEST_FIELDS)
        ctx = context_from_json(fields, video_defaults if video else defaults, max_pixels)
        # requests with equal context fields share a call; few-shot examples carry images: theirs never merge
        key = (json.dumps(fields, sort_keys=True),) if not fields.get("examples") else (uuid.uuid4().hex,)
        return ctx, key

    async def submit(job: Job):
        return await asyncio.wrap_future(batcher.submit(job))

    def video_score_job(body: ScoreBody) -> Job:
        if body.images is not None:
            raise RequestError("images and videos: give one of them, not both")
        n = len(body.videos)
        if n == 0:
            raise RequestError("videos: the list is empty")
        refs = body.references
        count_images(n + len(refs or ()) + len(body.examples or ()) + first_frames_of(body), "videos")
        if refs is not None and len(refs) not in (1, n):
            raise RequestError(f"references: got {len(refs)} reference videos for {n} videos")
        prompts = _prompts(body.prompts, n, noun="videos")
        ctx, _ = context_of(body, video=True)
        cache: dict = {}
        clips = decode_clips(body.videos, "videos", body, cache)
        references = None if refs is None else decode_clips(refs, "references", body, cache)
        if references is not None and len(references) == 1:
            references = references * n
        payload = {"videos": clips, "prompts": prompts, "references": references, "context": ctx}
        return Job("video_score", (uuid.uuid4().hex,), n, payload)  # its own key: never merged

    def score_job(body: ScoreBody, label: str = "images") -> Job:
        if body.videos is not None:
            return video_score_job(body)
        if body.images is None:
            raise RequestError(f"{label}: Field required (or send videos)")
        if body.num_frames is not None or body.fps is not None:
            raise RequestError(f"{'num_frames' if body.num_frames is not None else 'fps'}: applies to videos only")
        n = len(body.images)
        if n == 0:
            raise RequestError(f"{label}: the list is empty")
        refs = body.references
        count_images(n + len(refs or ()) + len(body.examples or ()))
        if refs is not None and len(refs) not in (1, n):
            raise RequestError(f"references: got {len(refs)} references for {n} images")
        ctx, key = context_of(body)
        cache: dict = {}
        images = decode_all(body.images, label, cache)
        references, ref_keys = None, None
        if refs is not None:
            refs = refs * n if len(refs) == 1 else refs
            references = decode_all(refs, "references", cache)
            ref_keys = [hashlib.sha1(r.encode()).hexdigest() for r in refs]
        payload = {
            "images": images,
            "prompts": _prompts(body.prompts, n),
            "references": references,
            "reference_keys": ref_keys,
            "context": ctx,
        }
        return Job("score", (refs is not None, *key), n, payload)

    async def score(body: ScoreBody, label: str = "images") -> dict:
        job = await run_in_threadpool(score_job, body, label)
        result = await submit(job)
        out = {"p_yes": result["p_yes"], "margin": result["margin"]}
        out.update(normalisation=job.payload["context"].normalize, model=name)
        if result["reasons"] is not None:
            out["reasons"] = result["reasons"]
        if "videos" in result:
            out["videos"] = result["videos"]
        return out

    def video_compare_job(body: CompareBody) -> Job:
        if body.a is not None or body.b is not None:
            raise RequestError("a, b and videos: give the two lists as videos: [a, b], not both")
        if len(body.videos) != 2:
            raise RequestError(f"videos: expected [a, b], two lists of videos; got {len(body.videos)} lists")
        na, nb = (len(side) for side in body.videos)
        if not na or not nb:
            raise RequestError(f"videos[{0 if not na else 1}]: the list is empty")
        if na != nb and 1 not in (na, nb):
            raise RequestError(f"videos[0] has {na} videos and videos[1] {nb}: give equal lists or one on a side")
        count_images(na + nb + len(body.examples or ()) + first_frames_of(body), "videos")
        prompts = _prompts(body.prompts, max(na, nb), noun="pairs")
        ctx, _ = context_of(body, video=True)
        objective = body.objective or (info.objective if info is not None else "pairwise")
        cache: dict = {}
        a, b = (decode_clips(side, f"videos[{k}]", body, cache) for k, side in enumerate(body.videos))
        payload = {"a": a, "b": b, "prompts": prompts, "context": ctx, "objective": objective}
        return Job("video_prefer", (uuid.uuid4().hex,), na + nb, payload)

    def compare_job(body: CompareBody) -> Job:
        if body.videos is not None:
            return video_compare_job(body)
        if body.a is None or body.b is None:
            raise RequestError(f"{'a' if body.a is None else 'b'}: Field required (or send videos: [a, b])")
        if body.num_frames is not None or body.fps is not None:
            raise RequestError(f"{'num_frames' if body.num_frames is not None else 'fps'}: applies to videos only")
        na, nb = len(body.a), len(body.b)
        if not na or not nb:
            raise RequestError(f"{'a' if not na else 'b'}: the list is empty")
        if na != nb and 1 not in (na, nb):
            raise RequestError(f"a has {na} images and b {nb}: give equal lists or one image on a side")
        n = max(na, nb)
        count_images(na + nb + len(body.examples or ()))
        ctx, key = context_of(body)
        objective = body.objective or (info.objective if info is not None else "pairwise")
        cache: dict = {}
        a, b = decode_all(body.a, "a", cache), decode_all(body.b, "b", cache)
        payload = {
            "a": a * n if na == 1 else a,
            "b": b * n if nb == 1 else b,
            "prompts": _prompts(body.prompts, n),
            "context": ctx,
            "objective": objective,
        }
        return Job("prefer", (objective, *key), 2 * n, payload)

    def chat_job(body: ChatBody) -> Job:
        if body.model is not None and body.model != name:
            raise RequestError(f"model: this server serves {name!r}, not {body.model!r}", status=404)
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if limit is not None and limit != 1:
            raise RequestError(f"max_tokens: this server answers with exactly one token; got {limit}")
        if body.stream:
            raise RequestError("stream: streaming is not supported (the answer is one token)")
        if body.n != 1:
            raise RequestError(f"n: one choice only, got {body.n}")
        k = body.top_logprobs or 0
        if not 0 <= k <= MAX_TOP_LOGPROBS:
            raise RequestError(f"top_logprobs: must be between 0 and {MAX_TOP_LOGPROBS}, got {k}")
        messages, images, cache = [], [], {}
        for i, msg in enumerate(body.messages):
            content = msg.get("content")
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            if not isinstance(content, list) or "role" not in msg:
                raise RequestError(f"messages[{i}]: expected a role and a content string or list of parts")
            parts = []
            for j, part in enumerate(content):
                where = f"messages[{i}].content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    parts.append({"type": "text", "text": str(part.get("text", ""))})
                elif kind == "image_url":
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    if not isinstance(url, str) or not url.startswith("data:"):
                        raise RequestError(f"{where}: only data: URLs are accepted (this server fetches nothing)")
                    count_images(len(images) + 1)
                    if url not in cache:
                        cache[url] = decode_image(url, where, max_pixels)
                    images.append(cache[url])
                    parts.append({"type": "image"})
                else:
                    raise RequestError(f"{where}: unsupported content part type {kind!r} (use text or image_url)")
            messages.append({"role": msg["role"], "content": parts})
        if not messages:
            raise RequestError("messages: the list is empty")
        text = rm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return Job("chat", (bool(images),), 1, {"text": text, "images": images, "k": k})

    def token_entry(token_id: int, logprob: float) -> dict:
        text = rm.tokenizer.decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    async def chat(body: ChatBody) -> dict:
        job = await run_in_threadpool(chat_job, body)
        result = await submit(job)
        best = token_entry(result["ids"][0], result["logprobs"][0])
        logprobs = None
        if body.logprobs:
            top = [token_entry(i, lp) for i, lp in zip(result["ids"], result["logprobs"])][: job.payload["k"]]
            logprobs = {"content": [{**best, "top_logprobs": top}]}
        n_prompt = result["prompt_tokens"]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": best["token"]},
                    "logprobs": logprobs,
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": 1, "total_tokens": n_prompt + 1},
        }

    async def get_reward(body: RewardBody) -> dict:
        score_body = ScoreBody(images=body.query, prompts=body.prompts)
        result = await score(score_body, "query")
        rewards = result[body.output]
        return {"rewards": rewards, "scores": rewards}

    async def compare(body: CompareBody) -> dict:
        job = await run_in_threadpool(compare_job, body)
        result = await submit(job)
        return {
            **result,
            "objective": job.payload["objective"],
            "normalisation": job.payload["context"].normalize,
            "model": name,
        }

    async def client_left(request: Request) -> None:
        """Returns once the client has closed its connection (called after its body has been read)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass

    def route(path: str, model: type[BaseModel], handler):
        async def endpoint(request: Request):
            try:
                body = await read_body(request, model)
                work, gone = asyncio.ensure_future(handler(body)), asyncio.ensure_future(client_left(request))
                try:
                    await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    gone.cancel()
                    if not work.done():  # the client left: drop its request; the worker skips a job still queued
                        work.cancel()
                if not work.done() or work.cancelled():
                    return _error(499, "the client closed the connection")
                return work.result()
            except ClientDisconnect:  # the client left while sending its body
                return _error(499, "the client closed the connection")
            except RequestError as err:
                return _error(err.status, str(err))
            except ValueError as err:  # the model's own checks: prompt too long, unknown answer tokens ...
                return _error(422, str(err))
            except Exception as err:
                logger.exception("%s failed", path)
                return _error(500, f"internal error: {type(err).__name__}: {err}")

        app.post(path)(endpoint)

    route("/v1/score", ScoreBody, score)
    route("/v1/compare", CompareBody, compare)
    route("/get_reward", RewardBody, get_reward)
    route("/v1/chat/completions", ChatBody, chat)

    @app.get("/health")
    async def health():
        alive = batcher.alive  # a dead worker answers nothing: 503, so load balancers stop sending here
        body = {"status": "ok" if alive else "unavailable", "worker_alive": alive, "model": name}
        body.update(device=str(rm.device), waiting=batcher.waiting, **batcher.stats)
        stats = getattr(rm, "stats", None)  # a local judge counts items that read a shared prefix's cache
        if isinstance(stats, dict) and "prefix_cached_items" in stats:
            body["prefix_cached_items"] = stats["prefix_cached_items"]
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "rewarddance"}],
        }

    return app


def serve(rm, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **options) -> None:
    """Run :func:`create_app` under uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(rm, **options), host=host, port=port, log_level=log_level)
