"""``rewarddance serve`` over real HTTP: a uvicorn server in a background thread serving the bundled judge
``shapes-s``, asked with httpx, the official ``openai`` client and ``RewardModel.from_server``; every number is
checked against the same judge scoring locally."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import httpx  # the server's stack and both clients are in the dev extra: a missing one fails, never skips
import numpy as np
import openai
import pytest
import torch
from PIL import Image

from rewarddance import RewardContext, RewardModel
from rewarddance.remote import RemoteRequestError, RemoteUnavailableError
from rewarddance.serving import create_app
from rewarddance.testing.serve import serve_in_thread
from rewarddance.video import write_video

KEY = "test-key"
NAME = "shapes-s"
PROMPT = "a red circle above a blue square"
MAX_BYTES = 200_000
MAX_IMAGES = 8
MAX_PIXELS = 128 * 128
MAX_FRAMES = 8


def _images(n: int, seed: int, size: int = 56) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _b64(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rm():
    return RewardModel.from_pretrained(NAME, device="cpu")


@pytest.fixture(scope="module")
def server(rm):
    app = create_app(
        rm,
        model_name=NAME,
        api_key=KEY,
        max_batch=16,
        max_wait_ms=150,
        max_request_bytes=MAX_BYTES,
        max_images=MAX_IMAGES,
        max_pixels=MAX_PIXELS,
        max_frames=MAX_FRAMES,
    )
    with serve_in_thread(app) as url:
        yield {"url": url, "app": app}


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server["url"], headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        yield client


def _error(resp) -> str:
    return resp.json()["error"]["message"]


def test_score_and_pairwise_score_match_local(http, rm):
    imgs = _images(3, 0)
    resp = http.post("/v1/score", json={"images": [_b64(x) for x in imgs], "prompts": PROMPT})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    local = rm.score(imgs, PROMPT)
    np.testing.assert_allclose(body["p_yes"], local.p_yes.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(body["margin"], local.margin.numpy(), atol=1e-5, rtol=0)
    assert body["normalisation"] == "vocab" and body["model"] == NAME and "reasons" not in body
    # a data URL, JPEG and yes/no normalisation; then a reference makes it pairwise (as compare)
    ref = _images(1, 9)[0]
    jpeg = "data:image/jpeg;base64," + _b64(imgs[0], "JPEG")
    body = {"images": [jpeg], "prompts": [PROMPT], "normalize": "yes_no", "references": [_b64(ref)]}
    resp = http.post("/v1/score", json=body)
    assert resp.status_code == 200, resp.text
    decoded = Image.open(io.BytesIO(base64.b64decode(jpeg.split(",")[1]))).convert("RGB")
    local = rm.compare([decoded], [ref], PROMPT, context=RewardContext(normalize="yes_no"))
    np.testing.assert_allclose(resp.json()["p_yes"], local.p_yes.numpy(), atol=1e-5, rtol=0)
    assert resp.json()["normalisation"] == "yes_no"


def test_compare_matches_local_prefer(http, rm):
    a, b = _images(2, 1), _images(2, 2)
    for objective in (None, "pairwise"):
        body = {"a": [_b64(x) for x in a], "b": [_b64(x) for x in b], "prompts": PROMPT}
        if objective:
            body["objective"] = objective
        resp = http.post("/v1/compare", json=body)
        assert resp.status_code == 200, resp.text
        out = resp.json()
        local = rm.prefer(a, b, PROMPT, objective=objective)  # shapes-s was trained pointwise: the default
        assert out["objective"] == local.objective == (objective or "pointwise")
        np.testing.assert_allclose(out["p_b_better"], local.p_b_better.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(out["margin"], local.margin.numpy(), atol=1e-5, rtol=0)
        if local.p_yes_a is not None:
            np.testing.assert_allclose(out["p_yes_a"], local.p_yes_a.numpy(), atol=1e-5, rtol=0)


def test_get_reward_takes_openrlhfs_body(http, rm):
    imgs = _images(2, 3)
    body = {"query": [_b64(x) for x in imgs], "prompts": [PROMPT, "a green triangle"], "labels": ["", ""]}
    resp = http.post("/get_reward", json=body)
    assert resp.status_code == 200, resp.text
    local = rm.score(imgs, [PROMPT, "a green triangle"])
    np.testing.assert_allclose(resp.json()["rewards"], local.p_yes.numpy(), atol=1e-5, rtol=0)
    bad = http.post("/get_reward", json={"query": [body["query"][0], "bm90IGFuIGltYWdl"]})
    assert bad.status_code == 422 and _error(bad).startswith("query[1]: not a readable")


def _chat_messages(img: Image.Image) -> list[dict]:
    """The judge's own question as OpenAI messages: each image part becomes a data URL."""
    url = "data:image/png;base64," + _b64(img)
    messages = RewardContext().messages(PROMPT, pairwise=False)
    for m in messages:
        m["content"] = [
            {"type": "image_url", "image_url": {"url": url}} if p["type"] == "image" else p for p in m["content"]
        ]
    return messages


