"""Tests of ``rewarddance.kernels``: chunked torch path vs reference, bad input, and (in child processes) the
Triton kernels under the interpreter and through the GPU compiler. GPU runs are marked ``gpu``.

Tolerances (stated once): outputs are fp32 computed from the same inputs as the reference, so forward values
agree to fp32 accumulation order (1e-5) in every input dtype; gradients come back in the input dtype and may
differ by one rounding step of it (bf16 2e-2, fp16 2e-3 relative).
"""

import itertools
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from kernels_interp_check import (
    DTYPES,
    all_mass_on_yes,
    check_frozen_head_backward,
    make_inputs,
    run_selected,
    run_yes_prob,
    tiny_gradient_inputs,
    tiny_gradient_reference,
)

from rewarddance.kernels import (
    KernelConfig,
    selected_logprobs,
    selected_logprobs_reference,
    yes_prob,
    yes_prob_reference,
)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SHAPES = list(itertools.product((1, 7, 64), (16, 48), (257, 1023, 4097)))  # (N, H, V), the grid
# chunks of 128 vocabulary rows at these sizes: every test crosses chunk edges and has a partial last chunk
SMALL_CHUNKS = KernelConfig(chunk_elements=128 * 16)
DTYPE_IDS = [str(t[0]).removeprefix("torch.") for t in DTYPES]


