"""P(yes) and the yes/no log-margin from final hidden states (RewardDance, arXiv 2509.08826, Sec. 3.1).

The generative reward is r = P("yes" | context): the softmax mass of the yes token ids at the answer position.
With ``normalize="vocab"`` that needs the log-sum-exp of ``hidden @ weight.T + bias`` over the whole vocabulary
(V ~ 152k for Qwen), which is the only expensive part; the yes/no logits themselves need only the few weight rows
of those ids. So:

- the forward kernel streams W in [BLOCK_V, H] tiles, a ``tl.dot`` per tile and an online max / sum-exp, and
  writes per-split partials that torch combines into ``lse [N]`` (never an ``[N, V]`` tensor);
- the backward kernel recomputes the tiles and accumulates ``grad_hidden = (g * softmax) @ W``;
- the yes/no logits, their log-sum-exps and everything after are plain differentiable torch on ``[N, K]``.

The kernels live in ``triton_kernels.py`` (``selected_logprobs`` runs the same two, with a target) and are
launched by ``utils.triton_lse_forward`` / ``triton_lse_backward``, which import them on first launch so that
importing this module never imports triton. Ladder (Liger-Kernel style): kernels -> ``yes_prob_forward`` /
``yes_prob_backward`` (launchers) -> ``YesProbFunction`` -> ``yes_prob`` (public; Triton or the chunked torch
path) and ``yes_prob_reference``.
On the CPU the chunked torch path (``utils.ChunkedVocabLSEFunction``) computes the same log-sum-exp one
[N, C] chunk at a time and recomputes the chunks in backward.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .utils import (
    DEFAULT_CONFIG,
    KernelConfig,
    as_id_set,
    check_lm_head_inputs,
    chunked_lse_backward,
    chunked_vocab_lse,
    kernel_dtype_inputs,
    resolve_backend,
    selected_logits,
    triton_lse_backward,
    triton_lse_forward,
)

NORMALIZE_MODES = ("vocab", "yes_no")


def yes_prob_forward(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: KernelConfig = DEFAULT_CONFIG
) -> torch.Tensor:
    """Launch the forward kernel: fp32 ``lse [N]`` = logsumexp over V of ``hidden @ weight.T + bias``."""
    return triton_lse_forward(hidden, weight, bias, None, config)[0]


def yes_prob_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lse: torch.Tensor,
    grad_lse: torch.Tensor,
    config: KernelConfig = DEFAULT_CONFIG,
) -> torch.Tensor:
    """Launch the backward kernel: fp32 ``grad_hidden [N, H]`` of ``sum(grad_lse * lse)``, tiles recomputed."""
    return triton_lse_backward(hidden, weight, bias, None, lse, grad_lse, config)


class YesProbFunction(torch.autograd.Function):
    """Vocabulary log-sum-exp through Triton: forward keeps ``lse [N]`` only.

    Backward: ``grad_hidden`` from the Triton kernel (tiles recomputed). A trainable lm_head (weight or bias that
    requires grad) takes the chunked torch backward instead, which forms each [N, C] chunk of d/dlogits once and
    feeds all three gradients from it with dense matmuls.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, config):
        lse = yes_prob_forward(hidden, weight, bias, config)
        ctx.save_for_backward(hidden, weight, bias, lse)
        ctx.config = config
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_lse):
        hidden, weight, bias, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        if need_w or need_b:
            gh, gw, gb = chunked_lse_backward(
                hidden, weight, bias, lse, grad_lse, needs=(need_h, need_w, need_b), config=ctx.config
            )
        else:
            gh = yes_prob_backward(hidden, weight, bias, lse, grad_lse, ctx.config) if need_h else None
            gw = gb = None
        return (
            None if gh is None else gh.to(hidden.dtype),
            None if gw is None else gw.to(weight.dtype),
            None if gb is None else gb.to(bias.dtype),
            None,
        )


def _check_normalize(normalize: str) -> None:
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"yes_prob: normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")


