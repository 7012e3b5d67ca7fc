"""Model cards of the bundled ShapesWorld models: ``card.json`` (the measured facts) and the ``README.md`` written
from it, for the judges and the generator that :mod:`rewarddance.recipes.shapes` trains."""

from __future__ import annotations

import json
import math
from pathlib import Path


def write_card(folder: Path, facts: dict) -> None:
    """``card.json`` and a ``README.md`` model card written from it."""
    (folder / "card.json").write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(render_card(facts), encoding="utf-8")


def render_card(facts: dict) -> str:
    """The model card text for a reward model's or the generator's facts."""
    if facts.get("kind") == "generator":
        return _generator_card(facts)
    m = facts["measured"]
    data = facts["data"]
    shape = facts["shape"]
    cap, jt, op = facts["caption_pretraining"], facts["judge_training"], facts["onpolicy_training"]
    g = {"train": facts["generated"]["generated-train"], "eval": facts["generated"]["generated-eval"]}
    note = f"\n\n{facts['note']}" if facts.get("note") else ""
    labels = {
        "id": f"in-domain (seed {data['id']['seed']})",
        "ood": f"out-of-domain (seed {data['ood']['seed']}; held-out colour/shape pairs, striped backgrounds)",
        "generated": f"the bundled generator's samples (seed {g['eval']['seed']}; strict-verifier labels)",
        "generated-large": "the same, a larger draw (seed {}; other prompts)".format(
            facts["generated"].get("generated-eval-large", {}).get("seed")
        ),
        "garbage": "a clean scene against garbage (noise, textures, fills, smears, blobs; 13 kinds)",
    }
    rows = "\n".join(
        f"| {labels[k]} | {m[k]['pairs']} | {_percent_se(m[k]['accuracy'], m[k]['pairs'])} | {m[k]['ece']:.3f} |"
        for k in labels
        if k in m
    )
    garbage = g["train"].get("garbage_pairs")
    junk = f" and {garbage:,} (pass, garbage) pairs (every garbage kind in turn)" if garbage else ""
    blobs = ""
    if facts.get("blob_pairs"):
        b = facts["blob_pairs"]
        blobs = (
            f" and {b['pairs']:,} rendered blob negatives (a clean scene against the same scene with its shapes bent"
            f" into blobs; {b['scenes']:,} scenes, seed {b['seed']})"
        )
    return f"""# {facts["name"]}: a ShapesWorld reward model (RewardDance, bundled)

A generative reward model: the reward is P("yes") of a tiny LLaVA ({facts["parameters"]:,} parameters; language model
hidden {shape["hidden"]} x {shape["layers"]} layers, CLIP vision tower {shape["vision_hidden"]} x
{shape["vision_layers"]} layers, patch 14 on {facts["image_size"]} x {facts["image_size"]} px, byte-level BPE
tokenizer built by `rewarddance.testing.tiny`) asked whether a ShapesWorld image matches its prompt. Trained on this
project's synthetic ShapesWorld data only; it knows nothing else.

## Measured (pointwise: the chosen image of a pair must get the higher P(yes))

| held-out pairs | pairs | accuracy (± SE) | ECE |
| --- | ---: | ---: | ---: |
{rows}

## Training (seeded; `python -m rewarddance.recipes.shapes rm --size {facts["name"][-1]}`)

1. Random weights, seed {facts["vlm_seed"]}.
2. Caption pretraining (`rewarddance train-captions`) on {data["scenes"]["count"]:,} rendered ShapesWorld scenes
   (seed {data["scenes"]["seed"]}): {cap["max_steps"]:,} steps, batch {cap["batch_size"]}, lr {cap["lr"]}, final
   token accuracy {100 * cap["final_token_accuracy"]:.1f} %.
3. Pointwise judge training (`rewarddance train-rm`, Bradley-Terry + 0.1 x cross-entropy, all weights) on
   {data["train"]["count"]:,} rendered preference pairs (seed {data["train"]["seed"]}): {jt["max_steps"]:,} steps,
   batch {jt["batch_size"]}, lr {jt["lr"]}.
4. The same on the bundled generator's own samples: {g["train"]["prompts"]:,} prompts (seed {g["train"]["seed"]}) x
   {g["train"]["samples"]} samples, labelled by the strict ShapesWorld verifier ({100 * g["train"]["pass_rate"]:.1f} %
   pass), {g["train"]["pairs"]:,} pairs: (pass, fail) pairs of one prompt{junk}, mixed with
   {facts["mixed_rendered_pairs"]:,} rendered pairs{blobs}: {op["max_steps"]:,} steps, batch {op["batch_size"]}, lr {op["lr"]}.

Time on 2 CPU cores: {", ".join(f"{k} {v} min" for k, v in facts["minutes"].items())}.{note}

## Use

```python
from rewarddance import RewardModel

rm = RewardModel.from_pretrained("{facts["name"]}")
rm.score(images, "a photo of a red circle left of a blue square").p_yes
```

Intended for demos, tests and the miniature scaling study (`benchmarks/shapes_scaling.py`); not a judge of real
images.
"""


