"""Videos in the ComfyUI nodes' logic (``rewarddance.comfy_video`` and ``rewarddance.comfy``): IMAGE batches of
frames split into videos, VIDEO objects, frame sampling, Score / Compare Videos, Best-of-N over videos and the guided
sampler on 5-D latents; checked against the library's own ``videos=`` scoring with tiny judges (Qwen2-VL takes videos
natively, LLaVA as frames)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from fractions import Fraction

import pytest
import torch

from rewarddance import RewardContext, RewardModel
from rewarddance import comfy as rd
from rewarddance import comfy_video as rv
from rewarddance.comfy import NodeInputError
from rewarddance.judge_info import TrainedFor, write_trained_for
from rewarddance.video import write_video

PROMPT = "a red circle moves left"


@pytest.fixture(scope="module")
def qwen(rm_cache):
    return rm_cache("qwen2_vl")


@pytest.fixture(scope="module")
def llava(rm_cache):
    return rm_cache("llava")


def _frames(n, h=32, w=40, seed=0):
    """ComfyUI IMAGE ``[n, H, W, 3]`` on the uint8 grid, so every path sees the same pixels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), generator=g).float() / 255


def _clip(frames):
    """IMAGE ``[T, H, W, 3]`` -> the library's video ``[T, 3, H, W]``."""
    return frames.permute(0, 3, 1, 2).contiguous()


@dataclass
class _Components:  # the fields of ComfyUI's VideoComponents that the nodes read
    images: torch.Tensor
    frame_rate: Fraction


class _Video:  # stands in for a ComfyUI VIDEO (VideoFromComponents / VideoFromFile): get_components()
    def __init__(self, images, rate):
        self.parts = _Components(images, Fraction(rate))

    def get_components(self):
        return self.parts


def test_frames_split_into_videos_and_sample():
    batch = _frames(12)
    assert [v.shape[0] for v in rv.split_videos(batch, 0)] == [12]  # 0: the whole batch is one video
    videos = rv.split_videos(batch, 4)
    assert len(videos) == 3 and torch.equal(videos[1], batch[4:8])
    with pytest.raises(NodeInputError, match=r"video: 12 frames do not split into videos of frames_per_video = 5"):
        rv.split_videos(batch, 5)
    with pytest.raises(NodeInputError, match="frames_per_video must be 0"):
        rv.split_videos(batch, -1)
    with pytest.raises(NodeInputError, match=r"video_b: expected an IMAGE batch"):
        rv.video_input(torch.rand(4, 8, 8), 0, "video_b")
    got = rv.video_input(_Video(batch, 24), 6)  # a VIDEO: its frames and frame rate
    assert got.frame_rate == 24.0 and len(got.frames) == 2 and torch.equal(got.frames[1], batch[6:])
    assert rv.video_input(batch).frame_rate is None

    clip, idx = rv.sample_clip(batch, num_frames=4)
    assert idx == [0, 4, 7, 11] and torch.equal(clip, _clip(batch[idx]))
    assert rv.sample_clip(batch, num_frames=0)[1] == list(range(12))  # every frame
    assert rv.sample_clip(batch, num_frames=50)[1] == list(range(12))  # capped at the video's length
    assert rv.sample_clip(batch, fps=2, frame_rate=6.0)[1] == [0, 4, 7, 11]  # 2 s at 6 fps -> 4 frames
    with pytest.raises(NodeInputError, match="fps: sampling 2 frames per second needs the frame rate of clip"):
        rv.sample_clip(batch, fps=2, name="clip")
    with pytest.raises(NodeInputError, match="num_frames must be 0"):
        rv.sample_clip(batch, num_frames=-2)


