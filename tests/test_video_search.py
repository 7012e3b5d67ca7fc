"""Inference-time scaling on tiny video pipelines (Wan 2.1 / 2.2, CogVideoX, LTX-Video; their image-to-video ones)
with a tiny Qwen2-VL judge that takes clips natively: best-of-N returns the best clip with the judge's own score,
the level-by-level sampler reproduces each text-to-video and image-to-video pipeline, search over paths and
tournaments judge clips, and the guidance callback steers a video pipeline's own loop (rewarddance.search, .guidance,
.video_pipelines)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from rewarddance import RewardContext
from rewarddance.guidance import RewardGuidanceCallback, check_pipeline, run_guided
from rewarddance.pipelines import (
    PipelineError,
    Sampler,
    SamplerConfig,
    decompose,
    levels,
    pipeline_family,
    renoise,
)
from rewarddance.search import best_of_n, search_cost, search_over_paths, tournament
from rewarddance.testing.tiny_video import DEFAULT_CALL, build_tiny_video_pipeline

PROMPT = "a red circle moves left"
FRAMES = DEFAULT_CALL["num_frames"]  # 9 frames of 32 x 32
JUDGE = 4  # frames the judge sees
T2V = ["wan", "wan22", "cogvideox", "ltx"]
I2V = ["wan_i2v", "cogvideox_i2v", "ltx_i2v"]
COG_CHANNELS = 4  # the tiny CogVideoX's latent channels; its image-to-video sampler's latents carry the image's after


@pytest.fixture(scope="module")
def pipes():
    built = {}

    def get(kind):
        if kind == "wan_i2v":  # diffusers 0.42's Wan image-to-video cleans prompts with ftfy unconditionally
            pytest.importorskip("ftfy")
        if kind not in built:
            built[kind] = build_tiny_video_pipeline(kind)
        return built[kind]

    return get


@pytest.fixture(scope="module")
def rm(rm_cache):
    return rm_cache("qwen2_vl")  # Qwen2-VL takes a clip as one video (temporal patches, M-RoPE)


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(0)
    return Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy())


def _kw(kind, image=None, steps=2):
    kw = dict(DEFAULT_CALL, num_inference_steps=steps, guidance_scale=3.0)
    if kind in I2V:
        kw["image"] = image
    return kw


# ------------------------------------------------------------------------------------------------- best-of-N
@pytest.mark.parametrize("kind", T2V + I2V)
def test_best_of_n_returns_the_best_clip_with_the_judges_score(pipes, rm, image, kind):
    pipe = pipes(kind)
    kw = _kw(kind, image)
    res = best_of_n(pipe, rm, PROMPT, n=3, seed=4, batch_size=3, judge_frames=JUDGE, **kw)
    assert len(res.images) == 3 and all(c.shape == (FRAMES, 3, 32, 32) for c in res.images)
    assert res.order[0] == int(torch.argmax(res.scores)) and res.rm_calls == 1
    assert len(set(res.scores.tolist())) == 3, "the clips should score differently"
    # the judge's own score of the winning clip, on the same frames (image-to-video: shown the image first)
    context = RewardContext(task="video_alignment", first_frame=image) if kind in I2V else None
    direct = rm.score(videos=[res.best], prompts=PROMPT, context=context, num_frames=JUDGE)
    assert abs(float(direct.p_yes[0]) - float(res.scores[res.order[0]])) < 1e-5
    assert direct.videos[0].indices == (0, 3, 5, 8)  # 4 of 9 frames, first and last included
    # the seed regenerates the winner
    regen = pipe(
        prompt=PROMPT, generator=[torch.Generator().manual_seed(res.best_seed)], output_type="pt", **kw
    ).frames[0]
    assert (regen - res.best).abs().max() < 1e-5


def test_best_of_n_with_a_callable_that_returns_clips(rm):
    """A generator callable's ``[B, T, 3, H, W]`` tensor (or channels-last arrays) is scored as clips."""

    def generate(prompt, seeds):  # 5 flat frames per clip, getting brighter; the level depends on the seed
        ramp = torch.linspace(0, 0.5, 5).view(5, 1, 1, 1)
        return torch.stack([(ramp + (s % 4) / 8).expand(5, 3, 32, 32) for s in seeds])

    res = best_of_n(generate, rm, PROMPT, n=4, batch_size=2, judge_frames=3)
    assert res.images[0].shape == (5, 3, 32, 32) and res.rm_calls == 2
    direct = rm.score(videos=res.images, prompts=PROMPT, num_frames=3).p_yes
    assert torch.allclose(direct, res.scores, atol=1e-5) and res.order[0] == int(torch.argmax(res.scores))
    channels_last = best_of_n(lambda p, seeds: generate(p, seeds).permute(0, 1, 3, 4, 2).numpy(), rm, PROMPT, n=4)
    assert torch.allclose(
        channels_last.scores, rm.score(videos=res.images, prompts=PROMPT, num_frames=5).p_yes, atol=1e-5
    )


