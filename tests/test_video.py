"""Videos in the reward model: decoding and sampling, the native video path against the stock processor, frames as
images, the context check, bad files and gradients (rewarddance.video)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rewarddance import RewardContext
from rewarddance.preprocess import video_inputs
from rewarddance.video import VideoError, VideoTooLongError, load_video
from rewarddance.video import messages as video_messages

av = pytest.importorskip("av")

PROMPTS = ["a red circle moves left", "two blue squares"]


def _clips(B=2, T=5, H=40, W=52, seed=0) -> torch.Tensor:
    """Random frames on the uint8 grid (k / 255), so the stock processor sees exactly the same pixels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, T, 3, H, W), generator=g).float() / 255.0


def _write_mp4(path, frames: np.ndarray, fps: int = 6) -> None:
    """``frames`` uint8 [T, H, W, 3] -> a lossless H.264 (RGB) mp4."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264rgb", rate=fps, options={"crf": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())


def _stock(rm, texts, videos=None, images=None):
    """P(yes) and margin from the stock processor and the full model's logits."""
    inputs = rm.processor(text=texts, videos=videos, images=images, padding=True, return_tensors="pt")
    with torch.no_grad():
        logp = rm.model(**inputs).logits[:, -1].float().log_softmax(-1)
    yes, no = rm.verdict_ids(RewardContext())
    lp_yes, lp_no = logp[:, yes].logsumexp(-1), logp[:, no].logsumexp(-1)
    return lp_yes.exp(), lp_yes - lp_no, inputs


def _texts(rm, parts_for_candidate):
    """The default context's text with the candidate image replaced by ``parts_for_candidate`` (written out here,
    independently of rewarddance.video)."""
    texts = []
    for p in PROMPTS:
        msgs = RewardContext().messages(p, False)
        content = msgs[-1]["content"]
        k = max(i for i, part in enumerate(content) if part["type"] == "image")
        content[k - 1] = {"type": "text", "text": content[k - 1]["text"].replace("Image", "Video")}
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
    _write_mp4(tmp_path / "clip.mp4", arrays[1])
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
    _write_mp4(path, frames, fps=6)
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
    msgs = video_messages(RewardContext(), PROMPTS[0], False, [3])
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
    _write_mp4(good, frames)
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