def test_score_videos_matches_the_library_on_a_native_video_judge(qwen):
    """Two videos of 6 frames in one IMAGE batch, 4 frames judged of each: the scores are score(videos=...), the
    sorted output is every frame of the videos, best first, and the table names the frames judged."""
    batch = torch.cat([_frames(6, seed=1), _frames(6, seed=2)])
    scores, ordered, table = rv.score_videos(qwen, batch, PROMPT, frames_per_video=6, num_frames=4)
    want = qwen.score(videos=[_clip(batch[:6]), _clip(batch[6:])], prompts=PROMPT, num_frames=4)
    assert scores == pytest.approx(want.p_yes.tolist(), abs=1e-6)
    assert abs(scores[0] - scores[1]) > 1e-4, "the two videos should score differently"
    best = 0 if scores[0] >= scores[1] else 1
    assert torch.equal(ordered, torch.cat([batch[6 * best : 6 * best + 6], batch[6 * (1 - best) : 6 * (2 - best)]]))
    rows = table.splitlines()
    assert rows[0].split() == ["rank", "video", "p_yes", "margin", "frames"] and len(rows) == 3
    assert rows[1].split()[1] == str(best) and rows[1].endswith("4 of 6 (0-5)")
    # the default context for videos is video_alignment; an image task is allowed, and scores otherwise
    ctx = rd.make_context("video_quality")
    got, _, _ = rv.score_videos(qwen, batch, PROMPT, ctx, frames_per_video=6, num_frames=4)
    quality = qwen.score(
        videos=[_clip(batch[:6]), _clip(batch[6:])], prompts=PROMPT, num_frames=4, context=ctx["context"]
    )
    assert got == pytest.approx(quality.p_yes.tolist(), abs=1e-6) and got != pytest.approx(scores, abs=1e-6)


def test_score_videos_from_a_video_samples_by_its_frame_rate(llava):
    """A VIDEO of 12 frames at 6 fps sampled at 2 frames per second: frames 0, 4, 7, 11, times in the table."""
    frames = _frames(12, seed=3)
    scores, ordered, table = rv.score_videos(llava, _Video(frames, 6), PROMPT, fps=2.0)
    want = llava.score(videos=[_clip(frames[[0, 4, 7, 11]])], prompts=PROMPT)
    assert scores == pytest.approx(want.p_yes.tolist(), abs=1e-6) and torch.equal(ordered, frames)
    assert table.splitlines()[1].endswith("4 of 12 (0-11) 0.00-1.83 s")
    with pytest.raises(NodeInputError, match="an IMAGE batch does not carry"):
        rv.score_videos(llava, frames, PROMPT, fps=2.0)


def test_video_contexts(qwen, caplog):
    """A reference image and reasoning-first are refused for videos; judgment-first scores at the verdict (no reason
    decoded); an image task is used as asked, with a warning."""
    batch = _frames(4, seed=4)
    with pytest.raises(NodeInputError, match="cannot compare them with a reference image; compare two videos"):
        rv.score_videos(qwen, batch, PROMPT, rd.make_context(reference=_frames(1)))
    with pytest.raises(NodeInputError, match="cot = reasoning_first"):
        rv.score_videos(qwen, batch, PROMPT, rd.make_context("video_alignment", cot="reasoning_first"))
    got, _, _ = rv.score_videos(qwen, batch, PROMPT, rd.make_context("video_motion", cot="judgment_first"))
    want = qwen.score(
        videos=[_clip(batch)], prompts=PROMPT, context=RewardContext("video_motion", cot="judgment_first")
    )
    assert got == pytest.approx(want.p_yes.tolist(), abs=1e-6)
    with caplog.at_level(logging.WARNING, logger="rewarddance.comfy_video"):
        got, _, _ = rv.score_videos(qwen, batch, PROMPT, rd.make_context("alignment"))
    assert "task 'alignment' asks about images" in caplog.text
    want = qwen.score(videos=[_clip(batch)], prompts=PROMPT, context=RewardContext("alignment"))
    assert got == pytest.approx(want.p_yes.tolist(), abs=1e-6)


def test_compare_videos_pairwise_broadcasts_and_picks_winners(llava):
    """One video against two (frames_per_video 4): P(b better than a) is compare(videos=b, references=a) on the
    sampled frames; each winner comes back whole; mismatched counts are refused."""
    a, b = _frames(4, seed=5), _frames(8, seed=6)
    p, winners, details = rv.compare_videos(llava, a, b, PROMPT, frames_per_video=4, num_frames=3)
    idx = [0, 2, 3]
    want = llava.compare(videos=[_clip(b[:4][idx]), _clip(b[4:][idx])], references=[_clip(a[idx])], prompts=PROMPT)
    assert p == pytest.approx(want.p_yes.tolist(), abs=1e-6) and max(p) - min(p) > 1e-4
    expect = torch.cat([b[4 * i : 4 * i + 4] if p[i] > 0.5 else a for i in range(2)])
    assert torch.equal(winners, expect)
    lines = details.splitlines()
    assert lines[0].startswith("pairwise:") and "video 2 (b) better than video 1 (a)" in lines[0]
    assert lines[2].endswith("3 of 4 (0-3) | 3 of 4 (0-3)")
    with pytest.raises(NodeInputError, match="video_a has 2 videos and video_b 3"):
        rv.compare_videos(llava, _frames(4), _frames(6), PROMPT, frames_per_video=2)


