"""The ``@triton.jit`` kernels of ``yes_prob`` and ``selected_logprobs``, and the tile helpers they share.

This module imports triton at the top, so nothing imports it at package import: the launchers in ``yes_prob.py``
and ``selected_logprobs.py`` load it on first use (``utils.load_triton_kernels``). That keeps
``TRITON_INTERPRET=1`` usable, which must be in the environment before triton's first import, and the kernels
ordinary module-level functions, as the Triton interpreter and compiler both expect.

There are two kernels, a forward and a backward, each serving both ops, and they share one grid:
``(row_blocks, splits)``. A program owns ``BLOCK_N`` rows of ``hidden`` and a contiguous range of
``tiles_per_split`` vocabulary tiles of ``BLOCK_V`` rows of ``weight``; for each tile it computes the fp32 logits
``[BLOCK_N, BLOCK_V]`` with a ``tl.dot`` per ``BLOCK_H`` slice of the hidden size. Splitting V (not only N) keeps
every SM busy when N is small (reward scoring: N = 1..256), where the cost is streaming W once. Forward programs
write per-split (max, sum-exp) partials that torch combines; backward programs write per-split fp32 ``grad_hidden``
partials that torch sums. No ``[N, V]`` tensor exists at any point.
"""

import triton
import triton.language as tl