# ------------------------------------------------------------------------------------------------- the sampler
@pytest.mark.parametrize("kind", T2V)
def test_the_sampler_reproduces_each_text_to_video_pipeline(pipes, kind):
    """Level by level, the sampler gives the pipeline's own latents and clip for a seed (Wan 2.2: both experts, the
    boundary falls between steps 2 and 3; CogVideoX: v-prediction DDIM with zero terminal SNR; LTX: packed tokens)."""
    pipe = pipes(kind)
    kw = _kw(kind, steps=4)
    ref = pipe(PROMPT, generator=[torch.Generator().manual_seed(7)], output_type="latent", **kw).frames
    sampler = Sampler(pipe, PROMPT, SamplerConfig(**kw))
    x = sampler.initial_latents([7])
    for k in range(4):
        x, _ = sampler.step(x, k)
    assert (x - ref).abs().max() < 1e-4 * (1 + ref.abs().max())
    clip = pipe(PROMPT, generator=[torch.Generator().manual_seed(7)], output_type="pt", **kw).frames
    decoded = sampler.decode(x)
    assert decoded.shape == (1, FRAMES, 3, 32, 32) and (decoded - clip).abs().max() < 1e-4
    assert sampler.evaluations == 4
    if kind == "cogvideox":  # zero terminal SNR: level 0 is pure noise, and re-noising to it keeps the latents
        assert sampler.levels[0] == (0.0, 1.0)
        assert torch.equal(renoise(x, sampler.levels[0], sampler.levels[0], torch.Generator().manual_seed(0)), x)
    if kind == "wan22":  # the timesteps straddle the experts' boundary (0.875 * 1000): both experts ran
        ts = [float(t) for t in sampler.timesteps]
        assert ts[0] >= 875 > ts[-1]


def _wan_i2v_variant(pipe, variant):
    """The tiny Wan image-to-video pipeline as Wan 2.1 I2V (a CLIP image encoder whose embeddings the transformer
    reads) or Wan 2.2 TI2V (``expand_timesteps``: the first latent frame is the image's, at timestep 0)."""
    import diffusers
    from diffusers import WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    clip = variant == "wan21_i2v"
    torch.manual_seed(1)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36 if clip else 16,
        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=8 if clip else None,
        added_kv_proj_dim=24 if clip else None,
    ).eval()  # fmt: skip
    parts = {k: v for k, v in pipe.components.items() if k not in ("transformer", "image_encoder", "image_processor")}
    if not clip:
        out = diffusers.WanImageToVideoPipeline(**parts, transformer=transformer, expand_timesteps=True)
    else:
        vision = CLIPVisionConfig(hidden_size=8, projection_dim=8, intermediate_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, image_size=32, patch_size=8)  # fmt: skip
        encoder, processor = CLIPVisionModelWithProjection(vision).eval(), CLIPImageProcessor(crop_size=32, size=32)
        out = diffusers.WanImageToVideoPipeline(
            **parts, transformer=transformer, image_encoder=encoder, image_processor=processor
        )
    out.set_progress_bar_config(disable=True)
    return out


def _cogvideox10_i2v(pipe):
    """The tiny CogVideoX image-to-video pipeline as CogVideoX 1.0 (5b-I2V): no temporal patches (so no padded latent
    frame), no ofs embedding, learned positional embeddings besides the 3-D RoPE."""
    import diffusers
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(1)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=8,
        text_embed_dim=32, num_layers=1, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=16, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=True,
    ).eval()  # fmt: skip
    out = diffusers.CogVideoXImageToVideoPipeline(**{**pipe.components, "transformer": transformer})
    out.set_progress_bar_config(disable=True)
    return out


