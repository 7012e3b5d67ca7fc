"""Dynamic micro-batching for ``rewarddance serve``: one worker thread owns the model.

Request handlers validate and decode their input, then :meth:`Batcher.submit` a :class:`Job` and await its future.
The worker takes the first waiting job, gathers more until ``max_batch`` items are queued or ``max_wait_ms`` has
passed since the first one arrived, and runs jobs that can share a call (same kind, same reward context) as one
call of the model (requests with videos run alone); results are split back per job. While a batch runs, new
requests queue, so a busy server runs full batches. A call that fails is retried job by job, so one bad request
fails alone. Nothing here knows HTTP.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

_STOP = object()


@dataclass
class Job:
    """One request's work: ``kind`` names its runner, jobs with equal ``key`` may be merged into one call,
    ``items`` counts towards ``max_batch``, ``payload`` is what the runner reads."""

    kind: str
    key: tuple
    items: int
    payload: dict
    future: Future = field(default_factory=Future)


def run_score(rm, payloads: list[dict]) -> list[dict]:
    """Pointwise (or, with references, pairwise) scores of several requests in one ``rm.score`` call. Requests that
    send the same reference image (by its base64 text) share one decoded image, so the prefix engine can share it."""
    images, prompts, refs, seen = [], [], [], {}
    for p in payloads:
        images += p["images"]
        prompts += p["prompts"]
        if p["references"] is not None:
            refs += [seen.setdefault(k, img) for k, img in zip(p["reference_keys"], p["references"])]
    out = rm.score(images, prompts, context=payloads[0]["context"], references=refs or None)
    results, start = [], 0
    for p in payloads:
        end = start + len(p["images"])
        results.append(
            {
                "p_yes": out.p_yes[start:end].tolist(),
                "margin": out.margin[start:end].tolist(),
                "reasons": None if out.reasons is None else out.reasons[start:end],
            }
        )
        start = end
    return results


def run_prefer(rm, payloads: list[dict]) -> list[dict]:
    """Which image of each pair ``(a, b)`` wins, for several requests in one ``rm.prefer`` call."""
    a = [x for p in payloads for x in p["a"]]
    b = [x for p in payloads for x in p["b"]]
    prompts = [x for p in payloads for x in p["prompts"]]
    out = rm.prefer(a, b, prompts, context=payloads[0]["context"], objective=payloads[0]["objective"])
    results, start = [], 0
    for p in payloads:
        end = start + len(p["a"])
        row = {"p_b_better": out.p_b_better[start:end].tolist(), "margin": out.margin[start:end].tolist()}
        if out.p_yes_a is not None:
            row.update(p_yes_a=out.p_yes_a[start:end].tolist(), p_yes_b=out.p_yes_b[start:end].tolist())
        results.append(row)
        start = end
    return results


def run_video_score(rm, payloads: list[dict]) -> list[dict]:
    """Scores of videos (pairwise with reference videos), one request per ``rm.score(videos=...)`` call: requests
    with videos are never merged (their key is their own), so ``payloads`` holds one."""
    from .wire import sample_to_json

    results = []
    for p in payloads:
        out = rm.score(videos=p["videos"], prompts=p["prompts"], references=p["references"], context=p["context"])
        row = {"p_yes": out.p_yes.tolist(), "margin": out.margin.tolist(), "reasons": None}
        results.append(dict(row, videos=[sample_to_json(s) for s in out.videos]))
    return results


def run_video_prefer(rm, payloads: list[dict]) -> list[dict]:
    """Which video of each pair wins, one request per ``rm.prefer(videos=(a, b))`` call (see
    :func:`run_video_score`)."""
    results = []
    for p in payloads:
        out = rm.prefer(videos=(p["a"], p["b"]), prompts=p["prompts"], context=p["context"], objective=p["objective"])
        row = {"p_b_better": out.p_b_better.tolist(), "margin": out.margin.tolist()}
        if out.p_yes_a is not None:
            row.update(p_yes_a=out.p_yes_a.tolist(), p_yes_b=out.p_yes_b.tolist())
        results.append(row)
    return results


def next_token_logprobs(rm, texts: list[str], image_lists: list[list] | None, k: int):
    """The ``k`` most likely next tokens after each chat text and their log-probabilities over the whole
    vocabulary: ``(logprobs [N, k], ids [N, k], prompt_tokens [N])``, float32 / int64 on the CPU. One forward pass
    of the backbone; the head is applied to the last position only."""
    with torch.no_grad():
        inputs = rm.encode(texts, image_lists)
        hidden = rm.hidden_states(inputs)[:, -1].float()  # [N, H]; left padded, so the last position is the answer
        weight, bias = rm.head()
        logits = hidden @ weight.float().T  # [N, V]: N is a batch of requests, V the vocabulary
        if bias is not None:
            logits = logits + bias.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        top = torch.topk(logprobs, k=min(k, logprobs.shape[-1]), dim=-1)
    return top.values.cpu(), top.indices.cpu(), inputs["attention_mask"].sum(dim=1).cpu()


def run_chat(rm, payloads: list[dict]) -> list[dict]:
    """One-token chat completions of several requests in one forward pass (see :func:`next_token_logprobs`)."""
    k = max(p["k"] for p in payloads)
    lists = [p["images"] for p in payloads]
    values, ids, lengths = next_token_logprobs(rm, [p["text"] for p in payloads], lists if lists[0] else None, k)
    return [
        {
            "logprobs": values[i, : max(p["k"], 1)].tolist(),
            "ids": ids[i, : max(p["k"], 1)].tolist(),
            "prompt_tokens": int(lengths[i]),
        }
        for i, p in enumerate(payloads)
    ]


RUNNERS: dict[str, Callable] = {
    "score": run_score,
    "prefer": run_prefer,
    "chat": run_chat,
    "video_score": run_video_score,
    "video_prefer": run_video_prefer,
}


class Batcher:
    """The queue and the one worker thread that runs the model. ``stats`` counts requests, items, batches (one
    per gathering round) and model calls; ``/health`` shows them."""

    def __init__(self, rm, max_batch: int = 16, max_wait_ms: float = 10.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.rm = rm
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.stats = {"requests": 0, "items": 0, "batches": 0, "model_calls": 0, "failed_requests": 0}
        self._queue: queue.Queue = queue.Queue()
        self._held: Job | None = None  # a job that would have overfilled the last batch: it opens the next one
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rewarddance-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running: a server whose worker died answers nothing."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Job) -> Future:
        if self._thread is None:
            raise RuntimeError("the batcher is not running; call start() first")
        self._queue.put(job)
        return job.future

    def _gather(self) -> tuple[list[Job], bool]:
        """The next batch of jobs, and whether a stop was asked for while gathering."""
        first = self._held if self._held is not None else self._queue.get()
        self._held = None
        if first is _STOP:
            return [], True
        jobs, n = [first], first.items
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is _STOP:
                return jobs, True
            if n + nxt.items > self.max_batch:
                self._held = nxt
                break
            jobs.append(nxt)
            n += nxt.items
        return jobs, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            jobs, stop = self._gather()
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # skip those whose client left
            if jobs:
                self.stats["batches"] += 1
                self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            groups.setdefault((job.kind, *job.key), []).append(job)
        for group in groups.values():
            try:
                self._call(group)
            except Exception as err:
                if len(group) == 1:
                    self._finish(group[0], error=err)
                    continue
                for job in group:  # find the request that failed the merged call; the others still get answers
                    try:
                        self._call([job])
                    except Exception as one:
                        self._finish(job, error=one)

    def _call(self, group: list[Job]) -> None:
        self.stats["model_calls"] += 1
        results = RUNNERS[group[0].kind](self.rm, [job.payload for job in group])
        for job, result in zip(group, results):
            self._finish(job, result=result)

    def _finish(self, job: Job, result=None, error: Exception | None = None) -> None:
        self.stats["requests"] += 1
        self.stats["items"] += job.items
        try:
            if error is not None:
                self.stats["failed_requests"] += 1
                if not isinstance(error, ValueError):
                    logger.error("request failed: %s", error, exc_info=error)
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
        except InvalidStateError:  # already settled
            pass
