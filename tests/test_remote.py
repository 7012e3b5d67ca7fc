"""Remote judges wherever a judge is taken: ``RewardModel.from_openai`` against ``rewarddance serve``'s
chat-completions endpoint (in a thread, serving the bundled ``shapes-s``) and against a stub answering chosen
log-probabilities; best-of-N, the command line's ``--server``, GRPO's ``reward_model: http://...``, the ComfyUI
loader, and the refusals where gradients through the judge are needed (ReFL, ``reward()``). Every number is
checked against the same judge running locally."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from rewarddance import RewardContext, RewardModel
from rewarddance.cli import main
from rewarddance.openai_judge import AnswerNotFoundError, OpenAIJudge, read_answer
from rewarddance.remote import NoGradientError, RemoteRewardModel, load_judge
from rewarddance.search import best_of_n
from rewarddance.serving import create_app
from rewarddance.testing.serve import serve_in_thread

KEY = "remote-key"
NAME = "shapes-s"
PROMPT = "a red circle above a blue square"


def _images(n: int, seed: int, size: int = 48) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def rm():
    return RewardModel.from_pretrained(NAME, device="cpu")


@pytest.fixture(scope="module")
def url(rm):
    with serve_in_thread(create_app(rm, model_name=NAME, api_key=KEY, max_wait_ms=5)) as base:
        yield base


def _close(a, b, what: str) -> None:
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, rtol=0, err_msg=what)


def test_from_openai_reproduces_the_local_judge(url, rm):
    judge = RewardModel.from_openai(url + "/v1", NAME, api_key=KEY, concurrency=3)
    assert isinstance(judge, OpenAIJudge)
    imgs, ref = _images(3, 0), _images(1, 1)[0]
    prompts = [PROMPT, "a green triangle", "two blue squares"]
    for ctx in (RewardContext(), RewardContext(normalize="yes_no", criteria="count the shapes")):
        out, local = judge.score(imgs, prompts, context=ctx), rm.score(imgs, prompts, context=ctx)
        assert type(out) is type(local) and out.p_yes.dtype == torch.float32 and out.reasons is None
        _close(out.p_yes, local.p_yes, f"p_yes, normalize={ctx.normalize}")
        _close(out.margin, local.margin, f"margin, normalize={ctx.normalize}")
    # pairwise: the chat endpoint takes two images; both orders averaged as the local judge does
    ctx = RewardContext(average_orders=True)
    out, local = judge.compare(imgs, [ref], PROMPT, context=ctx), rm.compare(imgs, [ref] * 3, PROMPT, context=ctx)
    _close(out.p_yes, local.p_yes, "pairwise p_yes")
    _close(out.margin, local.margin, "pairwise margin")
    pref, local = (
        judge.prefer(imgs[:2], imgs[2], PROMPT, objective="pointwise"),
        rm.prefer(imgs[:2], imgs[2], PROMPT, objective="pointwise"),
    )
    _close(pref.p_b_better, local.p_b_better, "prefer")
    # the server's own checks come back as the local judge's errors would
    with pytest.raises(ValueError, match=r"prompts\[0\]: empty prompt"):
        judge.score(imgs[:1], "")
    with pytest.raises(ValueError, match="needs decoding"):
        judge.score(imgs[:1], PROMPT, context=RewardContext(cot="reasoning_first"))


class _Stub(BaseHTTPRequestHandler):
    """An OpenAI-style server whose answers the test chooses: ``answers`` holds (status, top list) per request."""

    answers: list = []
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, body))
        status, top = type(self).answers.pop(0)
        if status != 200:
            out = {"object": "error", "message": "overloaded"}  # vLLM's error shape
        else:
            entries = [{"token": t, "logprob": lp, "bytes": None} for t, lp in top]
            out = {"choices": [{"logprobs": {"content": [{**entries[0], "top_logprobs": entries}]}}]}
        raw = json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    _Stub.answers, _Stub.seen = [], []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def test_answers_are_read_from_the_listed_spellings_and_retried(stub):
    ln = math.log
    _Stub.answers = [
        (503, None),  # retried
        (200, [(" Yes", ln(0.5)), ("yes", ln(0.1)), ("No", ln(0.3)), ("maybe", ln(0.05))]),
        (200, [("The", ln(0.6)), ("A", ln(0.3)), ("It", ln(0.05))]),  # neither answer: the second image fails
    ]
    judge = load_judge(f"openai:{stub}#served-vlm", retries=2, backoff=0.01, concurrency=1, top_logprobs=4)
    with pytest.raises(AnswerNotFoundError, match=r"images\[1\] \(prompt 'a cat'\): neither a yes nor a no .*'The'"):
        judge.score(_images(2, 2), "a cat")
    path, body = _Stub.seen[0]
    assert path == "/v1/chat/completions" and body["model"] == "served-vlm"  # a URL without a path gets /v1
    assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 4
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts].count("image_url") == 1
    assert next(p for p in parts if p["type"] == "image_url")["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[-1]["text"].endswith('Does this image match the prompt "a cat"? Answer yes or no.')
    # the sums: vocab keeps P_yes, yes_no renormalises; a side missing from the list gets the last listed token's
    top = [(" Yes", ln(0.5)), ("yes", ln(0.1)), ("No", ln(0.3)), ("maybe", ln(0.05))]
    assert read_answer(top, RewardContext(), "x") == pytest.approx((0.6, ln(0.6 / 0.3)))
    assert read_answer(top, RewardContext(normalize="yes_no"), "x") == pytest.approx((0.6 / 0.9, ln(0.6 / 0.3)))
    assert read_answer(top[:2] + top[3:], RewardContext(), "x") == pytest.approx((0.6, ln(0.6 / 0.05)))
    exact = [("Yes", ln(0.5)), (" Yes", ln(0.1)), ("No", ln(0.3)), ("maybe", ln(0.05))]  # vqascore: "Yes", "No"
    assert read_answer(exact, RewardContext(task="vqascore"), "x") == pytest.approx((0.5, ln(0.5 / 0.3)))
    with pytest.raises(ValueError, match="holds token ids"):
        read_answer(top, RewardContext(answer_tokens=(1, 2)), "x")
    with pytest.raises(ValueError, match="expected openai:BASE_URL#MODEL"):
        load_judge("openai:http://127.0.0.1:1/v1")


def test_best_of_n_with_a_remote_judge_picks_what_the_local_one_picks(url, rm):
    def generate(prompt, seeds):  # deterministic candidates per seed, [B, 3, H, W] in [0, 1]
        return torch.stack([torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(s)) for s in seeds])

    local = best_of_n(generate, rm, PROMPT, n=6, top_k=2, batch_size=3)
    assert len(set(local.scores.tolist())) == 6  # distinct scores: the ranking is not a tie-break
    for judge in (RewardModel.from_server(url, api_key=KEY), RewardModel.from_openai(url, NAME, api_key=KEY)):
        got = best_of_n(generate, judge, PROMPT, n=6, top_k=2, batch_size=3)
        assert got.order == local.order and got.best_seed == local.best_seed, type(judge).__name__
        _close(got.scores, local.scores, type(judge).__name__)


def test_cli_server_flag(url, rm, tmp_path, capsys, monkeypatch):
    imgs = _images(2, 3)
    paths = []
    for k, img in enumerate(imgs):
        paths.append(str(tmp_path / f"{k}.png"))
        img.save(paths[-1])
    local = rm.score(imgs, PROMPT)
    no_model = ["--model", str(tmp_path / "no-such-judge")]  # with --server nothing is loaded locally
    for server in (url, f"openai:{url}/v1#{NAME}"):
        assert (
            main(["score", *paths, "--prompt", PROMPT, "--server", server, "--api-key", KEY, "--json", *no_model]) == 0
        )
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        np.testing.assert_allclose([r["p_yes"] for r in rows], local.p_yes.numpy(), atol=1e-5, rtol=0)
    monkeypatch.setenv("REWARDDANCE_API_KEY", KEY)  # the key from the environment
    assert main(["compare", *paths, "--prompt", PROMPT, "--server", url, "--json", *no_model]) == 0
    row = json.loads(capsys.readouterr().out)
    pref = rm.prefer([imgs[0]], [imgs[1]], PROMPT)  # by the served judge's own objective (its rewarddance.json)
    assert row["objective"] == pref.objective
    assert abs(row["p_b_better"] - float(pref.p_b_better[0])) < 1e-5
    monkeypatch.delenv("REWARDDANCE_API_KEY")
    assert main(["score", paths[0], "--prompt", PROMPT, "--server", url, "--api-key", "wrong"]) == 2
    assert "HTTP 401" in capsys.readouterr().err


def _grpo_cfg(out, reward_model):
    from rewarddance.training.grpo_config import GRPOConfig

    return GRPOConfig(
        pretrained="in-process",
        reward_model=reward_model,
        prompts=[PROMPT, "a green triangle"],
        output_dir=str(out),
        num_inference_steps=3,
        resolution=32,
        lora_rank=2,
        lora_alpha=2,
        group_size=2,
        prompts_per_step=1,
        max_steps=2,
        save_every=0,
        eval_prompts=[],
        eval_train_prompts=0,
        seed=0,
    )


def _tiny_pipe():
    from rewarddance.testing.tiny_diffusion import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd", "ddim")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_grpo_takes_a_served_judge_and_refl_refuses_one(url, rm, tmp_path, monkeypatch):
    from rewarddance.training.grpo import train_grpo
    from rewarddance.training.refl import train_refl
    from rewarddance.training.refl_config import ReFLConfig

    monkeypatch.setenv("REWARDDANCE_API_KEY", KEY)
    served = train_grpo(_grpo_cfg(tmp_path / "served", url), progress=False, pipe=_tiny_pipe())
    local = train_grpo(_grpo_cfg(tmp_path / "local", "in-process"), progress=False, pipe=_tiny_pipe(), rm=rm)
    keys = ("reward_mean", "reward_std", "loss")
    assert len(served["history"]) == 2
    np.testing.assert_allclose(
        [h[k] for h in served["history"] for k in keys], [h[k] for h in local["history"] for k in keys], rtol=1e-3
    )
    # ReFL back-propagates through the judge: a served one is refused, as a spec and as an object
    base = dict(pretrained="in-process", prompts=[PROMPT], output_dir=str(tmp_path / "refl"), num_inference_steps=4)
    for spec in (url, f"openai:{url}/v1#{NAME}"):
        with pytest.raises(NoGradientError, match="ReFLConfig: reward_model .* is remote: it returns scores, not"):
            ReFLConfig(reward_model=spec, stop_range=[1, 3], **base)
    remote = RemoteRewardModel(url, api_key=KEY)
    with pytest.raises(NoGradientError, match="train-refl: rm .* is remote"):
        train_refl(ReFLConfig(reward_model="in-process", stop_range=[1, 3], **base), progress=False, rm=remote)
    with pytest.raises(NoGradientError, match=r"reward\(\): the judge http://127.0.0.1:\d+ is remote"):
        remote.reward(torch.rand(1, 3, 32, 32), PROMPT)
    assert not (tmp_path / "refl").exists()


def test_comfy_loader_takes_a_server(url, rm):
    from rewarddance import comfy as rd

    judge = rd.CACHE.remote(f" {url} ", KEY)
    assert isinstance(judge, RemoteRewardModel) and rd.CACHE.remote(url, KEY) is judge  # cached
    rd.CACHE.offload()  # a remote judge has nothing to move
    image = torch.rand(2, 40, 40, 3)  # ComfyUI's [B, H, W, C]
    scores = rd.score_images(judge, image, PROMPT)[0]
    local = rm.score(rd.to_bchw(image), PROMPT).p_yes.tolist()
    assert scores == pytest.approx(local, abs=1e-5)
    with pytest.raises(rd.NodeInputError, match="server: 'localhost:8000' is not http"):
        rd.CACHE.remote("localhost:8000")
    rd.CACHE.clear()


def _clips(n: int, frames: int, seed: int, h: int = 32, w: int = 40) -> torch.Tensor:
    """``[n, frames, 3, h, w]`` random clips on the uint8 grid (k / 255), so PNG frames carry them exactly."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, frames, 3, h, w), generator=g).float() / 255.0