def _i2v_pipe(pipes, kind):
    if kind in I2V:
        return pipes(kind)
    if kind == "cogvideox10_i2v":
        return _cogvideox10_i2v(pipes("cogvideox_i2v"))
    return _wan_i2v_variant(pipes("wan_i2v"), kind)


@pytest.mark.parametrize("kind", I2V + ["wan21_i2v", "wan_ti2v", "cogvideox10_i2v"])
def test_the_sampler_reproduces_each_image_to_video_pipeline(pipes, image, kind):
    """Level by level, with the image conditioning prepared as each pipeline's call does (Wan: mask and image latents
    on the channels, Wan 2.1 also CLIP embeddings; LTX and Wan 2.2 TI2V: the first latent frame pinned to the image's
    latents at timestep 0; CogVideoX 1.5 / 1.0: the image's latents, sampled with the seed's generator, then blank
    frames, on the channels, pinned there), the sampler gives the pipeline's own latents and clip for a seed; a batch
    of two prompts with an image each gives each row the pipeline's call of its own."""
    pipe = _i2v_pipe(pipes, kind)
    cog = kind.startswith("cogvideox")

    def trim(y):  # the pipeline's own latents (CogVideoX: without the image's latents on the channels)
        return y[:, :, :COG_CHANNELS] if cog else y

    kw = _kw("wan", steps=3)
    g = torch.Generator().manual_seed(1)
    other = Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy())

    def own(prompt, img, seed, output_type):
        one = [img] if kind == "ltx_i2v" else img  # (LTX-Video encodes one image per generator)
        gen = [torch.Generator().manual_seed(seed)]
        return pipe(prompt=prompt, image=one, generator=gen, output_type=output_type, **kw).frames

    sampler = Sampler(pipe, PROMPT, SamplerConfig(image=image, **kw))
    with torch.no_grad():
        x = sampler.initial_latents([7])
        for k in range(3):
            x, _ = sampler.step(x, k)
        decoded = sampler.decode(x)
    ref = own(PROMPT, image, 7, "latent")
    assert (trim(x) - ref).abs().max() < 1e-4 * (1 + ref.abs().max())
    assert decoded.shape == (1, FRAMES, 3, 32, 32) and (decoded - own(PROMPT, image, 7, "pt")).abs().max() < 1e-4
    if cog:  # CogVideoX 1.5 pads 3 latent frames to its temporal patch of 2, in front; 1.0 does not
        assert ref.shape[1] == (4 if kind == "cogvideox_i2v" else 3) and x.shape[2] == 2 * COG_CHANNELS
        # 3 "trailing" steps of 1000 are uneven: DDIM lands at 333 and reads the latents there at timestep 332
        assert [int(t) for t in sampler.timesteps] == [999, 666, 332]
        assert sampler.levels[2] != sampler.model_levels[2]
    pinned = kind in ("ltx_i2v", "wan_ti2v") or cog
    assert (sampler.pinned is not None) == pinned
    batch = Sampler(pipe, [PROMPT, "a blue square jumps"], SamplerConfig(image=[image, other], **kw))
    with torch.no_grad():
        xs = batch.initial_latents([7, 8])
        for k in range(3):
            xs, _ = batch.step(xs, k)
    second = own("a blue square jumps", other, 8, "latent")
    assert (trim(xs)[0] - ref[0]).abs().max() < 1e-4 * (1 + ref.abs().max())
    assert (trim(xs)[1] - second[0]).abs().max() < 1e-4 * (1 + second.abs().max())
    if pinned:  # re-noising moves every latent but the image's, which pin puts back
        lv = sampler.levels
        noisy = sampler.pin(renoise(x, lv[3], lv[1], torch.Generator().manual_seed(0)), x)
        assert torch.equal(noisy[sampler.pinned.expand_as(x)], x[sampler.pinned.expand_as(x)])
        assert (noisy - x).abs().max() > 0.1