def test_compare_videos_with_a_pointwise_judge_is_bradley_terry(tiny_vlm, tmp_path):
    folder = tmp_path / "judge"
    shutil.copytree(tiny_vlm("llava"), folder)
    write_trained_for(folder, TrainedFor(objective="pointwise"))
    judge = RewardModel.from_pretrained(str(folder), device="cpu")
    a, b = _Video(_frames(5, seed=7), 8), _Video(_frames(5, seed=8), 8)
    p, winners, details = rv.compare_videos(judge, a, b, PROMPT, num_frames=3)
    out = judge.score(videos=[_clip(_frames(5, seed=7)), _clip(_frames(5, seed=8))], prompts=PROMPT, num_frames=3)
    assert p == pytest.approx([torch.sigmoid(out.margin[1] - out.margin[0]).item()], abs=1e-5)
    assert details.startswith("pointwise judge") and winners.shape == (5, 32, 40, 3)


def test_best_of_n_over_videos_keeps_whole_videos_and_their_latent_rows(qwen):
    """Three videos of 4 frames: the kept video is the best by score(videos=...), its 4 frames come back, and the
    latent rows follow: one per video (a Wan latent [3, C, T, H, W]) or one per frame (an image model's)."""
    batch = torch.cat([_frames(4, seed=s) for s in (10, 11, 12)])
    sel = rd.select_best(qwen, batch, PROMPT, top_k=2, frames_per_video=4, num_frames=2)
    want = qwen.score(videos=[_clip(batch[4 * i : 4 * i + 4][[0, 3]]) for i in range(3)], prompts=PROMPT).p_yes
    assert sel.scores == pytest.approx(want.tolist(), abs=1e-6) and sel.passed
    order = sorted(range(3), key=lambda i: -sel.scores[i])
    assert sel.indices == order[:2]
    assert torch.equal(sel.images, torch.cat([batch[4 * i : 4 * i + 4] for i in order[:2]]))
    wan = {"samples": torch.arange(3.0).view(3, 1, 1, 1, 1).expand(3, 16, 2, 4, 5).clone()}
    assert rd.slice_latent(wan, sel.indices, 3, 4)["samples"][:, 0, 0, 0, 0].tolist() == [float(i) for i in order[:2]]
    per_frame = {"samples": torch.arange(12.0).view(12, 1, 1, 1).expand(12, 4, 4, 5).clone()}
    rows = [float(4 * i + t) for i in order[:2] for t in range(4)]
    assert rd.slice_latent(per_frame, sel.indices, 3, 4)["samples"][:, 0, 0, 0].tolist() == rows
    mask = torch.arange(12.0).view(12, 1, 1).expand(12, 32, 40).clone()
    assert rd.slice_mask(mask, sel.indices, 3, 4)[:, 0, 0].tolist() == rows
    with pytest.raises(NodeInputError, match="latent batch 5 matches neither the 3 videos nor their 12 frames"):
        rd.slice_latent({"samples": torch.zeros(5, 4, 4, 5)}, sel.indices, 3, 4)
    with pytest.raises(NodeInputError, match="top_k = 4 but the batch holds 3 videos"):
        rd.select_best(qwen, batch, PROMPT, top_k=4, frames_per_video=4)
    tour = rd.select_best(qwen, batch, PROMPT, top_k=1, mode="tournament", frames_per_video=4, num_frames=2)
    assert len(tour.scores) == 3 and tour.images.shape == (4, 32, 40, 3)
    assert not rd.select_best(qwen, batch, PROMPT, threshold=0.999, frames_per_video=4, num_frames=2).passed


class _VideoJudge:
    """Records what it was asked; a brighter video is better."""

    def __init__(self):
        self.calls = []

    def score(self, images=None, prompts=None, context=None, references=None, videos=None, num_frames=None):
        self.calls.append({"images": images, "videos": videos, "num_frames": num_frames, "context": context})
        items = videos if videos is not None else images
        return type("Out", (), {"p_yes": torch.stack([x.mean() for x in items])})()


