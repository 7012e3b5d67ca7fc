"""Trainers: reward-model training (``rm``) and, in a later release, ReFL alignment of diffusion models.

``rewarddance train-rm --config cfg.yaml`` runs :func:`rm.train_rm`; checkpoints are atomic and resumable
(:mod:`.checkpoint`); preference data is ShapesWorld's ``pairs.jsonl`` format (:mod:`.data`).
"""
