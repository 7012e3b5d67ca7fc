"""P(yes) and the yes/no log-margin from final hidden states (RewardDance, arXiv 2509.08826, Sec. 3.1).

Placeholder: torch reference only; the Triton kernel and chunked path land with the kernels issue.
"""

from __future__ import annotations

import torch


def _as_id_tensor(ids, device) -> torch.Tensor:
    return torch.as_tensor(sorted(set(int(i) for i in ids)), dtype=torch.long, device=device)


def yes_prob_reference(hidden, weight, yes_ids, no_ids, bias=None, normalize: str = "vocab"):
    """Reference: full logits, log_softmax, logsumexp over the id sets. Returns (p_yes [N], margin [N]) in fp32."""
    logits = hidden.float() @ weight.float().T  # [N, V]
    if bias is not None:
        logits = logits + bias.float()
    yes = _as_id_tensor(yes_ids, logits.device)
    no = _as_id_tensor(no_ids, logits.device)
    lse_yes = torch.logsumexp(logits.index_select(1, yes), dim=1)
    lse_no = torch.logsumexp(logits.index_select(1, no), dim=1)
    if normalize == "vocab":
        lse_all = torch.logsumexp(logits, dim=1)
    elif normalize == "yes_no":
        lse_all = torch.logaddexp(lse_yes, lse_no)
    else:
        raise ValueError(f"normalize must be 'vocab' or 'yes_no', got {normalize!r}")
    return torch.exp(lse_yes - lse_all), lse_yes - lse_no


def yes_prob(hidden, weight, yes_ids, no_ids, bias=None, normalize: str = "vocab", backend: str = "auto"):
    """P(yes) [N] and margin log P(yes) - log P(no) [N], fp32, from hidden [N, H] and lm_head weight [V, H]."""
    return yes_prob_reference(hidden, weight, yes_ids, no_ids, bias=bias, normalize=normalize)
