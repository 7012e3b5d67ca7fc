"""Videos in the reward model: decoding and sampling, the native video path against the stock processor, frames as
images, the context check, bad files and gradients (rewarddance.video)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rewarddance import RewardContext
from rewarddance.preprocess import video_inputs
from rewarddance.video import VideoError, VideoTooLongError, load_video, write_video
from rewarddance.video import messages as video_messages

av = pytest.importorskip("av")

PROMPTS = ["a red circle moves left", "two blue squares"]


def _clips(B=2, T=5, H=40, W=52, seed=0) -> torch.Tensor:
    """Random frames on the uint8 grid (k / 255), so the stock processor sees exactly the same pixels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, T, 3, H, W), generator=g).float() / 255.0


def _stock(rm, texts, videos=None, images=None, **kw):
    """P(yes) and margin from the stock processor (``kw``: its further arguments) and the full model's logits."""
    inputs = rm.processor(text=texts, videos=videos, images=images, padding=True, return_tensors="pt", **kw)
    with torch.no_grad():
        logp = rm.model(**inputs).logits[:, -1].float().log_softmax(-1)
    yes, no = rm.verdict_ids(RewardContext())
    lp_yes, lp_no = logp[:, yes].logsumexp(-1), logp[:, no].logsumexp(-1)
    return lp_yes.exp(), lp_yes - lp_no, inputs


