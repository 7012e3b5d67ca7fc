"""Trainers: reward-model training (:mod:`.rm`, ``rewarddance train-rm``), caption pretraining of a VLM built from
scratch (:mod:`.caption`, ``rewarddance train-captions``), and alignment of diffusion models by ReFL (:mod:`.refl`,
``rewarddance train-refl``; settings in :mod:`.refl_config`) and by GRPO (:mod:`.grpo`, ``rewarddance train-grpo``;
settings in :mod:`.grpo_config`), both built on the phases of :mod:`.diffusion_loop` and its ``accelerate`` engine
(:mod:`.engine`).

What they share: the optimisation loop of the VLM trainers (:mod:`.loop`), settings read from YAML with command-line
overrides (:mod:`.config`), atomic resumable checkpoints (:mod:`.checkpoint`), the per-step ``metrics.csv``
(:mod:`.metrics`), preference data in ShapesWorld's ``pairs.jsonl`` format (:mod:`.data`), the pictures a ReFL run
leaves (:mod:`.plots`: the matplotlib reward curve and sample grids) and the exporters (:mod:`.export`: the ReFL LoRA
for diffusers and ComfyUI, single-file checkpoints).
"""
