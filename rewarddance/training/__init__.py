"""Trainers: reward-model training (:mod:`.rm`, ``rewarddance train-rm``) and ReFL alignment of diffusion models
(:mod:`.refl`, ``rewarddance train-refl``). Checkpoints are atomic and resumable (:mod:`.checkpoint`); preference
data is ShapesWorld's ``pairs.jsonl`` format (:mod:`.data`).
"""