def test_guided_sampler_decodes_5d_latents_and_judges_videos(qwen):
    """A video model's host: latents [1, 16, T', 4, 4] (Wan), decoded to [1, T, H, W, 3]. Best-of-N and the search
    judge videos (videos=, at most JUDGE_FRAMES frames), keep the 5-D latent and return the best video's frames;
    with a real judge the scores are score(videos=...). A video VAE's single frame (T = 1) is an image."""
    steps, sigmas = 4, torch.tensor([4.0, 2.0, 1.0, 0.5, 0.0])
    latent = torch.zeros(1, 16, 3, 4, 4)

    def run(x, noise_seed, lo, hi, add_noise):
        return x + (noise_seed % 5) * 0.1 + (hi - lo) * 0.001

    def decode(x):  # 3 latent frames -> 9 frames, as Wan's 4x temporal VAE would (1 + 4 * 2)
        level = x.mean().clamp(0, 1)
        ramp = torch.linspace(0, 0.2, 9).view(1, 9, 1, 1, 1)
        return (level * 0.7 + ramp).expand(1, 9, 32, 40, 3).clone()

    judge = _VideoJudge()
    res = rd.guided_sample("best_of_n", run, None, decode, latent, judge, PROMPT, 2, steps, 3)
    assert res.seeds == [2, 3, 4] and res.latent.shape == (1, 16, 3, 4, 4) and res.image.shape == (9, 32, 40, 3)
    assert max(range(3), key=lambda i: res.scores[i]) == 2 and res.latent.mean().item() == pytest.approx(0.4 + 0.004)
    call = judge.calls[0]
    assert call["images"] is None and call["videos"][0].shape == (9, 3, 32, 40) and call["num_frames"] == 8

    judge.calls.clear()
    res = rd.guided_sample(
        "search_over_paths",
        run,
        lambda x, s: x * 0.5,
        decode,
        latent,
        judge,
        PROMPT,
        0,
        steps,
        6,
        sigmas=sigmas,
    )
    assert res.image.shape == (9, 32, 40, 3) and res.latent.ndim == 5
    assert judge.calls and all(c["videos"] is not None and c["images"] is None for c in judge.calls)

    real = rd.guided_sample("best_of_n", run, None, decode, latent, qwen, PROMPT, 0, steps, 2)
    clips = [_clip(decode(run(latent, s, 0, steps, True))[0]) for s in (0, 1)]
    assert real.scores == pytest.approx(qwen.score(videos=clips, prompts=PROMPT, num_frames=8).p_yes.tolist(), abs=1e-6)
    with pytest.raises(NodeInputError, match="cannot compare them with a reference image"):
        rd.guided_sample(
            "best_of_n",
            run,
            None,
            decode,
            latent,
            qwen,
            PROMPT,
            0,
            steps,
            1,
            context=rd.make_context(reference=_frames(1)),
        )

    judge.calls.clear()  # Qwen-Image style: a video VAE decoding one frame
    res = rd.guided_sample("best_of_n", run, None, lambda x: decode(x)[:, :1], latent, judge, PROMPT, 0, steps, 2)
    assert res.image.shape == (1, 32, 40, 3) and judge.calls[0]["videos"] is None
    assert judge.calls[0]["images"].shape == (1, 3, 32, 40)