def _texts(rm, parts_for_candidate, context=None, prompts=PROMPTS):
    """The text of ``context`` (the default for videos: task video_alignment) with the candidate video replaced by
    ``parts_for_candidate`` (written out here, independently of rewarddance.video)."""
    context = context or RewardContext(task="video_alignment")
    texts = []
    for p in prompts:
        msgs = context.messages(p, False, video=True)
        content = msgs[-1]["content"]
        k = max(i for i, part in enumerate(content) if part["type"] == "video")
        content[k : k + 1] = parts_for_candidate
        texts.append(rm.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
    return texts


def test_qwen2_vl_scores_videos_as_the_stock_video_path_does(rm_cache):
    """Qwen2-VL takes the clip as one video: temporal patches and video_grid_thw from the stock processor, the
    model's own M-RoPE positions; score(videos=) equals that computation."""
    rm = rm_cache("qwen2_vl")
    clips = _clips(T=5)
    out = rm.score(videos=clips, prompts=PROMPTS)
    uint8 = [(c * 255).round().to(torch.uint8) for c in clips]
    p, m, inputs = _stock(rm, _texts(rm, [{"type": "video"}]), videos=uint8)
    assert inputs["video_grid_thw"][:, 0].tolist() == [3, 3]  # 5 frames -> 3 temporal patches of 2
    torch.testing.assert_close(out.p_yes, p, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.margin, m, atol=1e-5, rtol=0)
    assert abs(float(out.margin[0] - out.margin[1])) > 1e-3, "the two videos should score differently"
    assert [s.indices for s in out.videos] == [tuple(range(5))] * 2


def _seen(rm, monkeypatch) -> list[dict]:
    """Every input the backbone is run on from now on (the rate reaches the model, not only the processor)."""
    seen, forward = [], rm.hidden_states
    monkeypatch.setattr(rm, "hidden_states", lambda inputs: seen.append(dict(inputs)) or forward(inputs))
    return seen


def test_qwen2_5_vl_is_told_the_rate_of_the_sampled_frames(rm_cache, tmp_path, monkeypatch):
    """Qwen2.5-VL spaces its temporal M-RoPE positions by second_per_grid_ts = temporal_patch_size / the rate of the
    frames it is given. Known source rate: kept / source frames x source rate (qwen-vl-utils' sample_fps): 4 of 12
    frames at 6 fps are 2 fps (1 s per temporal patch), 4 of 10 at 10 fps are 4 fps (0.5 s). Tokens, pixels, grid,
    timing and scores equal the stock processor told those rates; the same frames without a rate keep the
    processor's default and score differently."""
    from rewarddance.video import Clip, FrameSample

    rm = rm_cache("qwen2_5_vl")
    frames = (_clips(B=2, T=12, H=40, W=52, seed=21) * 255).round().to(torch.uint8)
    write_video(tmp_path / "a.mp4", frames[0].permute(0, 2, 3, 1).numpy(), fps=6)
    a = load_video(tmp_path / "a.mp4", fps=2)
    b = Clip(frames[1][[0, 3, 6, 9]].float() / 255, FrameSample("b", (0, 3, 6, 9), 10, 10.0))
    assert a.sample.indices == (0, 4, 7, 11)
    seen = _seen(rm, monkeypatch)
    out = rm.score(videos=[a, b], prompts=PROMPTS)
    u8 = [frames[0][list(a.sample.indices)], frames[1][[0, 3, 6, 9]]]
    rates = [{"fps": 2.0, "total_num_frames": 4}, {"fps": 4.0, "total_num_frames": 4}]  # the frames as given
    p, m, stock = _stock(rm, _texts(rm, [{"type": "video"}]), videos=u8, video_metadata=rates)
    ours = seen[-1]
    for key in ("input_ids", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        torch.testing.assert_close(torch.as_tensor(ours[key]), torch.as_tensor(stock[key]), msg=key)
    torch.testing.assert_close(torch.as_tensor(ours["second_per_grid_ts"]).float(), torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(out.p_yes, p, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.margin, m, atol=1e-5, rtol=0)
    file_score = rm.score(videos=tmp_path / "a.mp4", prompts=PROMPTS[0], fps=2)  # the file itself, sampled alike
    torch.testing.assert_close(file_score.p_yes, out.p_yes[:1], atol=1e-5, rtol=0)
    assert file_score.videos[0].source_fps == 6

    bare = rm.score(videos=torch.stack(u8).float() / 255, prompts=PROMPTS)  # no rate: the processor's default
    p0, m0, stock0 = _stock(rm, _texts(rm, [{"type": "video"}]), videos=u8)
    torch.testing.assert_close(torch.as_tensor(seen[-1]["second_per_grid_ts"]), stock0["second_per_grid_ts"])
    torch.testing.assert_close(bare.margin, m0, atol=1e-5, rtol=0)
    assert [v.source_fps for v in bare.videos] == [None, None]
    assert (bare.margin - out.margin).abs().min() > 1e-4, "the timing should change the scores"


def test_a_frames_family_scores_videos_as_consecutive_images(rm_cache):
    """LLaVA has no video input: the sampled frames go in as images, one image slot each."""
    rm = rm_cache("llava")
    clips = _clips(T=6, seed=1)
    out = rm.score(videos=clips, prompts=PROMPTS, num_frames=3)
    frames = [[Image.fromarray((f * 255).round().byte().permute(1, 2, 0).numpy()) for f in c[[0, 2, 5]]] for c in clips]
    p, m, _ = _stock(rm, _texts(rm, [{"type": "image"}] * 3), images=frames)
    torch.testing.assert_close(out.p_yes, p, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.margin, m, atol=1e-5, rtol=0)
    assert out.videos[0].indices == (0, 2, 5)


def test_the_input_forms_agree(rm_cache, tmp_path):
    """A [B, T, 3, H, W] tensor, a list of [T, 3, H, W] tensors, lists of PIL frames, a folder of PNG frames and a
    lossless mp4 of the same frames give the same scores."""
    rm = rm_cache("qwen2_vl")
    clips = _clips(B=2, T=4, H=32, W=48, seed=2)
    arrays = [(c * 255).round().byte().permute(0, 2, 3, 1).numpy() for c in clips]  # [T, H, W, 3]
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, f in enumerate(arrays[0]):  # frame10 sorts after frame9 by number, not by name
        Image.fromarray(f).save(folder / f"frame{k * 5}.png")
    write_video(tmp_path / "clip.mp4", arrays[1], fps=6)
    ref = rm.score(videos=clips, prompts=PROMPTS).margin
    forms = {
        "list of tensors": list(clips),
        "frame lists": [[Image.fromarray(f) for f in a] for a in arrays],
        "files": [folder, tmp_path / "clip.mp4"],
    }
    for name, videos in forms.items():
        torch.testing.assert_close(rm.score(videos=videos, prompts=PROMPTS).margin, ref, atol=1e-5, rtol=0, msg=name)


def test_an_mp4_decodes_to_its_frames_and_samples_by_count_and_by_fps(tmp_path):
    """12 frames at 6 fps, frame k of grey level 20 k: the right frames are kept, their indices and times kept."""
    levels = np.arange(12) * 20
    frames = np.broadcast_to(levels[:, None, None, None], (12, 48, 64, 3)).astype(np.uint8).copy()
    path = tmp_path / "grey.mp4"
    write_video(path, frames, fps=6)
    every = load_video(path)
    assert every.frames.shape == (12, 3, 48, 64) and every.sample.source_fps == 6
    assert every.sample.indices == tuple(range(12))
    for kwargs, indices in [({"num_frames": 4}, (0, 4, 7, 11)), ({"fps": 2}, (0, 4, 7, 11)), ({"fps": 1}, (0, 11))]:
        clip = load_video(path, **kwargs)
        assert clip.sample.indices == indices, kwargs
        assert clip.sample.timestamps == tuple(i / 6 for i in indices)
        means = clip.frames.mean(dim=(1, 2, 3)) * 255
        torch.testing.assert_close(means, torch.tensor(levels[list(indices)], dtype=torch.float32), atol=1, rtol=0)
    with pytest.raises(VideoError, match=r"grey\.mp4: num_frames=13 but the video has only 12 frames"):
        load_video(path, num_frames=13)


def test_too_many_frames_for_the_context_names_the_video(rm_cache, monkeypatch):
    """A frames-as-images family: the frame count is checked against the context, and the error names the video."""
    rm = rm_cache("llava")
    clips = _clips(B=1, T=4, H=28, W=28, seed=3)[0]
    fits = rm.score(videos=[clips[:3]], prompts=PROMPTS[0])  # three frames: measure that prompt's length
    msgs = video_messages(RewardContext(task="video_alignment"), PROMPTS[0], False, [3])
    texts = rm.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    n3 = rm.processor(text=[texts], images=[[Image.new("RGB", (28, 28))] * 3], return_tensors="pt")["input_ids"].shape[
        1
    ]
    monkeypatch.setattr(rm, "max_length", n3)
    assert len(fits) == 1
    rm.score(videos=[clips[:3]], prompts=PROMPTS[0])  # exactly at the limit: fine
    with pytest.raises(VideoTooLongError) as err:
        rm.score(videos=[clips[:3], clips], prompts=PROMPTS)
    assert str(err.value).startswith("videos[1]: with 4 frames the prompt is") and "\n" not in str(err.value)


def test_a_corrupt_or_truncated_file_in_a_batch_is_named(rm_cache, tmp_path):
    rm = rm_cache("llava")
    frames = (np.random.default_rng(0).random((6, 32, 32, 3)) * 255).astype(np.uint8)
    good = tmp_path / "good.mp4"
    write_video(good, frames, fps=6)
    garbage, cut = tmp_path / "garbage.mp4", tmp_path / "cut.webm"
    garbage.write_bytes(b"\x00not a video at all" * 50)
    cut.write_bytes(good.read_bytes()[:200])
    for bad in (garbage, cut):
        with pytest.raises(VideoError) as err:
            rm.score(videos=[good, bad], prompts="a red circle", num_frames=2)
        assert str(err.value).startswith(f"{bad}: ") and "\n" not in str(err.value)


def test_bad_video_arguments_are_refused_by_name():
    clip = _clips(B=1, T=3)[0]
    with pytest.raises(VideoError, match=r"videos\[0\]: sampling by fps needs the video's frame rate"):
        load_video(clip, name="videos[0]", fps=2)
    with pytest.raises(VideoError, match=r"clip: frame 1 is \(8, 8\) but frame 0 is \(40, 52\)"):
        load_video([clip[0], torch.rand(3, 8, 8)], name="clip")
    with pytest.raises(VideoError, match="empty: the video has no frames"):
        load_video(torch.rand(0, 3, 8, 8), name="empty")
    with pytest.raises(ValueError, match="num_frames and fps: give one of them"):
        load_video(clip, num_frames=2, fps=1)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "llava_onevision"])
def test_torch_video_preprocessing_matches_the_stock_video_processor(tiny_vlm, family):
    """rewarddance.preprocess.video_inputs gives the stock processor's video grid exactly and its pixel values
    within a few uint8 levels (the stock path rounds to uint8 after resizing; ours keeps floats for gradients)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm(family))
    if family.startswith("qwen"):  # room for more than one merged patch per frame, less than 5 frames' worth
        unit = processor.video_processor.patch_size * 2
        processor.video_processor.size = {"shortest_edge": unit * unit, "longest_edge": unit * unit * 6}
    clips = list(_clips(B=2, T=5, H=45, W=61, seed=4))
    got = video_inputs(processor, clips, family)
    uint8 = [(c * 255).round().to(torch.uint8) for c in clips]
    want = processor.video_processor(videos=uint8, do_sample_frames=False, return_tensors="pt")
    if "video_grid_thw" in want:
        assert torch.equal(got["video_grid_thw"], want["video_grid_thw"])
    assert got["pixel_values_videos"].shape == want["pixel_values_videos"].shape
    std = min(processor.video_processor.image_std)
    assert (got["pixel_values_videos"] - want["pixel_values_videos"]).abs().max() < 2.5 / 255 / std


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_the_video_reward_has_gradients_for_the_sampled_frames(rm_cache, family):
    """reward(videos=) reaches the frames it samples (and no others), and agrees with score(videos=)."""
    rm = rm_cache(family)
    clips = _clips(B=2, T=5, seed=5).requires_grad_(True)
    r = rm.reward(videos=clips, prompts=PROMPTS, num_frames=3, output="margin")
    r.sum().backward()
    per_frame = clips.grad.abs().sum(dim=(2, 3, 4))  # [B, T]
    assert (per_frame[:, [0, 2, 4]] > 0).all() and (per_frame[:, [1, 3]] == 0).all()
    scored = rm.score(videos=clips.detach(), prompts=PROMPTS, num_frames=3).margin
    torch.testing.assert_close(r.detach(), scored, atol=0.05, rtol=0)


# ---------------------------------------------------------------------------------------------------- context
VIDEO_TASKS = ("video_alignment", "video_quality", "video_motion", "video_physics")


def _stock_texts(rm, context, prompt, n_videos, frames=None):
    """The chat text of ``context`` for one item, its video slots (``n_videos``, reference first) as one video part
    each or ``frames`` image parts each: the layout a reader expects, built here from the messages."""
    msgs = context.messages(prompt, n_videos == 2, video=True)
    content = msgs[-1]["content"]
    slots = [k for k, part in enumerate(content) if part["type"] == "video"]
    assert len(slots) == n_videos
    if frames is not None:
        for k in reversed(slots):
            content[k : k + 1] = [{"type": "image"}] * frames
    return rm.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def test_video_presets_ask_about_videos_and_are_refused_for_images(rm_cache):
    """Each video task's questions name videos (pointwise "Video:", pairwise "Video 1" / "Video 2"), its score is
    the stock computation of that text, and the tasks differ; an image batch under a video task is refused."""
    rm = rm_cache("qwen2_vl")
    clip = _clips(B=1, T=4, seed=6)
    margins = []
    for task in VIDEO_TASKS:
        ctx = RewardContext(task=task)
        point = ctx.messages(PROMPTS[0], False, video=True)[-1]["content"]
        pair = ctx.messages(PROMPTS[0], True, video=True)[-1]["content"]
        texts = " ".join(p.get("text", "") for p in point)
        assert "video" in point[-1]["text"].lower() and "image" not in texts.lower(), task
        assert [p["type"] for p in point].count("video") == 1 and "Video: " in texts, task
        assert "video 2" in pair[-1]["text"] and "video 1" in pair[-1]["text"], task
        assert [p["type"] for p in pair].count("video") == 2, task
        out = rm.score(videos=clip, prompts=PROMPTS[0], context=ctx)
        uint8 = [(clip[0] * 255).round().to(torch.uint8)]
        p, m, _ = _stock(rm, [_stock_texts(rm, ctx, PROMPTS[0], 1)], videos=uint8)
        torch.testing.assert_close(out.margin, m, atol=1e-5, rtol=0, msg=task)
        margins.append(float(m))
    assert len({round(m, 4) for m in margins}) == len(VIDEO_TASKS), "each task asks a different question"
    img = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="task 'video_motion' judges videos: give them as videos="):
        rm.score(img, PROMPTS[0], context=RewardContext(task="video_motion"))
    with pytest.raises(ValueError, match="first_frame: image-to-video context needs a video task"):
        RewardContext(task="alignment", first_frame=img[0])


def test_pairwise_with_a_reference_video_in_both_orders(rm_cache):
    """compare(videos=, references=): "Video 1" is the reference, "Video 2" the candidate, as the stock processor
    computes it; average_orders averages with the swapped question as images do."""
    rm = rm_cache("qwen2_vl")
    cands, ref = _clips(B=2, T=4, seed=7), _clips(B=1, T=4, seed=8)[0]
    ctx = RewardContext(task="video_motion")
    out = rm.compare(videos=cands, references=ref, prompts=PROMPTS[0], context=ctx)
    u8 = lambda c: (c * 255).round().to(torch.uint8)  # noqa: E731
    text = _stock_texts(rm, ctx, PROMPTS[0], 2)
    p, m, _ = _stock(rm, [text, text], videos=[u8(ref), u8(cands[0]), u8(ref), u8(cands[1])])
    torch.testing.assert_close(out.p_yes, p, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.margin, m, atol=1e-5, rtol=0)
    p_sw, m_sw, _ = _stock(rm, [text, text], videos=[u8(cands[0]), u8(ref), u8(cands[1]), u8(ref)])
    both = rm.compare(
        videos=cands,
        references=[ref],
        prompts=PROMPTS[0],
        context=RewardContext(task="video_motion", average_orders=True),
    )
    torch.testing.assert_close(both.p_yes, (p + 1 - p_sw) / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(both.margin, (m - m_sw) / 2, atol=1e-5, rtol=0)


def test_image_to_video_shows_the_first_frame_before_the_video(rm_cache):
    """context.first_frame: the conditioning image sits before the video in the prompt, the question asks whether
    the video starts from it; the score is the stock computation and depends on that image; reward() agrees."""
    rm = rm_cache("qwen2_vl")
    clips = _clips(B=2, T=4, seed=9)
    g = torch.Generator().manual_seed(10)
    first, other = (torch.randint(0, 256, (3, 40, 52), generator=g).float() / 255 for _ in range(2))
    ctx = RewardContext(task="video_alignment", first_frame=first)
    content = ctx.messages(PROMPTS[0], False, video=True)[-1]["content"]
    assert [p["type"] for p in content if p["type"] != "text"] == ["image", "video"]
    assert "start from the given image" in content[-1]["text"]
    out = rm.score(videos=clips, prompts=PROMPTS, context=ctx)
    texts = [_stock_texts(rm, ctx, p, 1) for p in PROMPTS]
    pil = Image.fromarray((first * 255).round().byte().permute(1, 2, 0).numpy())
    uint8 = [(c * 255).round().to(torch.uint8) for c in clips]
    p, m, _ = _stock(rm, texts, videos=uint8, images=[[pil], [pil]])
    torch.testing.assert_close(out.margin, m, atol=1e-5, rtol=0)
    swapped = rm.score(videos=clips, prompts=PROMPTS, context=RewardContext(task="video_alignment", first_frame=other))
    assert (swapped.margin - out.margin).abs().max() > 1e-3, "the first frame should change the score"
    per_video = RewardContext(task="video_alignment", first_frame=[first, other])
    mixed = rm.score(videos=clips, prompts=PROMPTS, context=per_video).margin
    torch.testing.assert_close(mixed, torch.stack([out.margin[0], swapped.margin[1]]), atol=1e-5, rtol=0)
    r = rm.reward(videos=clips, prompts=PROMPTS, context=ctx, output="margin")
    torch.testing.assert_close(r, out.margin, atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="first_frame: got 3 images for 2 videos"):
        rm.score(videos=clips, prompts=PROMPTS, context=RewardContext(task="video_alignment", first_frame=[first] * 3))


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
@pytest.mark.parametrize("pairwise", [False, True])
def test_candidate_videos_share_one_prefix_and_score_as_unshared(rm_cache, family, pairwise, monkeypatch):
    """N candidate videos of one prompt: the instructions, the first frame and any reference video run once as a
    prefix (Qwen2-VL: native video; LLaVA: frames as images), each candidate in its suffix; the scores equal the
    item-by-item computation within 1e-5."""
    rm = rm_cache(family)
    cands, ref = _clips(B=3, T=3, H=32, W=40, seed=11), _clips(B=1, T=3, H=32, W=40, seed=12)[0]
    first = _clips(B=1, T=1, H=32, W=40, seed=13)[0, 0]
    ctx = RewardContext(task="video_alignment", first_frame=first)
    kwargs = dict(videos=cands, prompts=PROMPTS[0], context=ctx, references=ref if pairwise else None)
    before = dict(rm.stats)
    shared = rm.score(**kwargs)
    assert rm.stats["prefix_cached_items"] - before["prefix_cached_items"] == 3
    assert rm.stats["plain_items"] == before["plain_items"]
    monkeypatch.setattr(rm, "prefix_cache", False)
    plain = rm.score(**kwargs)
    assert rm.stats["plain_items"] - before["plain_items"] == 3
    torch.testing.assert_close(shared.p_yes, plain.p_yes, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.margin, plain.margin, atol=1e-5, rtol=0)
    assert shared.margin.std() > 1e-3, "the candidates should score differently"


@pytest.mark.parametrize("pairwise", [False, True])
def test_qwen2_5_vl_shares_the_prefix_with_the_videos_timing(rm_cache, pairwise, monkeypatch):
    """Qwen2.5-VL, candidates of known and different frame rates (and a reference of its own rate): the shared
    prefix gives each video its own time spacing, and scores as item by item within 1e-5; the rates matter."""
    from rewarddance.video import Clip, FrameSample

    rm = rm_cache("qwen2_5_vl")
    frames = _clips(B=4, T=4, H=32, W=40, seed=23)
    idx = (0, 3, 6, 9)
    cands = [Clip(frames[k], FrameSample(f"c{k}", idx, 10, rate)) for k, rate in enumerate((2.0, 5.0, 12.0))]
    ref = Clip(frames[3], FrameSample("ref", idx, 10, 3.0))
    ctx = RewardContext(task="video_alignment", first_frame=_clips(B=1, T=1, H=32, W=40, seed=24)[0, 0])
    kwargs = dict(prompts=PROMPTS[0], context=ctx, references=ref if pairwise else None)
    before = dict(rm.stats)
    shared = rm.score(videos=cands, **kwargs)
    assert rm.stats["prefix_cached_items"] - before["prefix_cached_items"] == 3
    monkeypatch.setattr(rm, "prefix_cache", False)
    plain = rm.score(videos=cands, **kwargs)
    torch.testing.assert_close(shared.p_yes, plain.p_yes, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.margin, plain.margin, atol=1e-5, rtol=0)
    untimed = rm.score(videos=frames[:3], **dict(kwargs, references=frames[3] if pairwise else None))
    assert (untimed.margin - plain.margin).abs().max() > 1e-4, "the rates should change the scores"


@pytest.mark.parametrize("pairwise", [False, True])
def test_llava_onevision_videos_share_the_prefix_before_the_candidate(rm_cache, pairwise, monkeypatch):
    """LLaVA-OneVision takes videos natively (each a run of pooled per-frame features and one newline token): the
    instruction, the first frame and any reference video run once as a prefix that stops where the candidate's
    video block starts; suffixes of candidates of two frame counts go in batches of one shape. P(yes) and margin
    equal unshared scoring within 1e-5."""
    from rewarddance import prefix

    rm = rm_cache("llava_onevision")
    short, long = _clips(B=2, T=3, H=32, W=40, seed=25), _clips(B=1, T=5, H=32, W=40, seed=26)
    # the stock processor stacks one item's videos: a reference and its candidate must have one frame count
    cands = [short[0], short[1]] if pairwise else [short[0], long[0], short[1]]
    ref = _clips(B=1, T=3, H=32, W=40, seed=27)[0]
    ctx = RewardContext(task="video_alignment", first_frame=_clips(B=1, T=1, H=32, W=40, seed=28)[0, 0])
    kwargs = dict(videos=cands, prompts=PROMPTS[0], context=ctx, references=ref if pairwise else None, batch_size=2)
    prefills, run_prefill = [], prefix.prefill
    monkeypatch.setattr(prefix, "prefill", lambda m, inputs: prefills.append(inputs) or run_prefill(m, inputs))
    before = dict(rm.stats)
    shared = rm.score(**kwargs)
    assert rm.stats["prefix_cached_items"] - before["prefix_cached_items"] == len(cands)
    assert rm.stats["plain_items"] == before["plain_items"]
    assert len(prefills) == 1, "one prefix pass for the whole group"
    ids = prefills[0]["input_ids"][0]
    video_id = rm.tokenizer.convert_tokens_to_ids(rm.processor.video_token)
    assert rm.tokenizer.decode(ids[-12:]).endswith("Video 2: " if pairwise else "Video: ")
    assert int((ids == video_id).sum()) == (3 + 1 if pairwise else 0)  # the reference: 3 frames x 1 pooled + newline
    assert prefills[0]["pixel_values"].shape[0] == 1  # the first frame
    assert ("pixel_values_videos" in prefills[0]) == pairwise
    monkeypatch.setattr(rm, "prefix_cache", False)
    plain = rm.score(**kwargs)
    torch.testing.assert_close(shared.p_yes, plain.p_yes, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.margin, plain.margin, atol=1e-5, rtol=0)
    assert shared.margin.std() > 1e-3, "the candidates should score differently"


def test_prefer_takes_two_batches_of_videos(rm_cache):
    """prefer(videos=(a, b)): pairwise is compare() with a as the reference video; pointwise is Bradley-Terry on the
    two videos' own scores; a side of one video is paired with every video of the other."""
    rm = rm_cache("llava")
    a, b = _clips(B=1, T=3, H=28, W=28, seed=14)[0], _clips(B=2, T=3, H=28, W=28, seed=15)
    ctx = RewardContext(task="video_quality")
    pair = rm.prefer(videos=(a, b), prompts=PROMPTS[0], context=ctx, objective="pairwise")
    cmp = rm.compare(videos=b, references=a, prompts=PROMPTS[0], context=ctx)
    torch.testing.assert_close(pair.margin, cmp.margin, atol=1e-5, rtol=0)
    point = rm.prefer(videos=(a, b), prompts=PROMPTS, context=ctx, objective="pointwise")
    m_a = rm.score(videos=[a, a], prompts=PROMPTS, context=ctx).margin  # pair i: a under prompt i
    m_b = rm.score(videos=b, prompts=PROMPTS, context=ctx).margin
    torch.testing.assert_close(point.margin, m_b - m_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(point.p_b_better, torch.sigmoid(m_b - m_a), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"videos: prefer\(\) takes a pair of video batches"):
        rm.prefer(videos=b, prompts=PROMPTS[0])
    with pytest.raises(ValueError, match=r"videos\[0\] has 2 videos and videos\[1\] 3"):
        rm.prefer(videos=(b, _clips(B=3, T=3, H=28, W=28)), prompts=PROMPTS[0])
