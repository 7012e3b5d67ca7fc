"""Shared plumbing for the lm_head kernels: input checks, backend choice, tile plans, the chunked torch path.

Both ops in this package reduce to one expensive quantity, the log-sum-exp over the vocabulary of
``logits = hidden @ weight.T + bias``, plus a few logits of selected ids that are cheap to gather. This module
holds what the two ops share:

- ``check_lm_head_inputs`` / ``as_id_set`` / ``check_targets``: the bad-input rules (clear errors, documented
  conversions), so both ops behave the same;
- ``resolve_backend``: ``"auto" | "triton" | "torch"``, and why Triton cannot run when it cannot;
- ``ChunkedVocabLSEFunction`` and ``chunked_lse_backward``: the bounded-memory torch path (used on CPU, and for
  the weight gradient of the Triton path), which recomputes logit chunks in backward instead of storing them;
- ``load_triton_kernels``: the lazy import of ``triton_kernels`` (the ``@triton.jit`` code);
- ``triton_lse_forward`` / ``triton_lse_backward``: the launchers of its two kernels, which both ops call (the
  target logit and its one-hot gradient switched on by passing ``target``).

Triton is never imported when this module is imported: the interpreter flag ``TRITON_INTERPRET=1`` must be in
the environment before the first ``import triton`` in a process, and transformers, diffusers and peft import it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch.autograd.function import once_differentiable

BACKENDS = ("auto", "triton", "torch")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and memory budgets for the Triton kernels and the chunked torch path.

    The Triton defaults are reasoned, not tuned: no GPU was available when they were chosen (see
    benchmarks/RESULTS.md). ``benchmarks/bench_kernels.py`` is the tool to tune them on a real card.
    """

    block_v: int = field(
        default=128, metadata={"help": "vocabulary rows of the weight per Triton tile (power of two, >= 16)"}
    )
    block_h: int = field(default=64, metadata={"help": "hidden columns per tl.dot step (power of two, >= 16)"})
    max_block_n: int = field(default=64, metadata={"help": "largest number of hidden rows per Triton program"})
    programs_per_sm: int = field(
        default=2,
        metadata={"help": "grid size target on CUDA; small N is split over V so every SM streams its share of W"},
    )
    interpreter_programs: int = field(
        default=8, metadata={"help": "grid size target under TRITON_INTERPRET=1 (exercises the V split in tests)"}
    )
    split_buffer_bytes: int = field(
        default=64 << 20,
        metadata={"help": "cap on the fp32 [splits, N, H] partial grad_hidden buffer of the Triton backward"},
    )
    chunk_elements: int = field(
        default=1 << 23,
        metadata={
            "help": "fp32 elements per logits chunk ([N, C]) and per upcast weight chunk ([C, H]) in the torch "
            "path: 8M elements = 32 MiB each"
        },
    )
    num_warps: int = field(default=4, metadata={"help": "warps per Triton program"})


DEFAULT_CONFIG = KernelConfig()


