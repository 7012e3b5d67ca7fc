"""Tiny random text-to-image pipelines of real diffusers architectures, built offline.

Like diffusers' own fast pipeline tests, every component is built from a small config: a UNet2DConditionModel
(SD 1.5 / SDXL shapes), an SD3Transformer2DModel or a FluxTransformer2DModel, an AutoencoderKL, CLIP (and for
Flux a T5) text encoders, with byte-level BPE tokenizers trained here instead of downloaded. The images they draw
are noise; tests use them to run the pipelines' real code paths end to end.

    python -m rewarddance.testing.tiny_diffusion sd ./tiny-sd        # save_pretrained, loadable with DiffusionPipeline
"""

from __future__ import annotations

import sys

import torch

from ..bpe import build_bpe_tokenizer

KINDS = ("sd", "sdxl", "sd3", "flux")
_CORPUS = (
    "a photo of a red circle and a blue square left of a green triangle above a yellow cat dog "
    "sitting on two three four purple orange white black shapes in a room with light"
).split()


def _tokenizer(max_length: int):
    """A CLIP-style byte-level BPE tokenizer trained on the small fixed corpus above."""
    return build_bpe_tokenizer([" ".join(_CORPUS)] * 4, max_length)


def _clip(tokenizer, hidden: int = 32, projection: bool = False, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=hidden,
        hidden_act="gelu",
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _t5(tokenizer, hidden: int = 32, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=len(tokenizer),
        d_model=hidden,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(cfg).eval()


def _vae(latent_channels: int, seed: int = 0, **kw):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
        **kw,
    ).eval()


def _scheduler(name: str, prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    if name == "flow":
        return FlowMatchEulerDiscreteScheduler()
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=prediction_type)
    if name == "ddim":
        return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1, **common)
    if name == "euler":
        return EulerDiscreteScheduler(steps_offset=1, **common)
    raise ValueError(f"scheduler: choose ddim, euler or flow, got {name!r}")


def build_tiny_pipeline(kind: str = "sd", scheduler: str | None = None, seed: int = 0, prediction_type="epsilon"):
    """A tiny random pipeline of ``kind`` (sd, sdxl, sd3, flux) on the CPU in float32.

    ``scheduler``: ``ddim`` (default for sd / sdxl) or ``euler`` for the UNet pipelines; sd3 and flux always use
    ``FlowMatchEulerDiscreteScheduler``. ``prediction_type`` (``epsilon`` or ``v_prediction``) for the UNet ones.
    """
    import diffusers

    if kind not in KINDS:
        raise ValueError(f"kind: choose one of {', '.join(KINDS)}, got {kind!r}")
    if kind in ("sd", "sdxl"):
        from diffusers import UNet2DConditionModel

        sched = _scheduler(scheduler or "ddim", prediction_type)
        tok = _tokenizer(77)
        torch.manual_seed(seed)
        unet_kw = dict(
            block_out_channels=(16, 32),
            layers_per_block=1,
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            norm_num_groups=4,
            attention_head_dim=(2, 4),
        )
        if kind == "sd":
            unet = UNet2DConditionModel(**unet_kw).eval()
            return diffusers.StableDiffusionPipeline(
                vae=_vae(4, seed),
                text_encoder=_clip(tok, seed=seed),
                tokenizer=tok,
                unet=unet,
                scheduler=sched,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        unet_kw.update(
            cross_attention_dim=64,  # the two text encoders' hidden states, concatenated
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * 6 + 32,
            transformer_layers_per_block=(1, 1),
            use_linear_projection=True,
        )
        unet = UNet2DConditionModel(**unet_kw).eval()
        return diffusers.StableDiffusionXLPipeline(
            vae=_vae(4, seed),
            text_encoder=_clip(tok, seed=seed),
            text_encoder_2=_clip(tok, projection=True, seed=seed + 1),
            tokenizer=tok,
            tokenizer_2=tok,
            unet=unet,
            scheduler=sched,
        )
    tok = _tokenizer(77)
    if kind == "sd3":
        from diffusers import SD3Transformer2DModel

        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=16,
            patch_size=1,
            in_channels=4,
            out_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=32,
            caption_projection_dim=32,
            pooled_projection_dim=64,
        ).eval()
        return diffusers.StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=_scheduler("flow"),
            vae=_vae(
                4, seed, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False
            ),
            text_encoder=_clip(tok, projection=True, seed=seed),
            tokenizer=tok,
            text_encoder_2=_clip(tok, projection=True, seed=seed + 1),
            tokenizer_2=tok,
            text_encoder_3=None,
            tokenizer_3=None,
        )
    from diffusers import FluxTransformer2DModel

    t5_tok = _tokenizer(32)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8),
    ).eval()
    return diffusers.FluxPipeline(
        scheduler=_scheduler("flow"),
        vae=_vae(4, seed, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=_clip(tok, seed=seed),
        tokenizer=tok,
        text_encoder_2=_t5(t5_tok, seed=seed),
        tokenizer_2=t5_tok,
        transformer=transformer,
    )


def build_sd15_layout_pipeline(seed: int = 0):
    """The smallest SD 1.x pipeline that ComfyUI's checkpoint loader accepts as SD 1.5, for integration tests.

    ComfyUI tells models apart by their weights: it wants a UNet with 320 base channels and 768-wide cross-attention,
    and it builds its own full-size CLIP-L text encoder and SD VAE whatever the file holds. So those two have the real
    shapes here (random, about 200 M parameters together) and only the UNet is cut to one level with one block. The
    tokenizer is the tiny one (its ids fit CLIP-L's vocabulary). Write it with
    :func:`rewarddance.training.export.save_single_file`.
    """
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = _tokenizer(77)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(320,),
        layers_per_block=1,
        sample_size=8,
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=768,
        attention_head_dim=8,
    ).eval()
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=64,
    ).eval()
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    ).eval()
    return diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=_scheduler("ddim"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in KINDS:
        print(f"usage: python -m rewarddance.testing.tiny_diffusion {{{','.join(KINDS)}}} OUT_DIR", file=sys.stderr)
        return 2
    build_tiny_pipeline(argv[0]).save_pretrained(argv[1])
    print(argv[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def exported_lora(result: dict) -> dict:
    """The diffusers LoRA file a trainer exported (``result["lora"]``, a folder), as tensors."""
    from safetensors.torch import load_file

    return load_file(f"{result['lora']}/pytorch_lora_weights.safetensors")


def same_weights(a: dict, b: dict, atol: float = 1e-6) -> bool:
    """Two non-empty state dicts with the same keys and every tensor within ``atol``."""
    return bool(a) and a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol) for k in a)