# ------------------------------------------------------------------------------------------------ shared tiles
@triton.jit
def _logits_tile(
    h_ptr,
    w_ptr,
    b_ptr,
    rows,
    cols,
    N,
    V,
    H,
    stride_hn,
    stride_wv,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # fp32 logits [BLOCK_N, BLOCK_V] of rows x cols; columns past V are -inf so they vanish from any softmax.
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    row_ok = rows[:, None] < N
    col_ok = cols[None, :] < V
    for h0 in range(0, H, BLOCK_H):
        hh = h0 + tl.arange(0, BLOCK_H)
        x = tl.load(h_ptr + rows[:, None] * stride_hn + hh[None, :], mask=row_ok & (hh[None, :] < H), other=0.0)
        # the weight tile is read transposed, [BLOCK_H, BLOCK_V], so the dot needs no tl.trans
        wt = tl.load(w_ptr + cols[None, :] * stride_wv + hh[:, None], mask=col_ok & (hh[:, None] < H), other=0.0)
        if DOT_FP32:
            acc = tl.dot(x.to(tl.float32), wt.to(tl.float32), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(x, wt, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cols < V, other=0.0).to(tl.float32)[None, :]
    return tl.where(col_ok, acc, float("-inf"))


@triton.jit
def _lse_update(m, s, z):
    # online log-sum-exp: running row max m and sum s of exp(z - m); rows of all -inf keep m = -inf, s = 0
    m_new = tl.maximum(m, tl.max(z, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(z - m_safe[:, None]), 1)
    return m_new, s


@triton.jit
def _add_grad_hidden(
    dz,
    w_ptr,
    gh_ptr,
    rows,
    cols,
    N,
    V,
    H,
    stride_wv,
    BLOCK_H: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # gh[rows, :] += dz [BLOCK_N, BLOCK_V] @ W[cols, :]; gh is this program's own fp32 slice, so no atomics
    row_ok = rows[:, None] < N
    for h0 in range(0, H, BLOCK_H):
        hh = h0 + tl.arange(0, BLOCK_H)
        w = tl.load(
            w_ptr + cols[:, None] * stride_wv + hh[None, :], mask=(cols[:, None] < V) & (hh[None, :] < H), other=0.0
        )
        if DOT_FP32:
            part = tl.dot(dz, w.to(tl.float32), input_precision=PRECISION)
        elif w.dtype == tl.float16:
            # dz stays fp32: fp16's smallest subnormal is 6e-8, and g * softmax over a large vocabulary is often
            # smaller, so a dz cast to fp16 would flush to zero. PRECISION is "tf32" here: fp32's exponent range,
            # fp16's 10-bit mantissa, so W is exact and dz is rounded no worse than fp16 would, without underflow.
            part = tl.dot(dz, w.to(tl.float32), input_precision=PRECISION)
        else:
            part = tl.dot(dz.to(w.dtype), w)  # bf16 has fp32's exponent range: rounding, but no underflow
        ptrs = gh_ptr + rows[:, None] * H + hh[None, :]
        mask = row_ok & (hh[None, :] < H)
        tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + part, mask=mask)
    # the next tile reads back what this one stored: a CTA barrier makes the writes visible to every thread
    tl.debug_barrier()


# ------------------------------------------------------------------------------------------------------ kernels
# One forward and one backward kernel serve both ops. HAS_TARGET is a constexpr, so each compiled variant keeps only
# its own lines: without it the forward is yes_prob's log-sum-exp and the backward d lse / d logit = g * softmax;
# with it the forward also picks out each row's target logit and the backward is d logp / d logit =
# g * (onehot(target) - softmax), as selected_logprobs needs.
@triton.jit
def _program_rows(tiles_per_split, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    # the BLOCK_N rows this program owns, its split, and the split's first vocabulary column; int64, so that
    # row * stride and split * N * H cannot overflow on large inputs
    pid_n = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, pid_s, pid_s * tiles_per_split * BLOCK_V


@triton.jit
def _lse_fwd_kernel(
    h_ptr, w_ptr, b_ptr,  # [N, H] hidden (row stride stride_hn), [V, H] weight (stride_wv), [V] bias if HAS_BIAS
    t_ptr,  # [N] int64 targets in [0, V) if HAS_TARGET
    m_ptr, s_ptr,  # [splits, N] fp32 out: running max, and sum of exp(logit - max), per split
    zt_ptr,  # [splits, N] fp32 out if HAS_TARGET: the target logit if it lies in this split, else 0
    N, V, H, stride_hn, stride_wv, tiles_per_split,
    HAS_BIAS: tl.constexpr, HAS_TARGET: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # an unused pointer (bias, targets, zt) may be any tensor: the launcher passes a dummy
    rows, pid_s, v_start = _program_rows(tiles_per_split, BLOCK_N, BLOCK_V)
    if HAS_TARGET:
        tgt = tl.load(t_ptr + rows, mask=rows < N, other=-1)
        zt = tl.zeros((BLOCK_N,), tl.float32)
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    for t in range(0, tiles_per_split):
        cols = v_start + t * BLOCK_V + tl.arange(0, BLOCK_V)
        z = _logits_tile(
            h_ptr, w_ptr, b_ptr, rows, cols, N, V, H, stride_hn, stride_wv,
            HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, DOT_FP32, PRECISION,
        )  # fmt: skip
        m, s = _lse_update(m, s, z)
        if HAS_TARGET:
            zt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), 1)
    out = pid_s * N + rows
    tl.store(m_ptr + out, m, mask=rows < N)
    tl.store(s_ptr + out, s, mask=rows < N)
    if HAS_TARGET:
        tl.store(zt_ptr + out, zt, mask=rows < N)


@triton.jit
def _lse_bwd_kernel(
    h_ptr, w_ptr, b_ptr, t_ptr,  # as in the forward
    lse_ptr,  # [N] fp32, saved by the forward
    g_ptr,  # [N] fp32: d loss / d lse, or d loss / d logp if HAS_TARGET
    gh_ptr,  # [splits, N, H] fp32 out, zero-initialised: this split's part of grad_hidden
    N, V, H, stride_hn, stride_wv, tiles_per_split,
    HAS_BIAS: tl.constexpr, HAS_TARGET: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    rows, pid_s, v_start = _program_rows(tiles_per_split, BLOCK_N, BLOCK_V)
    if HAS_TARGET:
        tgt = tl.load(t_ptr + rows, mask=rows < N, other=-1)
    lse = tl.load(lse_ptr + rows, mask=rows < N, other=0.0)
    lse = tl.where(lse == float("-inf"), 0.0, lse)  # a row of all -inf logits has softmax 0, not NaN
    g = tl.load(g_ptr + rows, mask=rows < N, other=0.0)
    gh_split = gh_ptr + pid_s * N * H
    for t in range(0, tiles_per_split):
        cols = v_start + t * BLOCK_V + tl.arange(0, BLOCK_V)
        z = _logits_tile(
            h_ptr, w_ptr, b_ptr, rows, cols, N, V, H, stride_hn, stride_wv,
            HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, DOT_FP32, PRECISION,
        )  # fmt: skip
        if HAS_TARGET:
            onehot = tl.where(cols[None, :] == tgt[:, None], 1.0, 0.0)
            dz = g[:, None] * (onehot - tl.exp(z - lse[:, None]))  # d logp / d logit = onehot - softmax
        else:
            dz = g[:, None] * tl.exp(z - lse[:, None])  # d lse / d logit = softmax
        _add_grad_hidden(dz, w_ptr, gh_split, rows, cols, N, V, H, stride_wv, BLOCK_H, DOT_FP32, PRECISION)