def test_openai_client_gets_the_judges_logprobs(server, rm):
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY)
    img = _images(1, 4)[0]
    resp = client.chat.completions.create(
        model=NAME, messages=_chat_messages(img), max_tokens=1, logprobs=True, top_logprobs=5
    )
    choice = resp.choices[0]
    top = choice.logprobs.content[0].top_logprobs
    assert len(top) == 5 and choice.message.content == top[0].token == choice.logprobs.content[0].token
    assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
    spelled = {rm.tokenizer.decode([i]): i for i in rm.yes_ids + rm.no_ids}
    checked = 0
    for t in top:  # each yes / no spelling's log-prob against the local judge read at that one token id
        if t.token in spelled:
            other = rm.no_ids[0] if spelled[t.token] in rm.yes_ids else rm.yes_ids[0]
            local = rm.score([img], PROMPT, context=RewardContext(answer_tokens=(spelled[t.token], other)))
            assert abs(t.logprob - math.log(float(local.p_yes[0]))) < 1e-5, t.token
            checked += 1
    assert checked >= 2, [t.token for t in top]
    # with enough top tokens, the yes spellings sum to the judge's P(yes)
    resp = client.chat.completions.create(
        model=NAME, messages=_chat_messages(img), max_tokens=1, logprobs=True, top_logprobs=20
    )
    top = resp.choices[0].logprobs.content[0].top_logprobs
    yes = [math.exp(t.logprob) for t in top if t.token.strip().lower() == "yes"]
    assert len(yes) == len(rm.yes_ids)
    assert abs(sum(yes) - float(rm.score([img], PROMPT).p_yes[0])) < 1e-5
    with pytest.raises(openai.UnprocessableEntityError, match="exactly one token"):
        client.chat.completions.create(model=NAME, messages=_chat_messages(img), max_tokens=5)
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]


def test_auth(server, http):
    url = server["url"]
    assert httpx.get(url + "/health").status_code == 200  # load balancers poll it without a key
    body = {"images": [_b64(_images(1, 5)[0])], "prompts": PROMPT}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):  # missing, wrong, no scheme
        resp = httpx.post(url + "/v1/score", json=body, headers=headers)
        assert resp.status_code == 401 and "API key" in _error(resp)
        assert http.post("/v1/score", json=body).status_code == 200  # the next client with the key is served
    assert httpx.get(url + "/v1/models").status_code == 401


def _bomb_header(width: int, height: int) -> str:
    """A PNG whose header claims ``width x height`` pixels but holds the data of 8 x 8: only a check of the header
    before decoding refuses it for its size; decoding it would first allocate the claimed pixels."""
    buf = io.BytesIO()
    _images(1, 12, size=8)[0].save(buf, format="PNG")
    raw = bytearray(buf.getvalue())
    ihdr = raw[12:29]  # chunk type "IHDR" + 13 bytes of data
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return base64.b64encode(bytes(raw)).decode()


