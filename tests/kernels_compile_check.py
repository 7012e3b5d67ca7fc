"""Compile the Triton kernels for real GPU targets (sm_80, sm_90) without a GPU: frontend, TTGIR, PTX, ptxas.

The interpreter runs the kernels' Python, not Triton's compiler; this catches what only the compiler rejects
(types, layouts, constexpr misuse, shared memory over budget). Run by ``tests/test_kernels.py`` in a child process
without ``TRITON_INTERPRET`` (under the interpreter ``triton.jit`` returns Python functions, not compilable ones).
By hand: ``python -m pytest tests/kernels_compile_check.py -q``.
"""

import os

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET", "0") == "1", reason="the compiler check needs TRITON_INTERPRET unset"
)

KERNELS = ("_lse_fwd_kernel", "_lse_bwd_kernel")
CONSTEXPRS = ("HAS_BIAS", "HAS_TARGET", "BLOCK_N", "BLOCK_V", "BLOCK_H", "DOT_FP32", "PRECISION")
# H100 shared memory per block: 227 KiB
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def signature(kernel, dtype: str) -> dict:
    sig = {}
    for name in kernel.arg_names:
        if name in CONSTEXPRS:
            sig[name] = "constexpr"
        elif name in ("h_ptr", "w_ptr", "b_ptr"):
            sig[name] = f"*{dtype}"
        elif name == "t_ptr":
            sig[name] = "*i64"
        elif name.endswith("_ptr"):
            sig[name] = "*fp32"
        else:
            sig[name] = "i32"
    return sig


# (BLOCK_N, dtype, sm): each dtype and both BLOCK_N extremes once on Hopper, bf16 on Ampere (~1-2 s a compile)
VARIANTS = [(64, "bf16", 90), (16, "fp16", 90), (16, "fp32", 90), (64, "bf16", 80)]


@pytest.mark.parametrize("block_n,dtype,arch", VARIANTS)
@pytest.mark.parametrize("has_target", (False, True), ids=("yes_prob", "selected_logprobs"))
@pytest.mark.parametrize("name", KERNELS)
def test_kernel_compiles_for_gpu(name, has_target, block_n, dtype, arch):
    triton = pytest.importorskip("triton")
    from triton.backends import backends
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if "nvidia" not in backends:
        pytest.skip("this triton build has no NVIDIA backend")
    from rewarddance.kernels import KernelConfig, triton_kernels

    cfg = KernelConfig()
    kernel = getattr(triton_kernels, name)
    fp32 = dtype == "fp32"
    constexprs = {
        "HAS_BIAS": True,
        "HAS_TARGET": has_target,
        "BLOCK_N": block_n,
        "BLOCK_V": cfg.block_v,
        "BLOCK_H": cfg.block_h,
        "DOT_FP32": fp32,
        "PRECISION": "ieee" if fp32 else "tf32",
    }
    src = ASTSource(fn=kernel, signature=signature(kernel, dtype), constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": cfg.num_warps})
    assert "cubin" in compiled.asm
    assert compiled.metadata.shared <= SMEM_LIMIT[arch]
    if not fp32:
        assert "mma" in compiled.asm["ptx"], "half-precision tiles should run on tensor cores"
