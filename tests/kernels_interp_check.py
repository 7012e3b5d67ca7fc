"""Triton kernels of ``rewarddance.kernels`` under the Triton interpreter, against the torch references.

Not collected by a plain ``pytest`` run (the name does not start with ``test_``): ``tests/test_kernels.py`` runs it
in a child process with ``TRITON_INTERPRET=1`` in the environment, which must be there before triton's first import
(its tests skip without it). By hand: ``TRITON_INTERPRET=1 python -m pytest tests/kernels_interp_check.py -q``.

Tolerances: the kernels compute in fp32 from the same inputs as the reference, so forward outputs agree to
accumulation order (fp32 1e-5) in every input dtype; gradients come back in the input dtype, so they may differ by
one rounding step of that dtype (bf16 ~ 2^-8, fp16 ~ 2^-11 relative).
"""

import importlib
import itertools
import os

import pytest
import torch

from rewarddance.kernels import (
    KernelConfig,
    selected_logprobs,
    selected_logprobs_reference,
    yes_prob,
    yes_prob_reference,
)

# The comparison helpers below are also used by tests/test_kernels.py (backend="torch"); only the tests of this
# module need the interpreter.
pytestmark = [
    pytest.mark.interpreter,
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 before triton is imported"
    ),
]

BLOCK_V = KernelConfig().block_v
# (dtype, forward atol, forward rtol, grad atol, grad rtol)
DTYPES = [
    (torch.float32, 1e-5, 1e-5, 1e-5, 1e-4),
    (torch.bfloat16, 1e-5, 1e-5, 2e-2, 2e-2),
    (torch.float16, 1e-5, 1e-5, 2e-3, 2e-3),
]
# (N, H, V): the full grid; V = 4097 is 33 tiles of 128 (one id in the last), V = 257 ends one past 2 tiles.
SHAPES = list(itertools.product((1, 7, 64), (16, 48), (257, 1023, 4097)))


def make_inputs(N, H, V, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g).to(dtype)
    weight = (torch.randn(V, H, generator=g) / H**0.5 * 3).to(dtype)
    b = (torch.randn(V, generator=g) * 0.5).to(dtype) if bias else None
    return hidden, weight, b


def all_mass_on_yes(seed=0):
    """64 rows whose softmax puts all its mass on 11 yes ids (every other logit is ~-1e4 below): P(yes) is 1 up to
    rounding, and the two log-sum-exps behind it round either way (checked: some rows gave 1 + 2^-22 before the
    clamp). Returns ``(hidden, weight, bias, yes_ids)``."""
    g = torch.Generator().manual_seed(seed)
    N, H, V = 64, 48, 1023
    hidden = torch.randn(N, H, generator=g)
    weight = torch.randn(V, H, generator=g) / H**0.5
    yes = list(range(0, V, 97))
    bias = torch.full((V,), -1e4)
    bias[yes] = 0.0
    return hidden, weight, bias, yes


def tiny_gradient_inputs():
    """fp16 hidden [8, 16] and weight [4097, 16] with near-uniform logits (softmax ~ 2.4e-4) and an upstream
    gradient of 1e-4 per row, so every d/dlogit off the target is ~2.4e-8: zero once rounded to fp16. The weight
    rows share a common direction, so the many tiny terms add up to a gradient of ~1e-4 instead of cancelling."""
    g = torch.Generator().manual_seed(11)
    N, H, V = 8, 16, 4097
    hidden = (torch.randn(N, H, generator=g) * 0.05).half()
    weight = (1.0 + 0.3 * torch.randn(V, H, generator=g)).half()
    target = torch.arange(N) * 509 % V
    return hidden, weight, target, torch.full((N,), 1e-4)


def tiny_gradient_reference(hidden, weight, target, g):
    """fp32 grad_hidden of ``sum(g * lse)`` and of ``sum(g * logp[target])`` from full logits."""
    h, w = hidden.float(), weight.float()
    soft = torch.softmax(h @ w.T, dim=1)
    onehot = torch.nn.functional.one_hot(target, w.shape[0]).float()
    return (g[:, None] * soft) @ w, (g[:, None] * (onehot - soft)) @ w


def leaves(*ts):
    # detach, not clone: a strided view stays strided
    return [None if t is None else t.detach().requires_grad_(True) for t in ts]