def test_guided_sampler_judge_frames_sets_the_frames_the_judge_sees(qwen):
    """judge_frames: how many frames of each decoded video the judge sees, in best-of-N and in the search (capped at
    the video's 9 frames); a real judge's scores are score(videos=..., num_frames=judge_frames). Images ignore it;
    a judge_frames below 1 or not a whole number is refused, naming the input."""
    steps, sigmas = 4, torch.tensor([4.0, 2.0, 1.0, 0.5, 0.0])
    latent = torch.zeros(1, 16, 3, 4, 4)

    def run(x, noise_seed, lo, hi, add_noise):
        return x + (noise_seed % 5) * 0.1 + (hi - lo) * 0.001

    def decode(x):  # 9 frames whose brightness follows the latent
        ramp = torch.linspace(0, 0.2, 9).view(1, 9, 1, 1, 1)
        return (x.mean().clamp(0, 1) * 0.7 + ramp).expand(1, 9, 32, 40, 3).clone()

    judge = _VideoJudge()
    for given, seen in [(3, 3), (20, 9)]:
        judge.calls.clear()
        rd.guided_sample("best_of_n", run, None, decode, latent, judge, PROMPT, 0, steps, 2, judge_frames=given)
        assert [c["num_frames"] for c in judge.calls] == [seen, seen]
    judge.calls.clear()

    def renoise(x, s):
        return x * 0.5

    rd.guided_sample(
        "search_over_paths", run, renoise, decode, latent, judge, PROMPT, 0, steps, 6, sigmas, judge_frames=2
    )
    assert judge.calls and {c["num_frames"] for c in judge.calls} == {2}

    real = rd.guided_sample("best_of_n", run, None, decode, latent, qwen, PROMPT, 0, steps, 2, judge_frames=3)
    clips = [_clip(decode(run(latent, s, 0, steps, True))[0]) for s in (0, 1)]
    assert real.scores == pytest.approx(qwen.score(videos=clips, prompts=PROMPT, num_frames=3).p_yes.tolist(), abs=1e-6)
    default = qwen.score(videos=clips, prompts=PROMPT, num_frames=8).p_yes.tolist()
    assert real.scores != pytest.approx(default, abs=1e-6), "3 and 8 frames should score apart"

    judge.calls.clear()  # an image model: judge_frames changes nothing

    def image(x):  # one frame [1, H, W, 3]
        return decode(x)[:, 0]

    res = rd.guided_sample("best_of_n", run, None, image, latent, judge, PROMPT, 0, steps, 2, judge_frames=3)
    assert res.image.shape == (1, 32, 40, 3) and all(c["videos"] is None for c in judge.calls)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(NodeInputError, match=r"^judge_frames must be a positive number of frames, got"):
            rd.guided_sample("best_of_n", run, None, decode, latent, judge, PROMPT, 0, steps, 2, judge_frames=bad)


