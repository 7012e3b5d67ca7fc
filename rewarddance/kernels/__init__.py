"""Fused kernels: from final hidden states to the few probabilities a reward needs (no [N, V] logits).

- ``yes_prob``: P(yes) and the yes/no log-margin (the generative reward, RewardDance Sec. 3.1).
- ``selected_logprobs``: log p(target) per row (RM training cross-entropy, per-token log-probs).

Each public function picks Triton on CUDA and a chunked torch path elsewhere (``backend="auto"``); the
``*_reference`` functions are the plain torch oracles. Importing this package does not import triton (the
interpreter flag ``TRITON_INTERPRET=1`` must be set before triton's first import).
"""

from .selected_logprobs import selected_logprobs, selected_logprobs_reference
from .utils import KernelConfig
from .yes_prob import yes_prob, yes_prob_reference

__all__ = [
    "KernelConfig",
    "selected_logprobs",
    "selected_logprobs_reference",
    "yes_prob",
    "yes_prob_reference",
]