@pytest.mark.parametrize("kind", ["cogvideox", "cogvideox_i2v"])
def test_the_sampler_reproduces_cogvideox_dynamic_guidance(pipes, image, kind):
    """``use_dynamic_cfg``: each step's guidance scale follows CogVideoX's schedule (:func:`dynamic_guidance` at the
    step's timestep, as its pipelines compute it); the sampler gives the pipeline's own latents and clip, which differ
    from those of a constant scale."""
    from rewarddance.video_pipelines import dynamic_guidance

    pipe = pipes(kind)
    kw = _kw(kind, image, steps=4)

    def own(dynamic, output_type="latent"):
        gen = [torch.Generator().manual_seed(5)]
        return pipe(prompt=PROMPT, generator=gen, output_type=output_type, use_dynamic_cfg=dynamic, **kw).frames

    sampler = Sampler(pipe, PROMPT, SamplerConfig(use_dynamic_cfg=True, **kw))
    with torch.no_grad():
        x = sampler.initial_latents([5])
        for k in range(4):
            x, _ = sampler.step(x, k)
        decoded = sampler.decode(x)
    ref = own(True)
    assert (x[:, :, :COG_CHANNELS] - ref).abs().max() < 1e-4 * (1 + ref.abs().max())
    assert (decoded - own(True, "pt")).abs().max() < 1e-4
    assert (own(False) - ref).abs().max() > 1e-2  # the schedule changes the clip
    scales = [dynamic_guidance(3.0, int(t), 4) for t in sampler.timesteps]
    assert all(1.0 <= g <= 4.0 for g in scales) and max(abs(g - 3.0) for g in scales) > 0.1