def test_frame_rate_lets_an_image_batch_sample_by_fps_as_a_video_does(llava):
    """Two 12-frame videos in one IMAGE batch with frame_rate 6, sampled at 2 frames per second: frames 0, 4, 7, 11
    of each, and the scores, sorted frames and frame times equal those of the same frames as VIDEOs at 6 fps. The
    notes line names the rate and its source; a VIDEO's own rate wins over a different frame_rate (said in the
    notes); a negative, infinite or NaN frame_rate is refused."""
    frames = torch.cat([_frames(12, seed=20), _frames(12, seed=21)])
    scores, ordered, table = rv.score_videos(llava, frames, PROMPT, frames_per_video=12, fps=2.0, frame_rate=6.0)
    want = llava.score(videos=[_clip(frames[:12][[0, 4, 7, 11]]), _clip(frames[12:][[0, 4, 7, 11]])], prompts=PROMPT)
    assert scores == pytest.approx(want.p_yes.tolist(), abs=1e-6) and abs(scores[0] - scores[1]) > 1e-4
    rows = table.splitlines()
    assert [r.split("  ")[-1] for r in rows[1:3]] == ["4 of 12 (0-11) 0.00-1.83 s"] * 2
    assert rows[-1] == "frame rate: video: 6 fps (the frame_rate input)"
    as_video = rv.score_videos(llava, _Video(frames, 6), PROMPT, frames_per_video=12, fps=2.0)
    assert as_video[0] == scores and torch.equal(as_video[1], ordered)
    assert as_video[2].splitlines()[:-1] == rows[:-1]
    assert as_video[2].splitlines()[-1] == "frame rate: video: 6 fps (the VIDEO's own)"

    # a VIDEO's rate wins: at 30 fps 2 frames per second would keep 1 frame of 12, at 6 fps 4
    got = rv.score_videos(llava, _Video(frames, 6), PROMPT, frames_per_video=12, fps=2.0, frame_rate=30.0)
    assert got[0] == scores and got[2].splitlines()[:-1] == rows[:-1]
    assert got[2].splitlines()[-1].endswith("6 fps (the VIDEO's own); frame_rate 30 differs and is not used")
    assert rv.score_videos(llava, frames[:12], PROMPT, num_frames=3)[2].count("frame rate") == 0  # unknown: no line

    # Compare Videos: the IMAGE side takes frame_rate, the VIDEO side keeps its own
    p, _, details = rv.compare_videos(llava, frames[:12], _Video(frames[12:], 6), PROMPT, fps=2.0, frame_rate=6.0)
    a, b = _clip(frames[:12][[0, 4, 7, 11]]), _clip(frames[12:][[0, 4, 7, 11]])
    assert p == pytest.approx(llava.compare(videos=[b], references=[a], prompts=PROMPT).p_yes.tolist(), abs=1e-6)
    rates = "frame rate: video_a: 6 fps (the frame_rate input); video_b: 6 fps (the VIDEO's own)"
    assert details.splitlines()[-1] == rates
    for bad in (-1.0, float("inf"), float("nan"), True):
        with pytest.raises(NodeInputError, match=r"^frame_rate must be"):
            rv.score_videos(llava, frames, PROMPT, frames_per_video=12, fps=2.0, frame_rate=bad)
    with pytest.raises(NodeInputError, match=r"^frame_rate must be"):
        rv.compare_videos(llava, frames[:12], frames[12:], PROMPT, frame_rate=-6.0)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_a_known_frame_rate_reaches_a_judge_that_reads_time(rm_cache, family, tmp_path):
    """Qwen2.5-VL spaces its temporal positions by the frames' timing, Qwen3-VL writes it into the prompt. Two
    12-frame videos in an IMAGE batch with frame_rate 6, sampled at 2 fps (frames 0, 4, 7, 11), score as
    score(videos=<the same frames as 6 fps mp4 files>, fps=2); so do num_frames 4 (the same frames, the same rate),
    the videos as VIDEOs at 6 fps, Compare Videos, and a served judge (from_server). Without a rate the same frames
    score as bare frames, differently."""
    pytest.importorskip("av")
    from rewarddance.serving import create_app
    from rewarddance.testing.serve import serve_in_thread

    rm = rm_cache(family)
    frames = torch.cat([_frames(12, seed=30), _frames(12, seed=31)])
    files = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    write_video(files[0], frames[:12].permute(0, 3, 1, 2), 6)
    write_video(files[1], frames[12:].permute(0, 3, 1, 2), 6)
    want = rm.score(videos=files, prompts=PROMPT, fps=2)
    assert [v.indices for v in want.videos] == [(0, 4, 7, 11)] * 2 and want.videos[0].source_fps == 6
    scores, _, table = rv.score_videos(rm, frames, PROMPT, frames_per_video=12, fps=2.0, frame_rate=6.0)
    assert scores == pytest.approx(want.p_yes.tolist(), abs=1e-5)
    by_count = rv.score_videos(rm, frames, PROMPT, frames_per_video=12, num_frames=4, frame_rate=6.0)[0]
    as_video = rv.score_videos(rm, _Video(frames, 6), PROMPT, frames_per_video=12, fps=2.0)[0]
    assert by_count == pytest.approx(scores, abs=1e-6) and as_video == pytest.approx(scores, abs=1e-6)
    bare = rv.score_videos(rm, frames, PROMPT, frames_per_video=12, num_frames=4)[0]
    kept = [_clip(frames[:12][[0, 4, 7, 11]]), _clip(frames[12:][[0, 4, 7, 11]])]
    assert bare == pytest.approx(rm.score(videos=kept, prompts=PROMPT).p_yes.tolist(), abs=1e-6)
    assert max(abs(x - y) for x, y in zip(bare, scores)) > 1e-4, "the frame rate should change the scores"

    p, _, _ = rv.compare_videos(rm, frames[:12], frames[12:], PROMPT, fps=2.0, frame_rate=6.0)
    pref = rm.prefer(videos=([files[0]], [files[1]]), prompts=PROMPT, fps=2)
    assert p == pytest.approx(pref.p_b_better.tolist(), abs=1e-5)
    p_bare = rv.compare_videos(rm, frames[:12], frames[12:], PROMPT, num_frames=4)[0]
    assert abs(p[0] - p_bare[0]) > 1e-5, "the frame rate should change the comparison"

    with serve_in_thread(create_app(rm, model_name=family)) as url:
        remote = RewardModel.from_server(url)
        served = rv.score_videos(remote, frames, PROMPT, frames_per_video=12, fps=2.0, frame_rate=6.0)
        assert served[0] == pytest.approx(scores, abs=1e-4) and served[2] == table
