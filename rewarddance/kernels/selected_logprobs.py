"""log p(target) per row from final hidden states, without [N, V] logits (RewardDance, arXiv 2509.08826, Sec. 3.2).

Reward-model training is next-token cross-entropy on the answer token ("yes" / "no") and, for chain-of-thought
data, on the reason tokens: ``loss = -mean(selected_logprobs(...))`` over the rows that are not ``ignore_index``.
Per-token log-probs are the same quantity. Fused the same way as ``yes_prob``:

- the forward kernel: per [BLOCK_N, BLOCK_V] tile, a ``tl.dot``, an online max / sum-exp, and the row's target
  logit picked out of the tile when it falls there; per-split partials combined in torch;
- the backward kernel: recomputes the tiles; d/dlogit = g * (onehot(target) - softmax);
  accumulates ``grad_hidden`` tile by tile.

The kernels live in ``triton_kernels.py`` (the same two as ``yes_prob``'s, with ``HAS_TARGET``) and are
launched by ``utils.triton_lse_forward`` / ``triton_lse_backward``, which import them on first launch so that
importing this module never imports triton. Ladder: kernels -> ``selected_logprobs_forward`` / ``_backward``
(launchers) -> ``SelectedLogprobsFunction`` -> ``selected_logprobs`` (public; Triton or the chunked torch path)
and ``selected_logprobs_reference``.

Rows whose target is ``ignore_index`` are dropped before any launch: they cost nothing, return exactly 0 and get
exactly zero gradient.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .utils import (
    DEFAULT_CONFIG,
    KernelConfig,
    check_lm_head_inputs,
    check_targets,
    chunked_lse_backward,
    chunked_vocab_lse,
    kernel_dtype_inputs,
    resolve_backend,
    triton_lse_backward,
    triton_lse_forward,
)


def selected_logprobs_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    config: KernelConfig = DEFAULT_CONFIG,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel; returns fp32 ``(logp [N], lse [N])`` for targets in ``[0, V)``."""
    lse, target_logit = triton_lse_forward(hidden, weight, bias, target, config)
    return target_logit - lse, lse


def selected_logprobs_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    lse: torch.Tensor,
    grad_logp: torch.Tensor,
    config: KernelConfig = DEFAULT_CONFIG,
) -> torch.Tensor:
    """Launch the backward kernel: fp32 ``grad_hidden [N, H]`` of ``sum(grad_logp * logp)``, tiles recomputed."""
    return triton_lse_backward(hidden, weight, bias, target, lse, grad_logp, config)


class SelectedLogprobsFunction(torch.autograd.Function):
    """``log_softmax(hidden @ weight.T + bias)[n, target[n]]`` through Triton; forward keeps ``lse [N]`` only.

    Backward: ``grad_hidden`` from the Triton kernel; a trainable lm_head (weight or bias requiring grad) takes
    the chunked torch backward, which feeds all three gradients from each [N, C] chunk of d/dlogits.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, config):
        logp, lse = selected_logprobs_forward(hidden, weight, bias, target, config)
        ctx.save_for_backward(hidden, weight, bias, target, lse)
        ctx.config = config
        return logp

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp):
        hidden, weight, bias, target, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        if need_w or need_b:
            gh, gw, gb = chunked_lse_backward(
                hidden, weight, bias, lse, -grad_logp, target=target, grad_target=grad_logp,
                needs=(need_h, need_w, need_b), config=ctx.config,
            )  # fmt: skip
        else:
            gh = None
            if need_h:
                gh = selected_logprobs_backward(hidden, weight, bias, target, lse, grad_logp, ctx.config)
            gw = gb = None
        return (
            None if gh is None else gh.to(hidden.dtype),
            None if gw is None else gw.to(weight.dtype),
            None if gb is None else gb.to(bias.dtype),
            None,
            None,
        )


def _target_logits(hidden, weight, bias, target) -> torch.Tensor:
    """fp32 logit of each row's own target [N], differentiable; gathers N rows of the weight."""
    z = (hidden.float() * weight.index_select(0, target).float()).sum(1)
    if bias is not None:
        z = z + bias.index_select(0, target).float()
    return z


def selected_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target_ids: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
    *,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """``log p(target)`` per row under ``softmax(hidden @ weight.T + bias)``, without materialising logits.

    Args:
        hidden: ``[N, H]`` hidden states (any float dtype; math is fp32). ``weight``: ``[V, H]``; ``bias``: ``[V]``.
        target_ids: ``[N]`` integer ids in ``[0, V)``, or ``ignore_index`` for rows to skip.
        ignore_index: rows with this target return exactly 0 and get exactly zero gradient.
        backend: ``"auto"`` | ``"triton"`` | ``"torch"``, as in ``yes_prob``. ``config``: ``KernelConfig``.

    Returns:
        float32 ``[N]`` log-probabilities in nats (<= 0); cross-entropy is ``-logp[keep].mean()``.
        Differentiable w.r.t. ``hidden`` (and ``weight`` / ``bias`` when they require grad).
        A weight that requires grad (a Hugging Face lm_head does until frozen) costs a dense ``[V, H]`` gradient
        and a slower backward: pass ``weight.detach()`` when the lm_head is not trained.

    Bad input (wrong shapes or dtypes, targets out of range) raises a clear error before any kernel runs.
    """
    hidden, weight, bias = check_lm_head_inputs(hidden, weight, bias, "selected_logprobs")
    N = hidden.shape[0]  # rows
    target = check_targets(target_ids, N, weight.shape[0], ignore_index, "selected_logprobs")
    target = target.to(hidden.device)
    config = DEFAULT_CONFIG if config is None else config
    chosen = resolve_backend(backend, hidden.device, "selected_logprobs")
    keep = (target != ignore_index).nonzero().squeeze(1)  # [K] rows that count
    all_kept = keep.numel() == N
    h = hidden if all_kept else hidden.index_select(0, keep)
    t = target if all_kept else target.index_select(0, keep)
    if keep.numel() == 0:
        logp = h.float().sum(1)  # empty, but connected to hidden: backward gives zeros
    elif chosen == "triton":
        logp = SelectedLogprobsFunction.apply(*kernel_dtype_inputs(h, weight, bias), t, config)
    else:
        logp = _target_logits(h, weight, bias, t) - chunked_vocab_lse(h, weight, bias, config)
    if all_kept:
        return logp
    return torch.zeros(N, dtype=torch.float32, device=hidden.device).index_copy(0, keep, logp)


def selected_logprobs_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target_ids: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Torch oracle of ``selected_logprobs``: full fp32 logits ``[N, V]``, ``log_softmax``, gather; same checks."""
    hidden, weight, bias = check_lm_head_inputs(hidden, weight, bias, "selected_logprobs")
    target = check_targets(target_ids, hidden.shape[0], weight.shape[0], ignore_index, "selected_logprobs")
    target = target.to(hidden.device)
    logits = hidden.float() @ weight.float().T  # [N, V]
    if bias is not None:
        logits = logits + bias.float()
    logp = torch.log_softmax(logits, dim=1)
    ignore = target == ignore_index
    picked = logp.gather(1, torch.where(ignore, torch.zeros_like(target), target)[:, None]).squeeze(1)
    return torch.where(ignore, torch.zeros_like(picked), picked)