# ----------------------------------------------------------------------------------------------- input checks
def check_lm_head_inputs(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, op: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate ``hidden [N, H]``, ``weight [V, H]``, ``bias [V] | None``; return them ready for any backend.

    Errors (never a silent wrong answer): a non-tensor, a non-floating dtype, a wrong rank, a hidden size that does
    not match the weight's, a bias of the wrong length, tensors on different devices.
    Conversions (documented): a tensor whose last dimension is not contiguous is copied with ``.contiguous()``;
    float64 is accepted and computed in fp32 like every other dtype.
    """
    named = {"hidden": hidden, "weight": weight}
    if bias is not None:
        named["bias"] = bias
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} must be float32, float16, bfloat16 or float64, got {t.dtype}")
    if hidden.dim() != 2:
        raise ValueError(f"{op}: hidden must be [N, H], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be [V, H] (the lm_head weight), got shape {tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{op}: hidden size mismatch: hidden is {tuple(hidden.shape)} but weight is {tuple(weight.shape)} "
            f"(expected hidden [N, {weight.shape[1]}])"
        )
    if weight.shape[0] == 0:
        raise ValueError(f"{op}: weight has an empty vocabulary (shape {tuple(weight.shape)})")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(f"{op}: bias must be [V] = [{weight.shape[0]}], got shape {tuple(bias.shape)}")
    devices = {t.device for t in named.values()}
    if len(devices) != 1:
        raise ValueError(f"{op}: hidden, weight and bias must be on one device, got {sorted(map(str, devices))}")

    def _rowmajor(t: torch.Tensor) -> torch.Tensor:
        return t if t.stride(-1) == 1 else t.contiguous()

    return _rowmajor(hidden), _rowmajor(weight), None if bias is None else bias.contiguous()


def as_id_set(ids, vocab_size: int, device: torch.device, name: str, op: str) -> torch.Tensor:
    """Token ids (list of ints or integer tensor) -> sorted unique LongTensor on ``device`` (duplicates count once).

    Raises ValueError for an empty set or an id outside ``[0, vocab_size)``, TypeError for non-integer ids.
    """
    if isinstance(ids, torch.Tensor):
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"{op}: {name} must hold integer token ids, got a {ids.dtype} tensor")
        t = ids.reshape(-1).to(device=device, dtype=torch.long)
    else:
        try:
            ids = list(ids)
            values = [int(i) for i in ids]
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{op}: {name} must be a list of ints or an integer tensor, got {ids!r}") from exc
        if any(v != i for v, i in zip(values, ids)):
            raise TypeError(f"{op}: {name} must hold integer token ids, got {list(ids)}")
        t = torch.tensor(values, dtype=torch.long, device=device)
    if t.numel() == 0:
        raise ValueError(f"{op}: {name} is empty; give at least one token id")
    t = torch.unique(t)  # sorted, duplicates dropped
    lo, hi = int(t[0]), int(t[-1])
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{op}: {name} contains id {bad}, outside the vocabulary [0, {vocab_size})")
    return t


def check_targets(target_ids: torch.Tensor, n_rows: int, vocab_size: int, ignore_index: int, op: str) -> torch.Tensor:
    """Validate ``target_ids [N]`` (ints in ``[0, V)`` or ``ignore_index``); return them as int64 on their device."""
    if not isinstance(target_ids, torch.Tensor):
        target_ids = torch.as_tensor(target_ids)
    if target_ids.dtype.is_floating_point or target_ids.dtype.is_complex or target_ids.dtype == torch.bool:
        raise TypeError(f"{op}: target_ids must be an integer tensor, got {target_ids.dtype}")
    if target_ids.dim() != 1 or target_ids.shape[0] != n_rows:
        raise ValueError(f"{op}: target_ids must be [N] = [{n_rows}], got shape {tuple(target_ids.shape)}")
    target_ids = target_ids.long()
    live = target_ids[target_ids != ignore_index]
    if live.numel():
        lo, hi = int(live.min()), int(live.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{op}: target_ids contains {bad}, outside the vocabulary [0, {vocab_size}) "
                f"and not ignore_index={ignore_index}"
            )
    return target_ids


# --------------------------------------------------------------------------------------------- backend choice
def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` is set to a true value in this process's environment."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def import_triton():
    """Import and return ``(triton, triton.language)``; RuntimeError with the reason when that fails."""
    try:
        import triton
        import triton.language as tl
    except ImportError as exc:  # pragma: no cover - triton ships with CUDA builds of torch
        raise RuntimeError(
            "backend='triton' needs the triton package (pip install 'rewarddance[triton]'); "
            "use backend='auto' or 'torch' to run the chunked torch path"
        ) from exc
    return triton, tl


def resolve_backend(backend: str, device: torch.device, op: str) -> str:
    """Pick ``"triton"`` or ``"torch"`` for tensors on ``device``.

    ``"auto"``: Triton on CUDA when triton imports, else the chunked torch path. ``"triton"`` on a CPU tensor runs
    only under the Triton interpreter and raises RuntimeError saying so otherwise. ``"torch"``: the chunked path.
    """
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        try:
            import_triton()
        except RuntimeError:
            return "torch"
        return "triton"
    cpu_msg = (
        f"{op}: backend='triton' got tensors on {device}; Triton runs on CUDA tensors, or on the CPU only under "
        "the Triton interpreter, which needs TRITON_INTERPRET=1 in the environment before triton is first "
        "imported (transformers, diffusers and peft import it), i.e. in a fresh process. "
        "Use backend='auto' or 'torch' for the chunked torch path."
    )
    if device.type != "cuda" and not interpreter_enabled():
        raise RuntimeError(cpu_msg)
    kernels = load_triton_kernels()
    if device.type != "cuda" and type(kernels._lse_fwd_kernel).__name__ != "InterpretedFunction":
        # the kernels were compiled-mode functions already: the flag came after triton (or they) were imported
        raise RuntimeError(cpu_msg)
    return "triton"


def load_triton_kernels():
    """Import and return the ``triton_kernels`` module (imports triton); RuntimeError when triton is missing."""
    import_triton()
    from . import triton_kernels

    return triton_kernels


# ------------------------------------------------------------------------------------------------ tile planning
def next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


@dataclass(frozen=True)
class TilePlan:
    """Grid and block sizes of one kernel launch: ``grid = (row_blocks, splits)``, each split owns a V range."""

    block_n: int
    block_v: int
    block_h: int
    row_blocks: int
    splits: int
    tiles_per_split: int
    dot_fp32: bool
    precision: str


def plan_tiles(
    n_rows: int,
    vocab_size: int,
    hidden_size: int,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    config: KernelConfig,
    split_bytes_per_split: int = 0,
) -> TilePlan:
    """Choose block sizes and the V split for ``n_rows`` rows.

    Small N gives few row blocks, and one program streaming all of W would leave most SMs idle, so V is split
    until the grid reaches ``programs_per_sm`` x SMs (flash-decoding style); partial results are combined in torch.
    ``split_bytes_per_split`` (the backward's fp32 partial grad_hidden per split) bounds the number of splits so
    that buffer stays under ``config.split_buffer_bytes`` and under the size of eager's fp32 logits.
    """
    block_n = min(config.max_block_n, max(16, next_pow2(n_rows)))
    block_v = config.block_v
    block_h = min(config.block_h, max(16, next_pow2(hidden_size)))
    row_blocks = -(-n_rows // block_n)
    n_tiles = -(-vocab_size // block_v)
    if interpreter_enabled() or hidden.device.type != "cuda":
        target_programs = config.interpreter_programs
    else:
        sms = torch.cuda.get_device_properties(hidden.device).multi_processor_count
        target_programs = config.programs_per_sm * sms
    splits = max(1, min(n_tiles, -(-target_programs // row_blocks)))
    if split_bytes_per_split > 0:
        # the backward's partial buffer never outgrows the fp32 [N, V] logits that eager would hold
        budget = min(config.split_buffer_bytes, n_rows * vocab_size * 4)
        splits = max(1, min(splits, budget // split_bytes_per_split))
    tiles_per_split = -(-n_tiles // splits)
    splits = -(-n_tiles // tiles_per_split)  # no split is left without tiles
    # The Triton interpreter (3.8) stores bfloat16 as uint16 and its tl.dot on bf16 operands returns garbage, so
    # bf16 tiles are upcast to fp32 there; mixed dtypes are upcast everywhere (exact, like the reference).
    mixed = hidden.dtype != weight.dtype
    bf16_interp = interpreter_enabled() and weight.dtype == torch.bfloat16
    dot_fp32 = mixed or bf16_interp or weight.dtype == torch.float32
    # fp32 operands: "ieee", not the TF32 default, whose 10-bit mantissa moves logits of ~30 by ~0.03.
    precision = "ieee" if dot_fp32 else "tf32"
    return TilePlan(block_n, block_v, block_h, row_blocks, splits, tiles_per_split, dot_fp32, precision)


def kernel_dtype_inputs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """float64 -> float32 for the Triton path (documented conversion: the kernels compute in fp32)."""

    def conv(t):
        return t if t is None or t.dtype != torch.float64 else t.float()

    return conv(hidden), conv(weight), conv(bias)


# ------------------------------------------------------------------------------------------ Triton launchers
def _launch(kernel, plan: TilePlan, config: KernelConfig, hidden, weight, bias, target, *buffers) -> None:
    """Launch one of the two kernels of ``triton_kernels`` over ``plan``'s grid; ``buffers`` are the pointers
    between the target and the sizes. An absent bias or target passes a dummy pointer that the kernel never reads."""
    N, H = hidden.shape  # rows, hidden size
    V = weight.shape[0]  # vocabulary
    kernel[(plan.row_blocks, plan.splits)](
        hidden, weight, weight if bias is None else bias, hidden if target is None else target.contiguous(),
        *buffers, N, V, H, hidden.stride(0), weight.stride(0), plan.tiles_per_split,
        HAS_BIAS=bias is not None, HAS_TARGET=target is not None, BLOCK_N=plan.block_n, BLOCK_V=plan.block_v,
        BLOCK_H=plan.block_h, DOT_FP32=plan.dot_fp32, PRECISION=plan.precision, num_warps=config.num_warps,
    )  # fmt: skip


def triton_lse_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor | None,
    config: KernelConfig = DEFAULT_CONFIG,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward kernel: fp32 ``lse [N]`` over V of ``hidden @ weight.T + bias``, and with ``target`` ([N] ids in
    ``[0, V)``) also each row's fp32 target logit ``[N]`` (else None)."""
    N, H = hidden.shape  # rows, hidden size
    plan = plan_tiles(N, weight.shape[0], H, hidden, weight, config)
    m = torch.empty(plan.splits, N, dtype=torch.float32, device=hidden.device)
    s = torch.empty_like(m)
    zt = m if target is None else torch.empty_like(m)  # m is a dummy the kernel does not write without a target
    _launch(load_triton_kernels()._lse_fwd_kernel, plan, config, hidden, weight, bias, target, m, s, zt)
    lse = torch.logsumexp(m + torch.log(s), dim=0)  # combine splits: [N]
    return lse, None if target is None else zt.sum(0)


def triton_lse_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor | None,
    lse: torch.Tensor,
    grad: torch.Tensor,
    config: KernelConfig = DEFAULT_CONFIG,
) -> torch.Tensor:
    """Backward kernel, tiles recomputed: fp32 ``grad_hidden [N, H]`` of ``sum(grad * lse)``, or with ``target``
    of ``sum(grad * logp)`` where ``logp = logit[target] - lse``."""
    N, H = hidden.shape  # rows, hidden size
    plan = plan_tiles(N, weight.shape[0], H, hidden, weight, config, split_bytes_per_split=N * H * 4)
    gh = torch.zeros(plan.splits, N, H, dtype=torch.float32, device=hidden.device)
    kernel = load_triton_kernels()._lse_bwd_kernel
    _launch(kernel, plan, config, hidden, weight, bias, target, lse.contiguous(), grad.float().contiguous(), gh)
    return gh[0] if plan.splits == 1 else gh.sum(0)


# ------------------------------------------------------------------------------------- chunked torch path
def chunk_size(n_rows: int, vocab_size: int, hidden_size: int, config: KernelConfig) -> int:
    """Vocabulary rows per chunk so that the fp32 logits chunk [N, C] and weight chunk [C, H] stay in budget."""
    c = config.chunk_elements // max(1, n_rows, hidden_size)
    return int(min(vocab_size, max(128, c)))


def _logits_chunk(h32: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, v0: int, v1: int):
    """fp32 logits [N, v1 - v0] and the fp32 weight chunk [v1 - v0, H] that made them."""
    w32 = weight[v0:v1].float()
    z = h32 @ w32.T
    if bias is not None:
        z.add_(bias[v0:v1].float())
    return z, w32


def chunked_lse_forward(hidden, weight, bias, config: KernelConfig = DEFAULT_CONFIG) -> torch.Tensor:
    """logsumexp over V of ``hidden @ weight.T + bias``, fp32 [N], holding one [N, C] chunk at a time."""
    N, H = hidden.shape  # rows, hidden size
    V = weight.shape[0]  # vocabulary
    h32 = hidden.float()
    step = chunk_size(N, V, H, config)
    # allocated before the loop: small tensors kept alive between the chunk buffers would pin the freed chunks
    # in the malloc heap (measured: +175 MiB RSS at N=256, V=151936 with a list of per-chunk results)
    parts = torch.empty(-(-V // step), N, dtype=torch.float32, device=hidden.device)  # [chunks, N]
    for i, v0 in enumerate(range(0, V, step)):
        z, _ = _logits_chunk(h32, weight, bias, v0, min(V, v0 + step))
        torch.logsumexp(z, dim=1, out=parts[i])
    return torch.logsumexp(parts, dim=0)  # [N]


def chunked_lse_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lse: torch.Tensor,
    grad_lse: torch.Tensor,
    target: torch.Tensor | None = None,
    grad_target: torch.Tensor | None = None,
    needs: tuple[bool, bool, bool] = (True, True, True),
    config: KernelConfig = DEFAULT_CONFIG,
):
    """Gradients of ``sum(grad_lse * lse + grad_target * logits[n, target[n]])`` by recomputing logit chunks.

    d/dlogits = grad_lse[:, None] * softmax(logits) (+ grad_target at each row's target column). Returns fp32
    ``(grad_hidden [N, H] | None, grad_weight [V, H] | None, grad_bias [V] | None)`` as flagged in ``needs``.
    """
    need_h, need_w, need_b = needs
    N, H = hidden.shape  # rows, hidden size
    V = weight.shape[0]  # vocabulary
    h32 = hidden.float()
    lse_safe = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)  # rows of all -inf: softmax := 0
    g = grad_lse.float()[:, None]
    gh = torch.zeros(N, H, dtype=torch.float32, device=hidden.device) if need_h else None
    gw = torch.zeros(V, H, dtype=torch.float32, device=hidden.device) if need_w else None
    gb = torch.zeros(V, dtype=torch.float32, device=hidden.device) if need_b else None
    step = chunk_size(N, V, H, config)
    for v0 in range(0, V, step):
        v1 = min(V, v0 + step)
        z, w32 = _logits_chunk(h32, weight, bias, v0, v1)
        dz = torch.exp(z.sub_(lse_safe[:, None])).mul_(g)  # [N, C], in place: one chunk buffer
        if need_h:
            gh.addmm_(dz, w32)
        if need_w:
            torch.mm(dz.T, h32, out=gw[v0:v1])
        if need_b:
            torch.sum(dz, dim=0, out=gb[v0:v1])
    if target is not None:
        gt = grad_target.float()
        if need_h:
            gh.add_(gt[:, None] * weight.index_select(0, target).float())
        if need_w:
            gw.index_add_(0, target, gt[:, None] * h32)
        if need_b:
            gb.index_add_(0, target, gt)
    return gh, gw, gb


class ChunkedVocabLSEFunction(torch.autograd.Function):
    """Autograd wrapper of the chunked torch path: forward keeps only ``lse [N]``, backward recomputes chunks."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, config):
        lse = chunked_lse_forward(hidden, weight, bias, config)
        ctx.save_for_backward(hidden, weight, bias, lse)
        ctx.config = config
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_lse):
        hidden, weight, bias = ctx.saved_tensors[:3]
        lse = ctx.saved_tensors[3]
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        gh, gw, gb = chunked_lse_backward(hidden, weight, bias, lse, grad_lse, needs=needs, config=ctx.config)
        return (
            None if gh is None else gh.to(hidden.dtype),
            None if gw is None else gw.to(weight.dtype),
            None if gb is None else gb.to(bias.dtype),
            None,
        )


def chunked_vocab_lse(hidden, weight, bias=None, config: KernelConfig = DEFAULT_CONFIG) -> torch.Tensor:
    """Differentiable logsumexp over V of ``hidden @ weight.T + bias`` (fp32 [N]) with bounded memory."""
    return ChunkedVocabLSEFunction.apply(hidden, weight, bias, config)


def selected_logits(hidden, weight, bias, ids: torch.Tensor) -> torch.Tensor:
    """fp32 logits [N, K] of the K vocabulary ids ``ids``, differentiable; touches only K rows of the weight."""
    z = hidden.float() @ weight.index_select(0, ids).float().T
    if bias is not None:
        z = z + bias.index_select(0, ids).float()
    return z