# ------------------------------------------------------------------------------ chunked torch path vs reference
@pytest.mark.parametrize("tol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("N,H,V", SHAPES)
def test_chunked_yes_prob_matches_reference(N, H, V, tol):
    hidden, weight, bias = make_inputs(N, H, V, tol[0], bias=V != 1023)
    yes = [0, 127, 128, V - 1, 127]
    no = [1, V // 2 + 1]
    grads = ("hidden", "weight", "bias") if N == 7 else ("hidden",)
    run_yes_prob(hidden, weight, bias, yes, no, "vocab", grads, tol, backend="torch", config=SMALL_CHUNKS)
    run_yes_prob(hidden, weight, bias, yes, no, "yes_no", ("hidden",), tol, backend="torch")


@pytest.mark.parametrize("tol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("N,H,V", SHAPES)
def test_chunked_selected_logprobs_matches_reference(N, H, V, tol):
    hidden, weight, bias = make_inputs(N, H, V, tol[0], bias=V != 257, seed=1)
    target = torch.tensor([0, 127, 128, V - 1, -100, 5, 5])[torch.arange(N) % 7]
    grads = ("hidden", "weight", "bias") if N == 7 else ("hidden",)
    lp, gh = run_selected(hidden, weight, bias, target, grads, tol, backend="torch", config=SMALL_CHUNKS)
    ignored = target == -100
    assert torch.equal(lp[ignored], torch.zeros_like(lp[ignored]))
    assert torch.equal(gh[ignored], torch.zeros_like(gh[ignored]))


def test_chunked_extreme_logits_and_neg_inf_bias():
    N, H, V = 7, 16, 1023
    hidden, weight, _ = make_inputs(N, H, V, torch.float32, seed=3)
    bias = torch.zeros(V)
    bias[::3] = float("-inf")
    bias[[5, 130]] = 1e4
    bias[700] = -1e4
    tol = (torch.float32, 2e-3, 2e-3, 2e-3, 2e-3)  # fp32 ulp at 1e4 is ~1e-3
    run_yes_prob(hidden, weight, bias, [5, 6, 9], [130, 700], "vocab", ("hidden", "bias"), tol, backend="torch")
    run_selected(hidden, weight, bias, torch.tensor([5, 130, 700, 1, 4, 1022, 1021]), ("hidden",), tol, backend="torch")
    lp = selected_logprobs(hidden, weight, torch.tensor([0, 3, 5, 7, 9, 12, 1020]), bias=bias, backend="torch")
    assert torch.isneginf(lp[[0, 1, 4, 5, 6]]).all() and torch.isfinite(lp[[2, 3]]).all()


def test_chunked_p_yes_never_above_one_when_all_mass_is_on_yes_ids():
    """The chunked log-sum-exp and the yes ids' own one round differently; P(yes) must still stay <= 1 (before the
    clamp this input gave 1 + 2^-22 on some rows)."""
    hidden, weight, bias, yes = all_mass_on_yes()
    for normalize in ("vocab", "yes_no"):
        p, _ = yes_prob(hidden, weight, yes, [1], bias=bias, normalize=normalize, backend="torch", config=SMALL_CHUNKS)
        assert p.max().item() <= 1.0, (normalize, p.max().item())
        torch.testing.assert_close(p, torch.ones_like(p), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------ realistic size: V = 151_936, H = 1_536
@pytest.fixture(scope="module")
def qwen_head():
    """A Qwen2-1.5B-sized lm_head (V = 151_936, H = 1_536), fp32 random weight, built once."""
    g = torch.Generator().manual_seed(0)
    V, H = 151_936, 1_536
    weight = torch.randn(V, H, generator=g) * (1.0 / H**0.5)
    return weight


def test_chunked_realistic_size_yes_prob(qwen_head):
    """P(yes) of a reward model (1e-5) and its hidden gradient at full vocabulary size, chunked vs reference."""
    weight = qwen_head
    V, H = weight.shape
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, H, generator=g) * 4
    yes, no = [9454, 9693, 151_935], [2152, 2753]  # Qwen's "Yes"/"yes" and "No"/"no", plus the last id
    bias = torch.zeros(V)
    bias[yes + no] = 12.0  # make P(yes) a probability of order 0.1-0.9, as after an answer prompt
    tol = (torch.float32, 1e-5, 1e-5, 1e-5, 1e-4)
    run_yes_prob(hidden, weight, bias, yes, no, "vocab", ("hidden",), tol, backend="torch")
    p, _ = yes_prob(hidden, weight, yes, no, bias=bias, backend="torch")
    assert ((p > 0.01) & (p < 0.99)).any()


def test_chunked_realistic_size_selected_logprobs(qwen_head):
    """Cross-entropy rows at full vocabulary size, bf16 hidden states (weight gradients: the small-V tests)."""
    weight = qwen_head
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(5, weight.shape[1], generator=g).to(torch.bfloat16)
    target = torch.tensor([9454, 2152, -100, 151_935, 0])
    tol = (torch.bfloat16, 1e-5, 1e-5, 2e-2, 2e-2)
    run_selected(hidden, weight, None, target, ("hidden",), tol, backend="torch")


# -------------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def small():
    hidden, weight, bias = make_inputs(3, 16, 257, torch.float32)
    return hidden, weight, bias


def test_bad_shapes_raise(small):
    hidden, weight, bias = small
    with pytest.raises(ValueError, match="hidden size mismatch"):
        yes_prob(hidden[:, :15], weight, [1], [2])
    with pytest.raises(ValueError, match="hidden size mismatch"):
        selected_logprobs(hidden, weight[:, :8], torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"hidden must be \[N, H\]"):
        yes_prob(hidden[None], weight, [1], [2])
    with pytest.raises(ValueError, match=r"bias must be \[V\]"):
        yes_prob(hidden, weight, [1], [2], bias=bias[:-1])
    with pytest.raises(ValueError, match=r"target_ids must be \[N\]"):
        selected_logprobs(hidden, weight, torch.tensor([1, 2]))


def test_bad_ids_raise(small):
    hidden, weight, _ = small
    with pytest.raises(ValueError, match="yes_ids contains id 257, outside the vocabulary"):
        yes_prob(hidden, weight, [3, 257], [2])
    with pytest.raises(ValueError, match="no_ids contains id -1"):
        yes_prob(hidden, weight, [3], torch.tensor([-1]))
    with pytest.raises(ValueError, match="yes_ids is empty"):
        yes_prob(hidden, weight, [], [2])
    with pytest.raises(ValueError, match="no_ids is empty"):
        yes_prob_reference(hidden, weight, [1], torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="in both yes_ids and no_ids"):
        yes_prob(hidden, weight, [1, 2], [2, 3])
    with pytest.raises(TypeError, match="integer token ids"):
        yes_prob(hidden, weight, torch.tensor([1.0]), [2])
    with pytest.raises(TypeError, match="integer token ids"):
        yes_prob(hidden, weight, [1.5], [2])
    with pytest.raises(ValueError, match="target_ids contains 257"):
        selected_logprobs(hidden, weight, torch.tensor([1, 257, -100]))
    with pytest.raises(ValueError, match="target_ids contains -5"):
        selected_logprobs_reference(hidden, weight, torch.tensor([1, -5, -100]))
    with pytest.raises(TypeError, match="target_ids must be an integer tensor"):
        selected_logprobs(hidden, weight, torch.tensor([1.0, 2.0, 3.0]))


def test_bad_dtypes_and_options_raise(small):
    hidden, weight, _ = small
    with pytest.raises(TypeError, match="hidden must be float32"):
        yes_prob(hidden.long(), weight, [1], [2])
    with pytest.raises(TypeError, match="weight must be float32"):
        selected_logprobs(hidden, weight.to(torch.int8), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="normalize must be one of"):
        yes_prob(hidden, weight, [1], [2], normalize="softmax")
    with pytest.raises(ValueError, match="backend must be one of"):
        yes_prob(hidden, weight, [1], [2], backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        selected_logprobs(hidden, weight, torch.tensor([1, 2, 3]), backend="liger")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter is on in this process")
def test_triton_backend_on_cpu_without_interpreter_says_why(small):
    hidden, weight, _ = small
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        yes_prob(hidden, weight, [1], [2], backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        selected_logprobs(hidden, weight, torch.tensor([1, 2, 3]), backend="triton")


def test_documented_conversions(small):
    """Non-contiguous inputs are copied, float64 is computed in fp32, an empty batch gives empty outputs."""
    hidden, weight, bias = small
    p_ref, m_ref = yes_prob_reference(hidden, weight, [1, 5], [2], bias=bias)
    h_t = hidden.T.contiguous().T  # stride(-1) != 1
    w_t = weight.T.contiguous().T
    assert h_t.stride(-1) != 1 and w_t.stride(-1) != 1
    p, m = yes_prob(h_t, w_t, [1, 5], [2], bias=bias[None].expand(2, -1)[0], backend="torch")
    torch.testing.assert_close(p, p_ref, atol=1e-5, rtol=1e-5)
    p, m = yes_prob(hidden.double(), weight.double(), [1, 5], [2], bias=bias.double(), backend="torch")
    assert p.dtype == torch.float32 and m.dtype == torch.float32
    torch.testing.assert_close(m, m_ref, atol=1e-5, rtol=1e-5)
    p, m = yes_prob(hidden[:0], weight, [1], [2], backend="torch")
    assert p.shape == (0,) and m.shape == (0,)
    lp = selected_logprobs(hidden, weight, [1, 2, -100], backend="torch")  # a plain list of targets
    torch.testing.assert_close(lp, selected_logprobs_reference(hidden, weight, torch.tensor([1, 2, -100])))


# ----------------------------------------------------------------------------------------- import discipline
IMPORT_PROBE = """
import importlib.util, sys, types
# load rewarddance.kernels without rewarddance/__init__.py (which pulls in transformers, and transformers triton)
spec = importlib.util.find_spec("rewarddance")
pkg = types.ModuleType("rewarddance")
pkg.__path__ = list(spec.submodule_search_locations)
sys.modules["rewarddance"] = pkg
import torch
import rewarddance.kernels as K
assert "triton" not in sys.modules, "importing rewarddance.kernels imported triton"
h, w = torch.randn(2, 16), torch.randn(40, 16)
K.yes_prob(h, w, [1], [2])
K.selected_logprobs(h, w, torch.tensor([1, 2]))
assert "triton" not in sys.modules, "backend='auto' on the CPU imported triton"
print("ok")
"""


def test_import_and_cpu_auto_never_import_triton():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout + res.stderr


# ------------------------------------------------------------------------- Triton, in their own processes
def run_child_pytest(module: str, env: dict, tmp_path: Path, timeout: int) -> ET.Element:
    report = tmp_path / f"{module}.xml"
    cmd = [sys.executable, "-m", "pytest", str(TESTS / module), "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    suite = ET.parse(report).getroot()
    return suite if suite.tag == "testsuite" else suite.find("testsuite")


@pytest.mark.interpreter
def test_triton_kernels_under_interpreter(tmp_path):
    """Runs tests/kernels_interp_check.py with TRITON_INTERPRET=1 set before triton's first import (~30 s)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    suite = run_child_pytest("kernels_interp_check.py", env, tmp_path, timeout=900)
    assert int(suite.get("failures")) == 0 and int(suite.get("errors")) == 0
    assert int(suite.get("skipped")) == 0, "interpreter tests were skipped: TRITON_INTERPRET did not reach them"
    assert int(suite.get("tests")) >= 100


@pytest.mark.slow  # ~30 s of compiling: run by .ci/run after the README command
def test_triton_kernels_compile_for_gpu(tmp_path):
    """Runs tests/kernels_compile_check.py: compiles every kernel to cubin for sm_80 / sm_90 (no GPU needed)."""
    triton = pytest.importorskip("triton")
    del triton
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    suite = run_child_pytest("kernels_compile_check.py", env, tmp_path, timeout=900)
    assert int(suite.get("failures")) == 0 and int(suite.get("errors")) == 0
    if int(suite.get("tests")) == int(suite.get("skipped")):
        pytest.skip("this triton build cannot compile for NVIDIA targets")


# --------------------------------------------------------------------------------------------------- on a GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("N,H,V", [(1, 48, 4097), (64, 48, 1023), (7, 16, 257), (300, 2048, 32_000)])
def test_triton_on_gpu_matches_reference(N, H, V, tol):
    hidden, weight, bias = (None if t is None else t.cuda() for t in make_inputs(N, H, V, tol[0]))
    assert yes_prob(hidden, weight, [1], [2])[0].is_cuda  # auto -> Triton on CUDA
    gpu_tol = tol if tol[0] != torch.float32 else (torch.float32, 1e-4, 1e-4, 1e-4, 1e-3)
    run_yes_prob(hidden, weight, bias, [0, 127, 128, V - 1], [5, V - 2], "vocab", ("hidden",), gpu_tol)
    target = torch.arange(N, device="cuda") * 37 % V
    target[::5] = -100
    run_selected(hidden, weight, bias, target, ("hidden", "weight", "bias"), gpu_tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_backward_kernels_on_gpu(monkeypatch):
    """The test above asks for weight and bias gradients, which route the backward to the chunked torch path; here
    only hidden requires grad, so the Triton backward kernels run (checked with a spy) against the reference."""
    check_frozen_head_backward(monkeypatch, "cuda", [(1, 48, 4097), (64, 48, 1023), (300, 2048, 32_000)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_on_gpu_fp16_tiny_gradients_and_p_yes_at_most_one():
    """fp16 backward with d/dlogits below fp16's range (kept in fp32, tf32 dot) and P(yes) <= 1 on the card."""
    from rewarddance.kernels.selected_logprobs import selected_logprobs_backward, selected_logprobs_forward
    from rewarddance.kernels.yes_prob import yes_prob_backward, yes_prob_forward

    hidden, weight, target, g = (t.cuda() for t in tiny_gradient_inputs())
    ref_yes, ref_sel = tiny_gradient_reference(hidden, weight, target, g)
    gh = yes_prob_backward(hidden, weight, None, yes_prob_forward(hidden, weight, None), g)
    torch.testing.assert_close(gh, ref_yes, atol=2e-3 * ref_yes.abs().max().item(), rtol=0)
    _, lse = selected_logprobs_forward(hidden, weight, None, target)
    gh = selected_logprobs_backward(hidden, weight, None, target, lse, g)
    torch.testing.assert_close(gh, ref_sel, atol=2e-3 * ref_sel.abs().max().item(), rtol=0)
    hidden, weight, bias, yes = (t.cuda() if torch.is_tensor(t) else t for t in all_mass_on_yes())
    p, _ = yes_prob(hidden, weight, yes, [1], bias=bias)
    assert p.max().item() <= 1.0, p.max().item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_on_gpu_memory_below_eager():
    """Peak memory of the fused forward+backward at N = 4096, V = 151_936 is at least 8x below eager's."""
    N, H, V = 4096, 1536, 151_936
    weight = torch.randn(V, H, device="cuda", dtype=torch.bfloat16) / H**0.5
    hidden = torch.randn(N, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    target = torch.randint(0, V, (N,), device="cuda")

    def peak(fn):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn().sum().backward()
        torch.cuda.synchronize()
        hidden.grad = None
        return torch.cuda.max_memory_allocated() - base

    fused = peak(lambda: selected_logprobs(hidden, weight, target))
    eager = peak(lambda: torch.log_softmax((hidden @ weight.T).float(), -1).gather(1, target[:, None]))
    assert fused * 8 <= eager, (fused, eager)


# ------------------------------------------------------------------------------------ benchmarks/gpu_check.sh
GPU_CHECK = ROOT / "benchmarks" / "gpu_check.sh"


def test_gpu_check_script_fails_in_one_line_without_cuda(tmp_path):
    assert subprocess.run(["bash", "-n", str(GPU_CHECK)]).returncode == 0
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(["bash", str(GPU_CHECK), str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA GPU here: "), res.stderr
    assert "sees no CUDA device" in lines[0] and res.stdout == ""
    assert not out.exists(), "nothing may be written when the check fails"


def test_gpu_check_script_keeps_going_and_exits_nonzero(tmp_path):
    """The plumbing without a GPU (the CUDA check switched off, 2 s limits): each step fails or times out, every
    later step still runs and gets its row in summary.md, and the exit status says that something failed."""
    out = tmp_path / "out"
    limits = {f"GPU_CHECK_T_{k}": "2" for k in ("TESTS", "KERNELS", "SCORE", "REFL")}
    env = {**os.environ, **limits, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "GPU_CHECK_REQUIRE_CUDA": "0"}
    res = subprocess.run(["bash", str(GPU_CHECK), str(out)], env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 1, res.stderr
    rows = [line.split("|")[1:3] for line in (out / "summary.md").read_text().splitlines() if line.startswith("| ")]
    status = {name.strip(): s.strip() for name, s in rows[1:]}
    assert list(status)[:1] == ["card"] and {"gpu_tests", "kernels", "score", "refl"} <= set(status), status
    for name in ("gpu_tests", "kernels", "score", "refl"):
        assert status[name].startswith(("FAILED", "TIMED OUT")), (name, status[name])
    assert (out / "env.txt").read_text().startswith("date: ")
    assert "some steps failed" in res.stderr.strip().splitlines()[-1]