def _percent_se(rate: float, n: int) -> str:
    """``"71.5 ± 2.1 %"``: a share and its binomial standard error."""
    return f"{100 * rate:.1f} ± {100 * math.sqrt(rate * (1 - rate) / max(1, n)):.1f} %"


def _samples(measured: dict) -> str:
    n = measured["samples"]
    return "one sample per prompt" if n == 1 else f"{n} samples per prompt ({n * measured['prompts']:,} images)"


def _first(measured: dict) -> str:
    if measured["samples"] == 1:
        return ""
    return f" The first sample of each prompt alone: {_percent_se(measured['first_sample_alignment'], measured['prompts'])}."


def _join(values) -> str:
    return ", ".join(str(v) for v in values)


def _generator_card(facts: dict) -> str:
    c = facts["config"]
    base = facts["measured"]
    unclean = ""
    if "not_clean" in base:
        unclean = f" Not a clean scene: {100 * base['not_clean']:.1f} % of the samples."
    extras = []
    if c.get("ema_decay"):
        extras.append(f"the saved weights are an EMA (decay {c['ema_decay']})")
    if c.get("min_snr_gamma"):
        extras.append(f"min-SNR loss weighting (gamma {c['min_snr_gamma']})")
    extras = f"; {', '.join(extras)}" if extras else ""
    return f"""# shapes-gen: a small ShapesWorld text-to-image model (RewardDance, bundled)

A diffusers `StableDiffusionPipeline` at {c["image_size"]} x {c["image_size"]} px: UNet2DConditionModel (widths
{_join(c["unet_channels"])}), AutoencoderKL (widths {_join(c["vae_channels"])}, {c["latent_channels"]} latent channels),
CLIPTextModel ({c["text_hidden"]} wide, {c["text_layers"]} layers), a byte-level BPE tokenizer over ShapesWorld's
words, DDIM scheduler; {facts["parameters"]:,} parameters in all. It draws ShapesWorld prompts imperfectly, on
purpose: a reward model has room to help.

## Measured

Strict-verifier alignment (ShapesWorld's programmatic verifier: the image must be a clean ShapesWorld scene and its
detected objects must satisfy the prompt) of {_samples(base)}, {base["prompts"]} in-domain prompts (seed
{base["seed"]}), guidance {c["guidance_scale"]}, {c["num_inference_steps"]} DDIM steps:
**{100 * base["alignment"]:.1f} ± {100 * base["alignment_se"]:.1f} %** overall (SE over prompts); by category:
{", ".join(f"{k} {100 * v:.0f} %" for k, v in base["by_category"].items())}.{unclean}{_first(base)}

## Training (seeded; `python -m rewarddance.recipes.shapes generator`)

{c["n_images"]:,} rendered in-domain ShapesWorld scenes (seed {c["data_seed"]}, all six categories), model seed
{c["seed"]}. Autoencoder: {c["vae_steps"]:,} steps, batch {c["vae_batch"]}, L1 + MSE + {c["vae_kl"]} x KL. UNet and
text encoder together: {c["unet_steps"]:,} steps, batch {c["unet_batch"]}, lr {c["unet_lr"]}, noise prediction,
prompt dropped for {100 * c["drop_prompt"]:.0f} % (classifier-free guidance){extras}. {facts["minutes"]} min on 2 CPU cores.

## Use

```python
from rewarddance.bundled import load_generator

pipe = load_generator()  # or diffusers' StableDiffusionPipeline.from_pretrained(<this folder>)
pipe("a photo of two red squares", guidance_scale={c["guidance_scale"]}, num_inference_steps={c["num_inference_steps"]}).images
```
"""