def check_close(a, b, atol, rtol, what):
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def run_yes_prob(hidden, weight, bias, yes, no, normalize, grads, tol, backend="triton", config=None):
    """Forward and backward of ``backend`` vs the reference; ``grads`` names the inputs that require grad."""
    _, fa, fr, ga, gr = tol
    outs = []
    for fn, kw in ((yes_prob, {"backend": backend, "config": config}), (yes_prob_reference, {})):
        h, w, b = leaves(hidden, weight, bias)
        w.requires_grad_("weight" in grads)
        if b is not None:
            b.requires_grad_("bias" in grads)
        p, m = fn(h, w, yes, no, bias=b, normalize=normalize, **kw)
        # margins may be +-inf when an id set is all -inf: weight only the finite ones
        loss = p.sum() + 0.3 * torch.where(m.isfinite(), m, 0).sum()
        loss.backward()
        outs.append((p, m, h.grad, w.grad, None if b is None else b.grad))
    (p, m, gh, gw, gb), (rp, rm, rgh, rgw, rgb) = outs
    check_close(p, rp, fa, fr, "p_yes")
    check_close(m, rm, max(fa, 1e-4), fr, "margin")
    assert p.dtype == torch.float32 and m.dtype == torch.float32
    check_close(gh, rgh, ga, gr, "grad hidden")
    if "weight" in grads:
        check_close(gw, rgw, ga, gr, "grad weight")
    if "bias" in grads and bias is not None:
        check_close(gb, rgb, ga, gr, "grad bias")


def run_selected(hidden, weight, bias, target, grads, tol, ignore_index=-100, backend="triton", config=None):
    """Forward and backward of ``backend`` vs the reference; returns the tested ``(logp, grad_hidden)``."""
    _, fa, fr, ga, gr = tol
    outs = []
    for fn, kw in ((selected_logprobs, {"backend": backend, "config": config}), (selected_logprobs_reference, {})):
        h, w, b = leaves(hidden, weight, bias)
        w.requires_grad_("weight" in grads)
        if b is not None:
            b.requires_grad_("bias" in grads)
        lp = fn(h, w, target, bias=b, ignore_index=ignore_index, **kw)
        coeff = torch.linspace(0.5, 1.5, lp.shape[0], device=lp.device)
        (coeff * lp).sum().backward()
        outs.append((lp, h.grad, w.grad, None if b is None else b.grad))
    (lp, gh, gw, gb), (rlp, rgh, rgw, rgb) = outs
    check_close(lp, rlp, max(fa, 1e-4), fr, "logp")
    check_close(gh, rgh, ga, gr, "grad hidden")
    if "weight" in grads:
        check_close(gw, rgw, ga, gr, "grad weight")
    if "bias" in grads and bias is not None:
        check_close(gb, rgb, ga, gr, "grad bias")
    return lp, gh


