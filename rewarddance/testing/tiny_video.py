"""Tiny random text-to-video and image-to-video pipelines of real diffusers architectures, built offline.

The video counterpart of :mod:`rewarddance.testing.tiny_diffusion`: every component comes from a small config, as in
diffusers' own fast pipeline tests, but nothing is downloaded. The text encoders are T5 (UMT5 for Wan) encoders of
32 channels, and their tokenizer is a T5-style unigram (sentencepiece) tokenizer trained here on a fixed corpus
(pad id 0, ``</s>`` appended). The clips they draw are noise; tests use them to run the pipelines' own code paths.

Kinds, each at 32 x 32 pixels and 9 frames (3 latent frames) by default (:data:`DEFAULT_CALL`):

- ``wan``: ``WanPipeline`` as in Wan 2.1 (one ``WanTransformer3DModel``, ``AutoencoderKLWan``);
- ``wan22``: ``WanPipeline`` as in Wan 2.2 A14B (two experts split at ``boundary_ratio``);
- ``wan_i2v``: ``WanImageToVideoPipeline`` as in Wan 2.2 A14B I2V (the image enters as VAE latents, no CLIP);
- ``cogvideox``: ``CogVideoXPipeline`` (``CogVideoXTransformer3DModel`` with 3-D RoPE, ``AutoencoderKLCogVideoX``,
  ``CogVideoXDDIMScheduler`` with v-prediction and zero terminal SNR, as CogVideoX-5b ships);
- ``cogvideox_i2v``: ``CogVideoXImageToVideoPipeline`` as in CogVideoX 1.5 I2V (latent and image channels into the
  transformer, temporal patches of 2, ``ofs`` embeddings), with the ``cogvideox`` kind's scheduler in place of the
  ``CogVideoXDPMScheduler`` that 1.5 ships (the level-by-level sampler drives DDIM only);
- ``ltx``: ``LTXPipeline`` (``LTXVideoTransformer3DModel``, ``AutoencoderKLLTXVideo``);
- ``ltx_i2v``: ``LTXImageToVideoPipeline`` on the same components.

    python -m rewarddance.testing.tiny_video wan ./tiny-wan     # save_pretrained, loadable with DiffusionPipeline
"""

from __future__ import annotations

import sys

import torch

KINDS = ("wan", "wan22", "wan_i2v", "cogvideox", "cogvideox_i2v", "ltx", "ltx_i2v")
# the call arguments that suit every tiny pipeline: small frames, few tokens, few steps
DEFAULT_CALL = dict(height=32, width=32, num_frames=9, max_sequence_length=16)
_CORPUS = (
    "a photo video of a red circle and a blue square left of a green triangle above a yellow cat dog "
    "sitting on two three four purple orange white black shapes in a room with light moves left right up down "
    "slowly quickly jumps turns dance monkey"
).split()
TEXT_DIM = 32  # the text encoders' width, which every transformer here reads


def t5_tokenizer(max_length: int = 32):
    """A T5-style unigram (sentencepiece) tokenizer written out here: every corpus word is one piece (``▁word``), and
    single characters cover anything else; Metaspace pre-tokenizer, ``</s>`` appended, ``<pad>`` = 0, ``</s>`` = 1,
    ``<unk>`` = 2 (T5's ids); ``max_length`` becomes ``model_max_length``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    words = sorted(set(_CORPUS))
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -8.0)]
    vocab += [("\u2581" + w, -2.0) for w in words] + [(c, -10.0) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=max_length,
    )


def _text_encoder(tokenizer, umt5: bool, seed: int):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    kw = dict(
        vocab_size=len(tokenizer),
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if umt5:
        return UMT5EncoderModel(UMT5Config(**kw)).eval()
    return T5EncoderModel(T5Config(**kw)).eval()


def _wan_transformer(in_channels: int, seed: int):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=1,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()


def _wan(kind: str, seed: int):
    import diffusers
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    tok = t5_tokenizer()
    common = dict(
        tokenizer=tok,
        text_encoder=_text_encoder(tok, umt5=True, seed=seed),
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )
    if kind == "wan_i2v":  # noise (16) + first-frame mask (4) + image latents (16) channels in, as Wan 2.2 I2V
        return diffusers.WanImageToVideoPipeline(transformer=_wan_transformer(36, seed), **common)
    if kind == "wan22":
        return diffusers.WanPipeline(
            transformer=_wan_transformer(16, seed),
            transformer_2=_wan_transformer(16, seed + 1),
            boundary_ratio=0.875,
            **common,
        )
    return diffusers.WanPipeline(transformer=_wan_transformer(16, seed), **common)


def _cogvideox(kind: str, seed: int):
    import diffusers
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    i2v = kind == "cogvideox_i2v"  # CogVideoX 1.5 I2V: image latents on the channels, temporal patches, ofs
    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,  # 3-D RoPE splits a head into time / height / width parts
        in_channels=8 if i2v else 4,
        out_channels=4,
        time_embed_dim=8,
        ofs_embed_dim=8 if i2v else None,  # added to the time embedding: the same width
        patch_size_t=2 if i2v else None,
        text_embed_dim=TEXT_DIM,
        num_layers=1,
        sample_width=4,  # latent units: 32 pixels
        sample_height=4,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=16,
        use_rotary_positional_embeddings=True,
    ).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    ).eval()
    scheduler = CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        snr_shift_scale=1.0,
        timestep_spacing="trailing",
    )
    tok = t5_tokenizer()
    cls = diffusers.CogVideoXImageToVideoPipeline if i2v else diffusers.CogVideoXPipeline
    return cls(
        tokenizer=tok,
        text_encoder=_text_encoder(tok, umt5=False, seed=seed),
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )


def _ltx(kind: str, seed: int):
    import diffusers
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        num_layers=1,
        caption_channels=TEXT_DIM,
    ).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    ).eval()
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    tok = t5_tokenizer()
    cls = diffusers.LTXImageToVideoPipeline if kind == "ltx_i2v" else diffusers.LTXPipeline
    return cls(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=_text_encoder(tok, umt5=False, seed=seed),
        tokenizer=tok,
        transformer=transformer,
    )


def build_tiny_video_pipeline(kind: str = "wan", seed: int = 0):
    """A tiny random video pipeline of ``kind`` (one of :data:`KINDS`) on the CPU in float32, its progress bar off.
    Call it with :data:`DEFAULT_CALL` (32 x 32 pixels, 9 frames, 16 text tokens) and a few steps."""
    if kind not in KINDS:
        raise ValueError(f"kind: choose one of {', '.join(KINDS)}, got {kind!r}")
    if kind.startswith("wan"):
        pipe = _wan(kind, seed)
    elif kind.startswith("cogvideox"):
        pipe = _cogvideox(kind, seed)
    else:
        pipe = _ltx(kind, seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in KINDS:
        print(f"usage: python -m rewarddance.testing.tiny_video {{{','.join(KINDS)}}} OUT_DIR", file=sys.stderr)
        return 2
    build_tiny_video_pipeline(argv[0]).save_pretrained(argv[1])
    print(argv[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