def test_from_openai_sends_a_videos_frames_as_images(url, rm):
    """from_openai samples a video here and sends its frames as image_url parts of the one message. shapes-s is a
    LLaVA judge, which reads a video as its frames locally too: through rewarddance serve's chat endpoint the
    scores equal the local judge's, pointwise, against a reference video, and prefer. (The clips and the question
    are chosen so that every yes and no spelling is among the top 20 tokens, as the reading needs: this image judge
    gives a video P(yes) of about 0.003.)"""
    judge = RewardModel.from_openai(url + "/v1", NAME, api_key=KEY, concurrency=2)
    clips = _clips(3, 5, 64)
    out, local = (j.score(videos=clips, prompts=PROMPT, num_frames=2) for j in (judge, rm))
    _close(out.p_yes, local.p_yes, "video p_yes")
    _close(out.margin, local.margin, "video margin")
    assert out.videos == local.videos and out.videos[0].indices == (0, 4)
    ctx = RewardContext(task="video_alignment", question='Does this match the prompt "{prompt}"?')
    out, local = (
        j.compare(videos=clips[1:], references=clips[0], prompts=PROMPT, context=ctx, num_frames=2) for j in (judge, rm)
    )
    _close(out.p_yes, local.p_yes, "pairwise video p_yes")
    _close(out.margin, local.margin, "pairwise video margin")
    pref, local = (
        j.prefer(videos=(clips[0], clips[1:]), prompts=PROMPT, objective="pointwise", num_frames=2) for j in (judge, rm)
    )
    _close(pref.p_b_better, local.p_b_better, "video prefer")
    with pytest.raises(ValueError, match="images and videos: give one of them"):
        judge.score(_images(1, 0), PROMPT, videos=clips)


def test_grpo_rewards_of_clips_from_a_served_judge(url, rm):
    """GRPO's reward of clips (pointwise margins, and the win rate within a group, compare(videos=) both ways) from
    a judge behind rewarddance serve equals the local judge's."""
    from rewarddance.training.grpo import judge_rewards

    clips = _clips(4, 4, 62)
    prompts = [PROMPT, PROMPT, "a green triangle", "a green triangle"]
    remote, ctx = RewardModel.from_server(url, api_key=KEY, batch_size=2), RewardContext(task="video_alignment")
    for kind in ("win_rate", "margin"):
        got = judge_rewards(remote, clips, prompts, kind, 2, ctx, num_frames=2)
        want = judge_rewards(rm, clips, prompts, kind, 2, ctx, num_frames=2)
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4, rtol=0, err_msg=kind)
    assert got.std() > 1e-2, "the clips should score differently"