def test_limits_and_bad_requests_name_the_item(server, http, rm):
    """Each bad request gets its 4xx with a message naming the item, and a good request right after it gets the
    right answer: the server keeps serving."""
    image = _images(1, 6)[0]
    good = _b64(image)
    expected = float(rm.score([image], PROMPT).p_yes[0])

    def still_serving(after: str) -> None:
        resp = http.post("/v1/score", json={"images": [good], "prompts": PROMPT})
        assert resp.status_code == 200, (after, resp.text)
        assert abs(resp.json()["p_yes"][0] - expected) < 1e-5, after

    big = _b64(_images(1, 6, size=129)[0])  # 129 x 129 > MAX_PIXELS
    cases = [
        ({"images": [good] * (MAX_IMAGES + 1), "prompts": PROMPT}, 422, f"images: {MAX_IMAGES + 1} images"),
        ({"images": [good, big], "prompts": PROMPT}, 422, "images[1]: 129x129"),
        ({"images": [_bomb_header(5000, 5000)], "prompts": PROMPT}, 422, "images[0]: 5000x5000"),
        ({"images": [good, "@@not base64@@"], "prompts": PROMPT}, 422, "images[1]: not valid base64"),
        ({"images": [good, base64.b64encode(b"GIF89a....").decode()], "prompts": PROMPT}, 422, "images[1]: not a"),
        ({"images": [good], "prompts": PROMPT, "references": [good, good]}, 422, "references: got 2"),
        ({"images": [good], "prompts": ["a", "b"]}, 422, "prompts: got 2 prompts for 1 images"),
        ({"images": [good], "prompts": PROMPT, "task": "nonsense"}, 422, "unknown task 'nonsense'"),
        ({"images": [good], "prompts": PROMPT, "colour": 1}, 422, "colour: Extra inputs"),
        ({"prompts": PROMPT}, 422, "images: Field required"),
        ({"images": [good, good], "prompts": [PROMPT, "red circle " * 3000]}, 422, ("item 1: ", "longer than")),
        ({"images": [good], "prompts": "x" * MAX_BYTES}, 413, "exceeds the limit"),
    ]
    for body, status, message in cases:
        resp = http.post("/v1/score", json=body)
        parts = message if isinstance(message, tuple) else (message,)
        assert resp.status_code == status and all(m in _error(resp) for m in parts), (message, resp.text)
        still_serving(str(message))

    def chunked():  # no Content-Length: the server counts the bytes as they arrive
        yield b'{"images": [], "prompts": "'
        for _ in range(MAX_BYTES // 10_000 + 1):
            yield b"x" * 10_000
        yield b'"}'

    resp = http.post("/v1/score", content=chunked(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and "exceeds the limit" in _error(resp), resp.text
    still_serving("a chunked body over the limit")
    # a declared length over the limit is refused before the body is read: headers alone get the answer
    host, port = server["url"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 10000000000\r\n\r\n"
        )
        sock.sendall(head.encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    still_serving("a declared length over the limit")
    malformed = [(b'{"images": [', 400, "body: not valid JSON"), (b"[1, 2]", 422, "body: expected a JSON object")]
    for raw, status, message in malformed:
        resp = http.post("/v1/score", content=raw, headers={"Content-Type": "application/json"})
        assert resp.status_code == status and message in _error(resp), resp.text
        still_serving(message)


def _send_together(url: str, bodies: list[dict]) -> list:
    """POST each body to /v1/score from its own thread, all released at once; the responses in order."""
    barrier, results = threading.Barrier(len(bodies)), [None] * len(bodies)

    def ask(i):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            barrier.wait()
            results[i] = c.post("/v1/score", json=bodies[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_requests_merge_and_a_bad_one_fails_alone(server, http, rm):
    imgs = _images(8, 7)
    long_prompt = "red circle " * 3000  # more tokens than the judge's context of 4096: fails inside the model
    bodies = [{"images": [_b64(x)], "prompts": PROMPT} for x in imgs]
    bodies[2]["images"] = ["bm90IGFuIGltYWdl"]  # "not an image"
    bodies[5]["prompts"] = long_prompt
    before = http.get("/health").json()
    results = _send_together(server["url"], bodies)
    after = http.get("/health").json()
    assert results[2].status_code == 422 and _error(results[2]).startswith("images[0]: not a readable")
    assert results[5].status_code == 422 and "longer than the model's context" in _error(results[5])
    good = [i for i in range(len(bodies)) if i not in (2, 5)]
    local = rm.score([imgs[i] for i in good], PROMPT)
    for k, i in enumerate(good):
        assert results[i].status_code == 200, results[i].text
        assert abs(results[i].json()["p_yes"][0] - float(local.p_yes[k])) < 1e-5
    served = after["requests"] - before["requests"]  # the bad image never reached the model
    assert served == len(bodies) - 1
    assert after["batches"] - before["batches"] < served, (before, after)  # merged, not one request per batch
    assert http.get("/health").json()["status"] == "ok"


def test_requests_merged_into_one_call_share_the_prompt_prefix(server, http, rm):
    """Single-image requests with one prompt and one reference, sent together: merged into one call, they read one
    shared-prefix cache (a single-image request on its own never can), and each answer equals a local compare."""
    imgs, ref = _images(6, 21), _images(1, 22)[0]
    bodies = [{"images": [_b64(x)], "prompts": PROMPT, "references": [_b64(ref)]} for x in imgs]
    before = http.get("/health").json()
    results = _send_together(server["url"], bodies)
    after = http.get("/health").json()
    local = rm.compare(imgs, [ref] * len(imgs), PROMPT)
    for i, r in enumerate(results):
        assert r.status_code == 200, r.text
        assert abs(r.json()["p_yes"][0] - float(local.p_yes[i])) < 1e-5
    assert after["batches"] - before["batches"] < len(bodies), (before, after)
    assert after["prefix_cached_items"] - before["prefix_cached_items"] >= 2, (before, after)


class _GatedJudge:
    """The judge behind a gate: every ``score`` call records its prompts, then waits until ``gate`` is set, so the
    worker stays busy and later requests queue behind it."""

    def __init__(self, rm):
        self._rm, self.gate, self.scored = rm, threading.Event(), []

    def __getattr__(self, name):
        return getattr(self._rm, name)

    def score(self, images, prompts, **kwargs):
        self.scored.append(list(prompts))
        self.gate.wait(30)
        return self._rm.score(images, prompts, **kwargs)


_CLIENT = (
    "import sys, httpx; "
    "httpx.post(sys.argv[1] + '/v1/score', json={'images': [sys.argv[2]], 'prompts': sys.argv[3]}, timeout=60)"
)


def _wait_for(condition, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_killing_a_client_mid_request_leaves_the_server_healthy(rm, caplog):
    """Real client processes are killed while their requests are in the server: one while the model runs it, one
    while it waits in the queue (that one is dropped, never run), and a socket closed halfway through its body.
    Afterwards a normal request gets the right answer, /health shows the worker alive, and nothing was logged as a
    server error."""
    judge = _GatedJudge(rm)
    app = create_app(judge, model_name=NAME, max_batch=16, max_wait_ms=0)
    batcher = app.state.batcher
    img = _images(1, 14, size=16)[0]
    data = _b64(img)
    clients = []
    with serve_in_thread(app) as url:
        try:
            clients.append(subprocess.Popen([sys.executable, "-c", _CLIENT, url, data, "running"]))
            _wait_for(lambda: judge.scored == [["running"]], "the first request to reach the model")
            clients.append(subprocess.Popen([sys.executable, "-c", _CLIENT, url, data, "queued"]))
            _wait_for(lambda: batcher.waiting == 1, "the second request to queue behind it")
            queued = batcher._queue.queue[0]
            for proc in clients:
                proc.kill()
                proc.wait(10)
            _wait_for(queued.future.cancelled, "the server to drop the queued request of the client that left")
            host, port = url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=10) as sock:  # leaves halfway through the body
                sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b'{"images": [')
        finally:
            judge.gate.set()
            for proc in clients:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        resp = httpx.post(url + "/v1/score", json={"images": [data], "prompts": PROMPT}, timeout=20)
        assert resp.status_code == 200, resp.text
        assert abs(resp.json()["p_yes"][0] - float(rm.score([img], PROMPT).p_yes[0])) < 1e-5
        health = httpx.get(url + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["worker_alive"] is True, health.text
        assert judge.scored == [["running"], [PROMPT]]  # the queued request never reached the model
        assert health.json()["requests"] == 2 and health.json()["failed_requests"] == 0
    errors = [r for r in caplog.records if r.name.startswith("rewarddance") and r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def test_health_reports_a_dead_worker(rm):
    """A load balancer must see a replica whose worker thread is gone: /health answers 503."""
    app = create_app(rm, model_name=NAME)
    with serve_in_thread(app) as url:
        assert httpx.get(url + "/health", timeout=10).json()["worker_alive"] is True
        app.state.batcher.stop()
        resp = httpx.get(url + "/health", timeout=10)
        assert resp.status_code == 503 and resp.json()["worker_alive"] is False
        assert resp.json()["status"] == "unavailable"


def test_batcher_skips_a_job_whose_client_left():
    """A request cancelled while queued (its client went away) is never run, and the worker keeps serving."""
    import torch

    from rewarddance.model import RewardOutput
    from rewarddance.serving.batcher import Batcher, Job

    release, seen = threading.Event(), []

    class Judge:
        def score(self, images, prompts, context=None, references=None):
            release.wait(10)  # the first call holds the worker while the others queue
            seen.append(list(images))
            return RewardOutput(p_yes=torch.full((len(images),), 0.5), margin=torch.zeros(len(images)))

    def job(name):
        return Job("score", (), 1, {"images": [name], "prompts": [""], "references": None, "context": None})

    batcher = Batcher(Judge(), max_batch=4, max_wait_ms=0)
    batcher.start()
    try:
        first = batcher.submit(job("first"))
        time.sleep(0.1)
        left, last = batcher.submit(job("left")), batcher.submit(job("last"))
        assert left.cancel()
        release.set()
        assert first.result(10)["p_yes"] == [0.5] and last.result(10)["p_yes"] == [0.5]
        assert seen == [["first"], ["last"]]
    finally:
        batcher.stop()


def test_from_server_matches_local(server, rm):
    remote = RewardModel.from_server(server["url"], api_key=KEY, batch_size=2)
    imgs, ref = _images(5, 8), _images(1, 10)[0]
    out, local = remote.score(imgs, PROMPT), rm.score(imgs, PROMPT)
    assert type(out) is type(local) and out.p_yes.dtype == local.p_yes.dtype and out.reasons is None
    np.testing.assert_allclose(out.p_yes.numpy(), local.p_yes.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.margin.numpy(), local.margin.numpy(), atol=1e-5, rtol=0)
    ctx = RewardContext(criteria="count the shapes")
    out, local = remote.compare(imgs, [ref], PROMPT, context=ctx), rm.compare(imgs, [ref] * 5, PROMPT, context=ctx)
    np.testing.assert_allclose(out.p_yes.numpy(), local.p_yes.numpy(), atol=1e-5, rtol=0)
    pref, local = remote.prefer(imgs[:3], imgs[3], PROMPT), rm.prefer(imgs[:3], imgs[3], PROMPT)
    assert pref.objective == local.objective
    np.testing.assert_allclose(pref.p_b_better.numpy(), local.p_b_better.numpy(), atol=1e-5, rtol=0)
    with pytest.raises(RemoteRequestError, match=r"HTTP 422: images\[1\]: 129x129"):  # the server's own words
        remote.score(imgs[:1] + _images(1, 6, size=129), PROMPT)
    remote.close()
    with pytest.raises(RemoteRequestError, match="401"):
        RewardModel.from_server(server["url"], api_key="wrong").score(imgs[:1], PROMPT)


def test_from_server_retries_5xx_and_connection_errors():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Flaky(BaseHTTPRequestHandler):  # two 503s, then an answer
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.path)
            ok = len(seen) > 2
            body = json.dumps({"p_yes": [0.25], "margin": [-1.0]} if ok else {"error": {"message": "busy"}}).encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    stub = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        remote = RewardModel.from_server(f"http://127.0.0.1:{stub.server_port}", retries=2, backoff=0.01)
        out = remote.score(_images(1, 11), PROMPT)
        assert seen == ["/v1/score"] * 3 and out.p_yes.tolist() == [0.25] and out.margin.tolist() == [-1.0]
        seen.clear()
        remote.retries = 1
        with pytest.raises(RemoteUnavailableError, match="HTTP 503: busy"):
            remote.score(_images(1, 11), PROMPT)
        assert len(seen) == 2
    finally:
        stub.shutdown()
        stub.server_close()
    remote = RewardModel.from_server(f"http://127.0.0.1:{_free_port()}", retries=2, backoff=0.01)
    with pytest.raises(RemoteUnavailableError, match="no answer after 3 tries .*ConnectError"):
        remote.score(_images(1, 11), PROMPT)


def test_import_rewarddance_loads_no_server_stack():
    code = (
        "import sys, rewarddance, rewarddance.cli, rewarddance.remote; rewarddance.cli.build_parser(); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'uvicorn', 'starlette'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout) == []


def test_score_returns_the_decoded_reasons_when_asked(http, rm):
    """Chain of thought over HTTP: judgment-first with decoded reasons answers the same P(yes) and the same reason
    text as the local judge (greedy decoding, so both are deterministic)."""
    imgs = _images(2, 4)
    body = {"images": [_b64(x) for x in imgs], "prompts": PROMPT, "cot": "judgment_first", "decode_reasons": True}
    body["max_reason_tokens"] = 6
    resp = http.post("/v1/score", json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    local = rm.score(
        imgs, PROMPT, context=RewardContext(cot="judgment_first", decode_reasons=True, max_reason_tokens=6)
    )
    assert local.reasons is not None and len(local.reasons) == 2
    assert out["reasons"] == list(local.reasons)
    np.testing.assert_allclose(out["p_yes"], local.p_yes.numpy(), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------------------ videos
def _clips(n: int, frames: int, seed: int, h: int = 32, w: int = 40) -> torch.Tensor:
    """``[n, frames, 3, h, w]`` random clips on the uint8 grid (k / 255), so PNG frames carry them exactly."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, frames, 3, h, w), generator=g).float() / 255.0


def _video_b64(clip: torch.Tensor) -> list[str]:
    """A ``[T, 3, H, W]`` clip as the wire's list of base64 PNG frames."""
    return [_b64(Image.fromarray((f * 255).round().byte().permute(1, 2, 0).numpy())) for f in clip]


def test_videos_over_http_match_local(http, rm):
    """shapes-s (LLaVA) reads a video as its frames: /v1/score takes videos as frame lists or objects, samples them
    by the request's num_frames or fps (with the video's frame_rate) and reports the kept frames; reference videos
    make it pairwise; /v1/compare takes videos: [a, b]. Every number equals the local judge's."""
    clips, ref = _clips(2, 5, 30), _clips(1, 5, 31)[0]
    videos = [_video_b64(clips[0]), {"frames": _video_b64(clips[1]), "frame_rate": 5.0}]
    resp = http.post("/v1/score", json={"videos": videos, "prompts": PROMPT, "num_frames": 3})
    assert resp.status_code == 200, resp.text
    body, local = resp.json(), rm.score(videos=clips, prompts=PROMPT, num_frames=3)
    np.testing.assert_allclose(body["p_yes"], local.p_yes.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(body["margin"], local.margin.numpy(), atol=1e-4, rtol=0)
    assert abs(body["margin"][0] - body["margin"][1]) > 1e-3, "the two videos should score differently"
    assert [v["indices"] for v in body["videos"]] == [list(s.indices) for s in local.videos] == [[0, 2, 4]] * 2
    assert [v["frame_rate"] for v in body["videos"]] == [None, 5.0]
    # 5 frames at 5 fps last one second: fps=2 keeps 2 of them, the first and the last
    resp = http.post("/v1/score", json={"videos": videos[1:], "prompts": PROMPT, "fps": 2})
    assert resp.status_code == 200, resp.text
    assert resp.json()["videos"] == [{"indices": [0, 4], "total_frames": 5, "frame_rate": 5.0}]
    local = rm.score(videos=clips[1:], prompts=PROMPT, num_frames=2)
    np.testing.assert_allclose(resp.json()["p_yes"], local.p_yes.numpy(), atol=1e-4, rtol=0)
    # one reference video for both candidates: compare
    resp = http.post("/v1/score", json={"videos": videos, "references": [_video_b64(ref)], "prompts": PROMPT})
    assert resp.status_code == 200, resp.text
    local = rm.compare(videos=clips, references=ref, prompts=PROMPT)
    np.testing.assert_allclose(resp.json()["p_yes"], local.p_yes.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(resp.json()["margin"], local.margin.numpy(), atol=1e-4, rtol=0)
    for objective in (None, "pairwise"):
        body = {"videos": [[_video_b64(ref)], videos], "prompts": PROMPT, "num_frames": 4}
        resp = http.post("/v1/compare", json=dict(body, objective=objective) if objective else body)
        assert resp.status_code == 200, resp.text
        out, local = resp.json(), rm.prefer(videos=(ref, clips), prompts=PROMPT, objective=objective, num_frames=4)
        assert out["objective"] == local.objective == (objective or "pointwise")
        np.testing.assert_allclose(out["p_b_better"], local.p_b_better.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(out["margin"], local.margin.numpy(), atol=1e-4, rtol=0)


def test_bad_videos_are_refused_by_name_and_the_server_keeps_serving(http, rm):
    clip = _clips(1, 3, 32)[0]
    good = _video_b64(clip)
    small = _b64(_images(1, 33, size=24)[0])
    expected = float(rm.score(videos=[clip], prompts=PROMPT).p_yes[0])

    def still_serving(after: str) -> None:
        resp = http.post("/v1/score", json={"videos": [good], "prompts": PROMPT})
        assert resp.status_code == 200, (after, resp.text)
        assert abs(resp.json()["p_yes"][0] - expected) < 1e-4, after
        assert http.get("/health").json()["status"] == "ok", after

    score_cases = [
        ({"videos": [good, []]}, "videos[1]: the video has no frames"),
        ({"videos": [good, {"frames": [], "frame_rate": 8}]}, "videos[1]: the video has no frames"),
        ({"videos": [good, good[:2] + [small]]}, "videos[1]: frame 2 is 24x24 but frame 0 is 40x32"),
        ({"videos": [good, good * 3]}, f"videos[1]: 9 frames exceed the server's limit of {MAX_FRAMES} per video"),
        ({"videos": [good, [good[0], "bm90IGFuIGltYWdl"]]}, "videos[1] frame 1: not a readable"),
        ({"videos": [[_b64(_images(1, 6, size=129)[0])]]}, "videos[0] frame 0: 129x129"),
        ({"videos": [good, "not a video"]}, "videos[1]: expected a video"),
        ({"videos": [{"frames": good, "colour": 1}]}, "videos[0]: unknown field 'colour'"),
        ({"videos": [{"frames": good, "indices": [0, 2, 1]}]}, "videos[0]: indices must be 3 increasing"),
        ({"videos": [good], "num_frames": 4}, "videos[0]: num_frames=4 but the video has only 3 frames"),
        ({"videos": [good], "fps": 2}, "videos[0]: sampling by fps needs the video's frame rate"),
        ({"videos": [good], "images": [small]}, "images and videos: give one of them, not both"),
        ({"videos": [good], "references": [small]}, "references[0]: expected a video"),
        ({"images": [small], "num_frames": 2}, "num_frames: applies to videos only"),
        ({"videos": [good] * (MAX_IMAGES + 1)}, f"videos: {MAX_IMAGES + 1} videos in one request exceed the limit"),
    ]
    compare_cases = [
        ({"videos": [[good]]}, "videos: expected [a, b], two lists of videos"),
        ({"videos": [[good], [good, []]]}, "videos[1][1]: the video has no frames"),
        ({"videos": [[good], [good]], "a": [small]}, "a, b and videos"),
    ]
    for path, cases in (("/v1/score", score_cases), ("/v1/compare", compare_cases)):
        for body, message in cases:
            resp = http.post(path, json=dict(body, prompts=PROMPT))
            assert resp.status_code == 422 and message in _error(resp), (message, resp.text)
            still_serving(message)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_served_native_video_judge_matches_local(rm_cache, family, tmp_path):
    """Qwen-VL judges read a clip as one video (temporal patches; Qwen3-VL also writes each frame's time, from its
    index and the frame rate, into the prompt). from_server decodes and samples on the client and sends the kept
    frames with their indices and frame rate: scores equal the local judge's within 1e-4 and record the same frames,
    for tensors sampled by count, an mp4 sampled by fps, a reference video, image-to-video and prefer."""
    pytest.importorskip("av")
    rm = rm_cache(family)
    clips, ref = _clips(2, 6, 40), _clips(1, 6, 41)[0]
    mp4 = tmp_path / "clip.mp4"
    write_video(mp4, clips[0], fps=6)
    first = _clips(1, 1, 42)[0, 0]
    with serve_in_thread(create_app(rm, model_name=family)) as url:
        remote = RewardModel.from_server(url, batch_size=1)  # one video per request, sent concurrently
        calls = [
            ({"videos": clips, "num_frames": 4}, None),
            ({"videos": [mp4, clips[1]], "num_frames": 3}, None),
            ({"videos": [mp4], "fps": 2}, None),
            ({"videos": clips, "num_frames": 4}, RewardContext(task="video_quality", first_frame=first)),
        ]
        for kwargs, ctx in calls:
            out, local = (
                remote.score(prompts=PROMPT, context=ctx, **kwargs),
                rm.score(prompts=PROMPT, context=ctx, **kwargs),
            )
            what = f"{family} {kwargs} {ctx and ctx.task}"
            np.testing.assert_allclose(out.p_yes.numpy(), local.p_yes.numpy(), atol=1e-4, rtol=0, err_msg=what)
            np.testing.assert_allclose(out.margin.numpy(), local.margin.numpy(), atol=1e-4, rtol=0, err_msg=what)
            assert out.videos == local.videos, what
        assert [s.indices for s in out.videos] == [(0, 2, 3, 5)] * 2
        assert remote.score(videos=[mp4], prompts=PROMPT, fps=2).videos[0].source_fps == 6
        out = remote.compare(videos=clips, references=ref, prompts=PROMPT, num_frames=4)
        local = rm.compare(videos=clips, references=ref, prompts=PROMPT, num_frames=4)
        np.testing.assert_allclose(out.p_yes.numpy(), local.p_yes.numpy(), atol=1e-4, rtol=0)
        assert abs(float(out.margin[0] - out.margin[1])) > 1e-3, "the two videos should score differently"
        pref = remote.prefer(videos=(ref, clips), prompts=PROMPT, objective="pairwise", num_frames=4)
        np.testing.assert_allclose(pref.p_b_better.numpy(), local.p_yes.numpy(), atol=1e-4, rtol=0)