def _yes_no_sets(yes_ids, no_ids, vocab_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    yes = as_id_set(yes_ids, vocab_size, device, "yes_ids", "yes_prob")
    no = as_id_set(no_ids, vocab_size, device, "no_ids", "yes_prob")
    both = yes[torch.isin(yes, no)]
    if both.numel():
        raise ValueError(f"yes_prob: token ids {both.tolist()} are in both yes_ids and no_ids")
    return yes, no


def yes_prob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    yes_ids,
    no_ids,
    bias: torch.Tensor | None = None,
    normalize: str = "vocab",
    backend: str = "auto",
    *,
    config: KernelConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """P(yes) and the yes/no log-margin of ``logits = hidden @ weight.T + bias``, without materialising logits.

    Args:
        hidden: ``[N, H]`` final hidden states (any float dtype; math is fp32).
        weight: ``[V, H]`` lm_head weight. ``bias``: ``[V]`` or None.
        yes_ids, no_ids: token ids (list of ints or integer tensor), each a set: duplicates count once; non-empty,
            inside ``[0, V)``, disjoint.
        normalize: ``"vocab"``: P(yes) = sum of softmax over the full vocabulary at the yes ids;
            ``"yes_no"``: renormalised over yes ∪ no ids only (touches only those rows of the weight).
        backend: ``"auto"`` (Triton on CUDA, chunked torch elsewhere), ``"triton"`` (CUDA, or CPU under
            ``TRITON_INTERPRET=1``), ``"torch"`` (chunked over V, bounded memory).
        config: tile sizes / memory budgets (``KernelConfig``); defaults are fine.

    Returns:
        ``(p_yes, margin)``, float32 ``[N]`` each: ``p_yes`` a probability in [0, 1];
        ``margin = logsumexp(yes logits) - logsumexp(no logits)`` in nats. Differentiable w.r.t. ``hidden``
        (and ``weight`` / ``bias`` when they require grad).
        A weight that requires grad (a Hugging Face lm_head does until frozen) costs a dense ``[V, H]`` gradient
        and a slower backward: pass ``weight.detach()`` when the lm_head is not trained.

    Inputs are checked (shapes, dtypes, id ranges; see ``check_lm_head_inputs``): a clear error, never an
    out-of-bounds read. A non-contiguous last dimension is copied; float64 is computed in fp32.
    """
    _check_normalize(normalize)
    hidden, weight, bias = check_lm_head_inputs(hidden, weight, bias, "yes_prob")
    config = DEFAULT_CONFIG if config is None else config
    chosen = resolve_backend(backend, hidden.device, "yes_prob")
    yes, no = _yes_no_sets(yes_ids, no_ids, weight.shape[0], hidden.device)
    n_yes = yes.numel()
    z = selected_logits(hidden, weight, bias, torch.cat([yes, no]))  # [N, K] fp32, K = |yes| + |no|
    lse_yes = torch.logsumexp(z[:, :n_yes], dim=1)
    lse_no = torch.logsumexp(z[:, n_yes:], dim=1)
    if normalize == "yes_no":
        lse_all = torch.logaddexp(lse_yes, lse_no)
    elif hidden.shape[0] == 0:
        lse_all = lse_yes  # empty batch: nothing to launch
    elif chosen == "triton":
        lse_all = YesProbFunction.apply(*kernel_dtype_inputs(hidden, weight, bias), config)
    else:
        lse_all = chunked_vocab_lse(hidden, weight, bias, config)
    if normalize == "vocab":
        # The vocabulary holds the yes and no ids, so lse_all >= logaddexp(lse_yes, lse_no); the two sides are summed
        # in different orders (and on the GPU by different kernels), and with all mass on yes ids rounding could
        # give P(yes) = 1 + 2^-22. Taking the larger keeps P(yes) <= 1 and P(yes) + P(no) <= 1.
        lse_all = torch.maximum(lse_all, torch.logaddexp(lse_yes, lse_no))
    return torch.exp(lse_yes - lse_all), lse_yes - lse_no


def yes_prob_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    yes_ids,
    no_ids,
    bias: torch.Tensor | None = None,
    normalize: str = "vocab",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch oracle of ``yes_prob``: full fp32 logits ``[N, V]``, log_softmax, logsumexp over the id sets.

    Same arguments, checks and returns as ``yes_prob``; memory grows as N x V, so use it for tests and small V.
    """
    _check_normalize(normalize)
    hidden, weight, bias = check_lm_head_inputs(hidden, weight, bias, "yes_prob")
    yes, no = _yes_no_sets(yes_ids, no_ids, weight.shape[0], hidden.device)
    logits = hidden.float() @ weight.float().T  # [N, V]
    if bias is not None:
        logits = logits + bias.float()
    if normalize == "vocab":
        logp = torch.log_softmax(logits, dim=1)
        lse_yes_norm = torch.logsumexp(logp.index_select(1, yes), dim=1)  # log P(yes)
        lse_no_norm = torch.logsumexp(logp.index_select(1, no), dim=1)
        return torch.exp(lse_yes_norm), lse_yes_norm - lse_no_norm
    lse_yes = torch.logsumexp(logits.index_select(1, yes), dim=1)
    lse_no = torch.logsumexp(logits.index_select(1, no), dim=1)
    return torch.exp(lse_yes - torch.logaddexp(lse_yes, lse_no)), lse_yes - lse_no