def test_cogvideox_dpm_scheduler_is_refused_with_the_reason(pipes, rm):
    """CogVideoXDPMScheduler (what CogVideoX 1.5 and 5B ship) adds fresh noise from the call's generator at every step,
    with eta 0 too, and its second-order update reads the step before's x0: no level-by-level ``(x0, e)`` step gives
    its samples, so the sampler, the search and the guidance callback refuse it, naming CogVideoXDDIMScheduler, which
    on the DPM scheduler's config lies on the same noise levels."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXPipeline

    cog = pipes("cogvideox")
    dpm = CogVideoXPipeline(**{**cog.components, "scheduler": CogVideoXDPMScheduler.from_config(cog.scheduler.config)})
    dpm.set_progress_bar_config(disable=True)
    kw = _kw("cogvideox", steps=4)
    start = torch.randn(1, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0))  # [B, F, C, h, w]

    def run(seed):  # the same starting latents; the generator only feeds the steps' noise
        gen = torch.Generator().manual_seed(seed)
        return dpm(PROMPT, latents=start, generator=gen, eta=0.0, output_type="latent", **kw).frames

    assert torch.equal(run(1), run(1)) and (run(1) - run(2)).abs().max() > 0.1
    why = "CogVideoXDPMScheduler is not supported here: its step adds fresh noise whatever eta.*CogVideoXDDIMScheduler"
    with pytest.raises(PipelineError, match=why):
        Sampler(dpm, PROMPT, SamplerConfig(**kw))
    with pytest.raises(PipelineError, match=why):
        check_pipeline(dpm)
    with pytest.raises(PipelineError, match=why):
        search_over_paths(dpm, rm, PROMPT, n=1, m=1, num_inference_steps=4, config=SamplerConfig(**kw))
    ddim = CogVideoXPipeline(
        **{**cog.components, "scheduler": CogVideoXDDIMScheduler.from_config(dpm.scheduler.config)}
    )
    sampler = Sampler(ddim, PROMPT, SamplerConfig(**kw))
    dpm.scheduler.set_timesteps(4)
    assert dpm.scheduler.timesteps.tolist() == sampler.timesteps.tolist()
    want = [float(dpm.scheduler.alphas_cumprod[int(t)]) for t in dpm.scheduler.timesteps]
    assert max(abs(a * a - w) for (a, _), w in zip(sampler.model_levels, want)) < 1e-6


@pytest.mark.parametrize("kind", ["wan", "cogvideox", "ltx"])
def test_callback_x0_equals_the_denoiser_prediction(pipes, kind):
    pipe = pipes(kind)
    seen = {}

    def grab(p, i, t, kw):
        seen[i] = kw["latents"].clone()
        return {}

    kw = _kw(kind, steps=4)
    pipe(PROMPT, generator=[torch.Generator().manual_seed(3)], output_type="latent", callback_on_step_end=grab, **kw)
    lv = levels(pipe.scheduler)
    sampler = Sampler(pipe, PROMPT, SamplerConfig(**kw))
    for i in (1, 2):
        x0, _ = decompose(seen[i - 1], seen[i], lv[i], lv[i + 1])
        want, _ = sampler.predict(seen[i - 1], i)
        assert (x0 - want).abs().max() < 1e-4 * (1 + want.abs().max())


# ------------------------------------------------------------------------------------- search and tournament
@pytest.mark.parametrize("kind", ["wan", "cogvideox", "ltx"])
def test_search_over_paths_on_a_video_pipeline(pipes, rm, kind):
    pipe = pipes(kind)
    kw = _kw(kind, steps=4)
    config = SamplerConfig(**kw)
    settings = dict(n=2, m=2, num_inference_steps=4, start=1, forward=1, backward=2, seed=3, judge_frames=JUDGE)
    res = search_over_paths(pipe, rm, PROMPT, config=config, **settings)
    assert res.images.shape == (2, FRAMES, 3, 32, 32)
    rounds = [(1, 0, 2), (2, 1, 3), (3, 2, 4)]
    assert res.evaluations == search_cost(4, 2, 2, 1, rounds) and len(res.history) == 3
    assert res.rm_calls == 4 and res.rm_images == 3 * 4 + 2
    direct = rm.score(videos=list(res.images), prompts=PROMPT, num_frames=JUDGE).p_yes
    assert torch.allclose(direct, res.scores, atol=1e-5) and res.scores[0] >= res.scores[1]
    for h in res.history:
        assert [h["scores"][i] for i in h["kept"]] == sorted(h["scores"], reverse=True)[:2]
    again = search_over_paths(pipe, rm, PROMPT, config=config, **settings)
    assert torch.equal(again.images, res.images)


@pytest.mark.parametrize("kind", ["ltx_i2v", "cogvideox_i2v"])
def test_search_over_paths_on_an_image_to_video_pipeline(pipes, rm, image, monkeypatch, kind):
    """Image-to-video: every path, re-noised ones too, keeps the image's latents (each start seed draws its own) in
    its first latent frame (LTX-Video) or on its channels (CogVideoX), and the judge is shown the image as each clip's
    first frame."""
    from rewarddance.video_pipelines import VideoSampler

    pipe = pipes(kind)
    config = SamplerConfig(**_kw("ltx", steps=4))
    decoded = []
    real_decode = VideoSampler.decode
    monkeypatch.setattr(VideoSampler, "decode", lambda self, x0: decoded.append(x0) or real_decode(self, x0))
    settings = dict(n=2, m=2, num_inference_steps=4, start=1, forward=1, backward=2, seed=3, judge_frames=JUDGE)
    res = search_over_paths(pipe, rm, PROMPT, config=config, image=image, **settings)
    assert res.images.shape == (2, FRAMES, 3, 32, 32) and len(res.history) == 3

    def held(x):  # LTX-Video: the tokens of the first latent frame; CogVideoX: the image's channels
        return x[: 8 * 8] if kind == "ltx_i2v" else x[:, COG_CHANNELS:]

    starts = Sampler(pipe, PROMPT, SamplerConfig(image=image, **_kw("ltx", steps=4))).initial_latents([3, 4])
    assert len(decoded) == 4  # the x0 predictions of 3 rounds, then the final paths
    for x0 in torch.cat(decoded):
        assert any(torch.equal(held(x0), held(s)) for s in starts)  # the image's latents of a start seed
    shown = RewardContext(task="video_alignment", first_frame=image)
    direct = rm.score(videos=list(res.images), prompts=PROMPT, context=shown, num_frames=JUDGE).p_yes
    assert torch.allclose(direct, res.scores, atol=1e-5)
    plain = rm.score(videos=list(res.images), prompts=PROMPT, num_frames=JUDGE).p_yes
    assert not torch.allclose(plain, res.scores, atol=1e-4)  # (the first frame changes the judge's question)
    again = search_over_paths(pipe, rm, PROMPT, config=SamplerConfig(image=image, **_kw("ltx", steps=4)), **settings)
    assert torch.equal(again.images, res.images)  # the image through config.image: the same search


def test_tournament_compares_clips_in_both_orders(pipes, rm):
    clips = pipes("wan")([PROMPT] * 3, generator=[torch.Generator().manual_seed(s) for s in range(3)], output_type="pt",
                         **_kw("wan")).frames  # fmt: skip
    res = tournament(clips, rm, PROMPT, top_k=1, judge_frames=JUDGE)  # a [B, T, 3, H, W] tensor
    assert sorted(res.ranking) == [0, 1, 2] and res.rm_calls == 1 and len(res.matches) == 3
    for i, j, p_j in res.matches:  # P(j beats i) from the judge directly, both orders averaged
        one = rm.compare(videos=[clips[j]], references=[clips[i]], prompts=PROMPT, num_frames=JUDGE).p_yes
        two = rm.compare(videos=[clips[i]], references=[clips[j]], prompts=PROMPT, num_frames=JUDGE).p_yes
        assert abs(p_j - (float(one[0]) + 1 - float(two[0])) / 2) < 1e-5
    assert tournament(list(clips), rm, PROMPT, judge_frames=JUDGE).matches == res.matches  # a list of clips


# ------------------------------------------------------------------------------------------- guidance callback
@pytest.mark.parametrize("kind", ["wan", "cogvideox", "ltx"])
def test_guidance_prunes_a_video_batch_to_its_best_clip(pipes, rm, kind):
    """Pruning at the last step to the best of 3 paths: every clip becomes the best one (flow matching and
    CogVideoX's DDIM both end at x0 exactly), which the judge scores as the callback did, and differs from the
    unguided batch."""
    pipe = pipes(kind)
    steps = 3
    kw = _kw(kind, steps=steps)
    prompts = [PROMPT] * 3  # CogVideoX makes one clip per prompt; the callback groups rows by prompt
    cb = RewardGuidanceCallback(rm, prompts, steps=[steps - 1], mode="prune", keep=1, refresh=0.0, judge_frames=JUDGE)
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    out = run_guided(pipe, prompts, cb, generator=gens, output_type="pt", **kw).frames
    plain = pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in range(3)], output_type="pt", **kw).frames
    assert cb.rm_calls == 1 and cb.images_scored == 3
    scores = cb.history[0]["scores"]
    best = max(range(3), key=scores.__getitem__)
    assert cb.history[0]["ancestors"] == [best] * 3
    assert torch.allclose(out, plain[best].expand_as(out), atol=1e-4)  # the best clip, three times
    assert (out - plain).abs().amax(dim=(1, 2, 3, 4)).max() > 1e-3  # the others were replaced
    final = rm.score(videos=list(out), prompts=PROMPT, num_frames=JUDGE).p_yes
    assert torch.allclose(final, torch.full((3,), scores[best]), atol=1e-4)


def test_guidance_keeps_the_conditioning_frame_of_image_to_video(pipes, rm, image):
    """LTX-Video image-to-video pins its first latent frame to the image's latents: copies that get fresh noise keep
    it."""
    pipe = pipes("ltx_i2v")
    kw = _kw("ltx_i2v", image, steps=3)
    kw["image"] = [image] * 3  # the pipeline encodes one image per generator
    cb = RewardGuidanceCallback(rm, [PROMPT] * 3, steps=[1], mode="prune", keep=1, refresh=1.0, judge_frames=JUDGE)
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    out = run_guided(pipe, [PROMPT] * 3, cb, generator=gens, output_type="latent", **kw).frames  # [B, S, C]
    plain = pipe(prompt=[PROMPT] * 3, generator=[torch.Generator().manual_seed(s) for s in range(3)], output_type="latent",
                 **kw).frames  # fmt: skip
    best = max(range(3), key=cb.history[0]["scores"].__getitem__)
    assert cb.history[0]["ancestors"] == [best] * 3
    first = 8 * 8  # the tokens of the first latent frame (32 x 32 pixels, 4x spatial compression)
    # each row drew its own VAE sample of the image; the copies carry the best path's, untouched by the fresh noise
    assert torch.equal(out[:, :first], plain[best, :first].expand(3, -1, -1))
    assert (out[1:, first:] - out[:1, first:]).abs().max() > 1e-3  # the rest of each copy got fresh noise


def test_guidance_shows_the_image_to_an_image_to_video_judge(pipes, image):
    """run_guided gives an image-to-video call without a context the image as the judge's first frame."""
    seen = []

    class Judge:
        def score(self, images=None, prompts=None, context=None, videos=None, num_frames=None):
            seen.append((context, len(videos), num_frames))
            from rewarddance.model import RewardOutput

            return RewardOutput(p_yes=torch.linspace(0.1, 0.9, len(videos)), margin=torch.zeros(len(videos)))

    pipe = pipes("ltx_i2v")
    kw = _kw("ltx_i2v", image, steps=3)
    kw["image"] = [image] * 2
    cb = RewardGuidanceCallback(Judge(), [PROMPT] * 2, steps=[1], mode="prune", keep=1, judge_frames=JUDGE)
    gens = [torch.Generator().manual_seed(s) for s in range(2)]
    run_guided(pipe, [PROMPT] * 2, cb, generator=gens, output_type="latent", **kw)
    context, n, frames = seen[0]
    assert context.task == "video_alignment" and context.first_frame is kw["image"] and (n, frames) == (2, JUDGE)


# ------------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_named(pipes, rm, image):
    from diffusers import UniPCMultistepScheduler, WanPipeline

    wan = pipes("wan")
    unipc = WanPipeline(**{**wan.components, "scheduler": UniPCMultistepScheduler()})
    with pytest.raises(PipelineError, match="UniPCMultistepScheduler"):
        check_pipeline(unipc)
    odd = WanPipeline(**{**wan.components, "transformer": torch.nn.Linear(2, 2)})
    with pytest.raises(PipelineError, match="WanPipeline is not supported.*its denoiser is a Linear"):
        pipeline_family(odd)
    with pytest.raises(PipelineError, match="WanPipeline is not supported"):
        RewardGuidanceCallback(rm, PROMPT)(odd, 0, 999, {"latents": torch.zeros(1, 16, 3, 4, 4)})
    with pytest.raises(PipelineError, match="LTXImageToVideoPipeline is an image-to-video pipeline: give its"):
        search_over_paths(pipes("ltx_i2v"), rm, PROMPT, n=1, m=1, num_inference_steps=2, config=SamplerConfig())
    with pytest.raises(ValueError, match="image: a list needs one image per prompt"):
        Sampler(pipes("ltx_i2v"), [PROMPT] * 2, SamplerConfig(image=[image] * 3, **_kw("ltx")))
    with pytest.raises(PipelineError, match="image: WanPipeline is a text-to-video pipeline"):
        Sampler(wan, PROMPT, SamplerConfig(image=image, **_kw("wan")))
    with pytest.raises(PipelineError, match="use_dynamic_cfg: WanPipeline has no dynamic guidance"):
        Sampler(wan, PROMPT, SamplerConfig(use_dynamic_cfg=True, **_kw("wan")))
    with pytest.raises(PipelineError, match="CogVideoXImageToVideoPipeline is an image-to-video pipeline: give its"):
        Sampler(pipes("cogvideox_i2v"), PROMPT, SamplerConfig(**_kw("cogvideox")))
    ltx = pipes("ltx")
    cb = RewardGuidanceCallback(rm, PROMPT, steps=[1])
    kw = _kw("ltx", steps=2)
    with pytest.raises(PipelineError, match="needs height, width and num_frames"):  # called directly, no sizes
        ltx(PROMPT, callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["latents"], **kw)
    with pytest.raises(ValueError, match=r"generated video 0: expected a \[T, 3, H, W\] tensor"):
        best_of_n(lambda p, seeds: [torch.rand(5, 32, 32, 3) for _ in seeds], rm, PROMPT, n=1)
    with pytest.raises(ValueError, match="judge_frames must be a positive integer or None, got 0"):
        best_of_n(wan, rm, PROMPT, n=1, judge_frames=0, **_kw("wan"))
