"""Exporters: what a trained model is written as for other tools.

- :func:`save_lora`: a ReFL LoRA twice, in diffusers' format and as ``lora_comfyui.safetensors`` for ComfyUI's
  LoraLoader (the key names ComfyUI maps onto its own models).
- :func:`save_single_file`: a Stable Diffusion 1.x diffusers pipeline as one single-file checkpoint in the original
  (LDM) layout, the layout of the files in ComfyUI's ``models/checkpoints`` and of ``from_single_file``.

Use the second to ship a ReFL result with its LoRA fused in (``pipe.fuse_lora()`` first) to tools that read only
single files; the tests also build their single-file checkpoints with it, since none can be downloaded offline.
diffusers reads such files back with ``StableDiffusionPipeline.from_single_file(path, config=<diffusers folder or
id>)``. Only what an SD 1.x pipeline holds is mapped (UNet2DConditionModel, AutoencoderKL, CLIPTextModel); anything
else is an error naming the component, never a silently incomplete file.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..pipelines import pipeline_family

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

# diffusers ResnetBlock2D names -> LDM ResBlock names (UNet)
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# diffusers VAE attention names -> LDM AttnBlock names (1x1 convolutions there)
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_UNET_RESNET.get(head, head)}.{tail}"


def unet_to_ldm(state_dict: dict, config) -> dict:
    """Rename a diffusers SD 1.x UNet state dict to the LDM ``UNetModel`` layout (keys without a prefix)."""
    unsupported = [
        name
        for name in ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type")
        if getattr(config, name, None) is not None
    ]
    if unsupported:
        raise ValueError(f"unet: {unsupported} are not part of the SD 1.x layout this writer maps")
    per_block = config.layers_per_block
    if not isinstance(per_block, int):
        raise ValueError(f"unet: layers_per_block must be one number for the LDM layout, got {per_block}")
    levels = len(config.block_out_channels)
    fixed = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    out = {}
    for key, value in state_dict.items():
        new = None
        for old, ldm in fixed.items():
            if key.startswith(old):
                new = ldm + key[len(old) :]
        if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = 1 + i * (per_block + 1) + j
            new = (
                f"input_blocks.{index}.0.{_rename_resnet(rest)}"
                if kind == "resnets"
                else f"input_blocks.{index}.1.{rest}"
            )
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"input_blocks.{(int(m[1]) + 1) * (per_block + 1)}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
            kind, j, rest = m[1], int(m[2]), m[3]
            new = f"middle_block.{2 * j}.{_rename_resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = i * (per_block + 1) + j
            new = (
                f"output_blocks.{index}.0.{_rename_resnet(rest)}"
                if kind == "resnets"
                else f"output_blocks.{index}.1.{rest}"
            )
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            i = int(m[1])
            has_attention = any(k.startswith(f"up_blocks.{i}.attentions.") for k in state_dict)
            index = i * (per_block + 1) + per_block
            new = f"output_blocks.{index}.{2 if has_attention else 1}.conv.{m[2]}"
        if new is None:
            raise ValueError(f"unet: no LDM name for {key!r} (levels={levels})")
        out[new] = value
    return out


def vae_to_ldm(state_dict: dict, config) -> dict:
    """Rename a diffusers ``AutoencoderKL`` state dict to the LDM autoencoder layout (keys without a prefix)."""
    levels = len(config.block_out_channels)
    out = {}
    for key, value in state_dict.items():
        new = key.replace("conv_norm_out.", "norm_out.")
        if m := re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", new):
            side, i = m[1], int(m[3])
            level = i if side == "encoder" else levels - 1 - i  # the LDM decoder counts its levels upward
            new = f"{side}.{m[2]}.{level}.block.{m[4]}.{m[5].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", new):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", new):
            new = f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", new):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$", new):
            if m[2] not in _VAE_ATTN:
                raise ValueError(f"vae: no LDM name for {key!r}")
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
            if m[3] == "weight" and m[2] != "group_norm":
                value = value.reshape(*value.shape, 1, 1)  # linear -> 1x1 convolution
        elif not re.match(r"(encoder|decoder)\.(conv_in|conv_out|norm_out)\.|(post_)?quant_conv\.", new):
            raise ValueError(f"vae: no LDM name for {key!r}")
        out[new] = value
    return out


def pipeline_to_ldm(pipe) -> dict:
    """One LDM-layout state dict of an SD 1.x pipeline (UNet, VAE and CLIP text encoder)."""
    from transformers import CLIPTextModel

    if pipe.unet.config.use_linear_projection:  # SD 2.x: its original files hold OpenCLIP's own key names
        raise ValueError("unet: linear projections mean SD 2.x, whose OpenCLIP text encoder this writer does not map")
    if type(pipe.text_encoder) is not CLIPTextModel:
        raise ValueError(
            f"text_encoder: the SD 1.x layout holds a CLIPTextModel, got {type(pipe.text_encoder).__name__}"
        )
    sd = {UNET_PREFIX + k: v for k, v in unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config).items()}
    sd.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config).items()})
    for k, v in pipe.text_encoder.state_dict().items():  # transformers 5 drops the "text_model." of older files
        sd[CLIP_PREFIX + (k if k.startswith("text_model.") else "text_model." + k)] = v
    return sd


def save_single_file(pipe, path, dtype: torch.dtype | None = None) -> Path:
    """Write ``pipe`` (a ``StableDiffusionPipeline``) to ``path`` as one LDM-layout safetensors file; ``dtype``
    (e.g. ``torch.float16``) casts the floating-point tensors. Written to a temporary name, then renamed."""
    from safetensors.torch import save_file

    if any(getattr(pipe, name, None) is not None for name in ("text_encoder_2", "transformer")):
        raise ValueError(f"{type(pipe).__name__}: only SD 1.x pipelines (one CLIP text encoder, a UNet) are mapped")
    sd = pipeline_to_ldm(pipe)
    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)
    return path


# --- LoRA (ReFL) ---------------------------------------------------------------------------------------------

COMFY_LORA_FILE = "lora_comfyui.safetensors"

# diffusers' module names in a Wan transformer -> the original Wan names that ComfyUI's WAN models carry (the inverse of
# diffusers' _convert_non_diffusers_wan_lora_to_diffusers). Inside each block:
_WAN_ATTENTION = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o"}
_WAN_BLOCK = {
    **{f"attn1.{d}": f"self_attn.{w}" for d, w in _WAN_ATTENTION.items()},
    **{f"attn2.{d}": f"cross_attn.{w}" for d, w in _WAN_ATTENTION.items()},
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
# outside the blocks (diffusers reads no alpha for these, so their alpha / rank goes into lora_B)
_WAN_OUTER = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "proj_out": "head.head",
}


def wan_lora_to_comfy(peft_sd: dict, alpha: float) -> dict:
    """A Wan transformer's LoRA (peft names) under the original Wan names: ``diffusion_model.<wan module>.lora_A``
    / ``.lora_B.weight``, the form ComfyUI maps onto its WAN models (and diffusers' ``load_lora_weights`` reads back);
    block layers carry ``.alpha``. A layer with no Wan name is an error naming it, never a dropped key."""
    out = {}
    for key, value in peft_sd.items():
        module, _, part = key.rpartition(".lora_")  # "blocks.0.attn1.to_q", "A.weight"
        block = re.fullmatch(r"blocks\.(\d+)\.(.+)", module)
        if part not in ("A.weight", "B.weight"):
            raise ValueError(f"transformer: the LoRA tensor {key!r} has no place in a Wan LoRA for ComfyUI")
        if block and block[2] in _WAN_BLOCK:
            name = f"blocks.{block[1]}.{_WAN_BLOCK[block[2]]}"
            if part == "A.weight":
                out[f"diffusion_model.{name}.alpha"] = torch.tensor(float(alpha))
        elif module in _WAN_OUTER:
            name = _WAN_OUTER[module]
            if part == "B.weight":
                value = value * (alpha / peft_sd[f"{module}.lora_A.weight"].shape[0])
        else:
            raise ValueError(
                f"transformer: the LoRA layer {module!r} has no Wan name that ComfyUI maps (those are the blocks' "
                f"attention and feed-forward, {', '.join(_WAN_BLOCK)}, and {', '.join(_WAN_OUTER)})"
            )
        out[f"diffusion_model.{name}.lora_{part}"] = value
    return out


def save_lora(pipe, denoiser, out_dir, alpha: float, state_dict: dict | None = None, suffix: str = "") -> Path:
    """Write the LoRA twice: in diffusers' format (``pipe.load_lora_weights(out_dir)`` loads it) and as
    ``lora_comfyui.safetensors`` for ComfyUI's LoraLoader (``models/loras``).

    The ComfyUI file uses the names ComfyUI maps onto its own models: kohya's ``lora_unet_*`` for UNets,
    ``transformer.*`` (diffusers' module names) for SD3 / Flux transformers and ``diffusion_model.*`` with the original
    Wan module names for Wan transformers (:func:`wan_lora_to_comfy`); each module carries its ``alpha`` (or has it in
    its weights), so strength 1.0 there applies the same ``alpha / rank`` scale as the trained model. ``state_dict``:
    the gathered weights of a sharded (FSDP) denoiser, or a snapshot of the LoRA (``keep_best``). ``suffix`` ends both
    file names.

    The trained experts of a Wan 2.2 pipeline (:class:`~.experts.Experts`) get both files each: the high-noise
    expert's under the names above, the low-noise expert's as ``pytorch_lora_weights_low_noise.safetensors`` (loaded
    with ``pipe.load_lora_weights(out_dir, weight_name=..., load_into_transformer_2=True)``) and
    ``lora_comfyui_low_noise.safetensors`` (for the low-noise model's LoraLoader).
    """
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from .experts import Experts, expert_weights, export_suffix

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(denoiser, Experts):  # one LoRA per trained expert, its weights under "<expert name>."
        for name, expert in denoiser.named_children():
            own = None if state_dict is None else expert_weights(state_dict, name)
            save_lora(pipe, expert, out, alpha, own, suffix=export_suffix(name))
        return out
    peft_sd = get_peft_model_state_dict(denoiser, state_dict=state_dict)
    layers = convert_state_dict_to_diffusers(peft_sd)
    unet = pipeline_family(pipe) == "unet"
    key = "unet" if unet else "transformer"
    # the adapter config travels in the file's metadata; without it a loader assumes alpha = rank (scale 1)
    meta = {f"{key}_lora_adapter_metadata": denoiser.peft_config["default"].to_dict()}
    weight_name = f"pytorch_lora_weights{suffix}.safetensors"
    type(pipe).save_lora_weights(
        str(out), **{f"{key}_lora_layers": layers}, **meta, weight_name=weight_name, safe_serialization=True
    )
    if pipeline_family(pipe) == "wan":  # ComfyUI maps Wan LoRAs only under the original Wan names
        comfy = wan_lora_to_comfy(peft_sd, alpha)
    else:
        if unet:
            comfy = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_sd.items()})
        else:
            comfy = {f"transformer.{k}": v for k, v in peft_sd.items()}
        for key in [k for k in comfy if k.endswith((".lora_down.weight", ".lora_A.weight"))]:
            comfy[key.rsplit(".", 2)[0] + ".alpha"] = torch.tensor(float(alpha))
    comfy_file = COMFY_LORA_FILE.replace(".safetensors", f"{suffix}.safetensors")
    tmp = out / (comfy_file + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in comfy.items()}, str(tmp))
    tmp.replace(out / comfy_file)
    return out
