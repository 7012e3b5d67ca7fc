"""Fused kernels: from final hidden states to the few probabilities a reward needs.

Public functions pick Triton on CUDA and a chunked torch path elsewhere (``backend="auto"``).
"""

from .yes_prob import yes_prob, yes_prob_reference

__all__ = ["yes_prob", "yes_prob_reference"]