@pytest.mark.parametrize("tol", DTYPES, ids=lambda t: str(t[0]).removeprefix("torch."))
@pytest.mark.parametrize("N,H,V", SHAPES)
def test_yes_prob_matches_reference(N, H, V, tol):
    hidden, weight, bias = make_inputs(N, H, V, tol[0], bias=(N + V) % 2 == 0)
    yes = [0, BLOCK_V - 1, BLOCK_V, V - 1]  # tile edges and the last id
    no = [1, V // 2 + 1, V - 2]
    run_yes_prob(hidden, weight, bias, yes, no, "vocab", ("hidden",), tol)


@pytest.mark.parametrize("tol", DTYPES, ids=lambda t: str(t[0]).removeprefix("torch."))
@pytest.mark.parametrize("N,H,V", SHAPES)
def test_selected_logprobs_matches_reference(N, H, V, tol):
    hidden, weight, bias = make_inputs(N, H, V, tol[0], bias=(N + V) % 2 == 1, seed=1)
    edges = torch.tensor([0, BLOCK_V - 1, BLOCK_V, 2 * BLOCK_V, V - 1])
    target = edges[torch.arange(N) % edges.numel()]
    run_selected(hidden, weight, bias, target, ("hidden",), tol)


def test_yes_prob_repeated_ids_and_trainable_head():
    """Duplicated ids count once; weight and bias gradients (chunked backward behind the Triton forward)."""
    hidden, weight, bias = make_inputs(7, 48, 1023, torch.float32)
    yes = torch.tensor([255, 256, 255, 1022, 256])
    run_yes_prob(hidden, weight, bias, yes, [3, 3, 511], "vocab", ("hidden", "weight", "bias"), DTYPES[0])
    p1, _ = yes_prob(hidden, weight, yes, [3, 3, 511], bias=bias, backend="triton")
    p2, _ = yes_prob(hidden, weight, [255, 256, 1022], [3, 511], bias=bias, backend="triton")
    torch.testing.assert_close(p1, p2, atol=0, rtol=0)


def test_extreme_logits_and_neg_inf_bias():
    """Logits of +-1e4 and -inf bias entries (a masked vocabulary), including -inf on one of the yes ids."""
    N, H, V = 7, 16, 1023
    hidden, weight, _ = make_inputs(N, H, V, torch.float32, seed=3)
    bias = torch.zeros(V)
    bias[::3] = float("-inf")  # a third of the vocabulary masked, every tile touched
    bias[5] = 1e4
    bias[700] = -1e4
    bias[130] = 1e4
    yes = [5, 7, 9]  # 9 has -inf bias: it contributes nothing, and no NaN
    no = [130, 700]
    # fp32 ulp at 1e4 is ~1e-3: logits near 1e4 can round one ulp apart when the dot sums in another order
    tol = (torch.float32, 2e-3, 2e-3, 2e-3, 2e-3)
    run_yes_prob(hidden, weight, bias, yes, no, "vocab", ("hidden", "bias"), tol)
    hidden_big = hidden * 1000.0  # logits of order +-1e4 from the matmul itself: sums of terms ~1e3 round ~1e-3 apart
    run_yes_prob(hidden_big, weight, None, yes, no, "vocab", ("hidden",), (torch.float32, 1e-2, 1e-3, 1e-2, 1e-3))
    target = torch.tensor([5, 130, 700, 1, 4, 1022, 1021])
    lp, gh = run_selected(hidden, weight, bias, target, ("hidden", "bias"), tol)
    assert torch.isfinite(gh).all()
    target_masked = torch.tensor([0, 3, 5, 7, 9, 12, 1020])  # 0, 3, 9, 12, 1020: -inf bias -> log p = -inf
    lp = selected_logprobs(hidden, weight, target_masked, bias=bias, backend="triton")
    ref = selected_logprobs_reference(hidden, weight, target_masked, bias=bias)
    assert torch.equal(torch.isneginf(lp), torch.isneginf(ref))
    check_close(lp[lp.isfinite()], ref[ref.isfinite()], 2e-3, 2e-3, "logp")


def test_ignore_index_rows_are_zero_with_zero_grad():
    hidden, weight, bias = make_inputs(64, 48, 1023, torch.bfloat16, seed=4)
    target = torch.randint(0, 1023, (64,), generator=torch.Generator().manual_seed(0))
    target[::3] = -100
    lp, gh = run_selected(hidden, weight, bias, target, ("hidden", "weight", "bias"), DTYPES[1])
    assert torch.equal(lp[::3], torch.zeros_like(lp[::3]))
    assert torch.equal(gh[::3], torch.zeros_like(gh[::3]))
    target[:] = 7  # another ignore_index
    target[1] = 1022
    lp, gh = run_selected(hidden, weight, bias, target, ("hidden",), DTYPES[1], ignore_index=7)
    assert (lp[[0] + list(range(2, 64))] == 0).all() and lp[1] < 0
    everything_ignored = torch.full((64,), -100)
    h = hidden.clone().requires_grad_(True)
    lp = selected_logprobs(h, weight, everything_ignored, bias=bias, backend="triton")
    lp.sum().backward()
    assert torch.equal(lp, torch.zeros(64)) and torch.equal(h.grad, torch.zeros_like(h))


def test_yes_no_normalization_and_empty_batch():
    hidden, weight, bias = make_inputs(7, 48, 1023, torch.float16, seed=5)
    run_yes_prob(hidden, weight, bias, [10, 300], [500], "yes_no", ("hidden", "weight"), DTYPES[2])
    p, m = yes_prob(hidden[:0], weight, [1], [2], bias=bias, backend="triton")
    assert p.shape == (0,) and m.shape == (0,)
    lp = selected_logprobs(hidden[:0], weight, torch.zeros(0, dtype=torch.long), backend="triton")
    assert lp.shape == (0,)


def test_strided_and_mixed_dtype_inputs():
    """Row strides other than H go to the kernel as strides; a non-contiguous last dim is copied; fp32 x bf16."""
    N, H, V = 7, 48, 1023
    hidden, weight, bias = make_inputs(N, H, V, torch.float32, seed=6)
    wide_w = torch.zeros(V, H + 5)
    wide_w[:, :H] = weight
    wide_h = torch.zeros(N, H + 3)
    wide_h[:, :H] = hidden
    strided = (wide_h[:, :H], wide_w[:, :H])  # stride(0) != H, stride(1) == 1
    assert strided[1].stride(0) == H + 5
    run_yes_prob(strided[0], strided[1], bias, [1, 2], [3], "vocab", ("hidden",), DTYPES[0])
    transposed_h = hidden.T.contiguous().T  # stride(1) != 1: copied by the checks
    run_selected(transposed_h, strided[1], bias, torch.arange(N) * 100, ("hidden",), DTYPES[0])
    run_yes_prob(hidden, weight.to(torch.bfloat16), None, [1, 2], [3], "vocab", ("hidden",), DTYPES[1])
    run_yes_prob(hidden.double(), weight.double(), None, [1, 2], [3], "vocab", ("hidden",), DTYPES[0])


def test_p_yes_never_above_one_when_all_mass_is_on_yes_ids():
    """P(yes) is exp(lse_yes - lse_vocab) with the two log-sum-exps summed in different orders; with every bit of
    mass on the yes ids they can round either way, and P(yes) must still not pass 1."""
    hidden, weight, bias, yes = all_mass_on_yes()
    p, _ = yes_prob(hidden, weight, yes, [1], bias=bias, backend="triton")
    assert p.max().item() <= 1.0, p.max().item()
    torch.testing.assert_close(p, torch.ones_like(p), atol=1e-6, rtol=0)


def test_fp16_backward_keeps_tiny_softmax_gradients():
    """fp16 weights with an upstream gradient of 1e-4 over ~4k near-uniform logits: each d/dlogit is ~2e-8, below
    half of fp16's smallest subnormal (6e-8), so a dz rounded to fp16 before the product would be 0; the launchers'
    fp32 grad_hidden must match the fp32 reference of the same fp16 inputs."""
    from rewarddance.kernels.selected_logprobs import selected_logprobs_backward, selected_logprobs_forward
    from rewarddance.kernels.yes_prob import yes_prob_backward, yes_prob_forward

    hidden, weight, target, g = tiny_gradient_inputs()
    ref_yes, ref_sel = tiny_gradient_reference(hidden, weight, target, g)
    lse = yes_prob_forward(hidden, weight, None)
    gh = yes_prob_backward(hidden, weight, None, lse, g)
    check_close(gh, ref_yes, 1e-3 * ref_yes.abs().max().item(), 0, "yes_prob grad hidden, fp16, tiny dz")
    _, lse = selected_logprobs_forward(hidden, weight, None, target)
    gh = selected_logprobs_backward(hidden, weight, None, target, lse, g)
    check_close(gh, ref_sel, 1e-3 * ref_sel.abs().max().item(), 0, "selected_logprobs grad hidden, fp16, tiny dz")


def spy_backwards(monkeypatch) -> list:
    """Record, in the returned list, each call of the Triton backward launchers and of the chunked torch backward."""
    calls = []

    def wrap(mod, name, label):
        real = getattr(mod, name)

        def spy(*a, **k):
            calls.append(label)
            return real(*a, **k)

        monkeypatch.setattr(mod, name, spy)

    for mod_name in ("selected_logprobs", "yes_prob"):
        mod = importlib.import_module(f"rewarddance.kernels.{mod_name}")
        wrap(mod, f"{mod_name}_backward", f"{mod_name}_backward")
        wrap(mod, "chunked_lse_backward", "chunked")
    return calls


def check_frozen_head_backward(monkeypatch, device="cpu", shapes=((64, 48, 1023),)):
    """With only hidden requiring grad, the backward must be the Triton kernel (a trainable weight or bias selects
    the chunked torch path instead): which one ran, and the gradient against the reference, in every dtype."""
    calls = spy_backwards(monkeypatch)
    for (N, H, V), tol in itertools.product(shapes, DTYPES):
        hidden, weight, bias = (None if t is None else t.to(device) for t in make_inputs(N, H, V, tol[0], seed=7))
        if device != "cpu" and tol[0] == torch.float32:
            tol = (torch.float32, 1e-4, 1e-4, 1e-4, 1e-3)
        target = torch.arange(N, device=device) * 37 % V
        calls.clear()
        run_selected(hidden, weight, bias, target, ("hidden",), tol)
        assert calls == ["selected_logprobs_backward"], calls
        calls.clear()
        run_yes_prob(hidden, weight, bias, [0, 127, 128, V - 1], [5], "vocab", ("hidden",), tol)
        assert calls == ["yes_prob_backward"], calls


def test_frozen_head_uses_the_triton_backward(monkeypatch):
    check_frozen_head_backward(monkeypatch)
