"""Benchmark the fused lm_head kernels against eager torch (full logits, log_softmax, gather).

Ops: ``yes_prob`` (P(yes) and margin over a few ids, normalised over the vocabulary) and ``selected_logprobs``
(log p(target) per row). Implementations:

- ``fused``: the public function with ``backend="auto"`` - Triton on CUDA, the chunked torch path on the CPU;
- ``chunked``: ``backend="torch"`` (on a GPU this compares the chunked path with Triton; on the CPU = ``fused``);
- ``eager``: ``hidden @ weight.T`` -> fp32 -> ``log_softmax`` -> gather / logsumexp, the [N, V] way.

Modes: ``forward`` (no autograd graph, as when scoring), ``backward`` (backward only, graph built untimed),
``full`` (forward + backward). Time: median of ``--repeats`` runs after ``--warmup``.
Peak memory, what it is:
- CUDA: ``torch.cuda.max_memory_allocated()`` during the run minus what was allocated before it (inputs excluded);
- CPU: each (case, impl, mode) runs in a fresh child process; peak = ``ru_maxrss`` after the runs minus the resident
  set size right after building the inputs (inputs excluded; allocator and page granularity included). ``backward``
  rows on the CPU report the peak of the whole forward + backward, as ``full`` does.
On CUDA each row also gives the bandwidth bound: the time to read the weight from memory once per pass,
V * H * bytes / memory bandwidth (forward and backward: one pass each; full: two), and each row's time as a
multiple of it ("x bound"; 1.0 would be the weight streamed at full bandwidth and nothing else). The bandwidth is
the card's (memory clock x bus width, from torch) unless ``--bandwidth-gbs`` gives it. ``--json FILE`` also writes
every row.

Examples::

    python benchmarks/bench_kernels.py --quick                       # CPU-sized subset, a few minutes
    python benchmarks/bench_kernels.py --N 4096 --V 151936 --H 2048 --modes forward full --repeats 1 --warmup 0
    python benchmarks/bench_kernels.py                               # the issue's full grid (GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

from rewarddance.kernels import selected_logprobs, yes_prob

OPS = ("yes_prob", "selected_logprobs")
IMPLS = ("fused", "chunked", "eager")
MODES = ("forward", "backward", "full")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
YES_IDS = [9454, 9693, 14004]  # a few ids, as a tokenizer's yes variants
NO_IDS = [2152, 2753, 2308]


@dataclass
class Case:
    op: str
    impl: str
    mode: str
    N: int
    H: int
    V: int
    dtype: str
    device: str


# ------------------------------------------------------------------------------------------------ setup factory
def make_inputs(case: Case):
    """hidden [N, H] (requires grad unless forward), frozen weight [V, H], and the op's ids; built in dtype."""
    g = torch.Generator(device=case.device).manual_seed(0)
    dtype = DTYPES[case.dtype]
    hidden = torch.randn(case.N, case.H, generator=g, device=case.device, dtype=dtype)
    weight = torch.randn(case.V, case.H, generator=g, device=case.device, dtype=dtype)
    weight.mul_(case.H**-0.5)
    hidden.requires_grad_(case.mode != "forward")
    target = torch.randint(0, case.V, (case.N,), generator=g, device=case.device)
    return hidden, weight, target


def make_fn(case: Case, hidden, weight, target):
    """A closure returning the scalar-reducible output of one forward pass of ``case.impl``."""
    yes = torch.tensor([i % case.V for i in YES_IDS], device=case.device)
    no = torch.tensor([i % case.V for i in NO_IDS if i % case.V not in yes.tolist()], device=case.device)
    if case.impl == "eager":

        def eager():
            logp = torch.log_softmax((hidden @ weight.T).float(), dim=-1)  # [N, V]
            if case.op == "selected_logprobs":
                return logp.gather(1, target[:, None]).squeeze(1)
            lp_yes = torch.logsumexp(logp.index_select(1, yes), dim=1)
            lp_no = torch.logsumexp(logp.index_select(1, no), dim=1)
            return lp_yes.exp() + (lp_yes - lp_no)

        return eager
    backend = "auto" if case.impl == "fused" else "torch"
    if case.op == "selected_logprobs":
        return lambda: selected_logprobs(hidden, weight, target, backend=backend)

    def fused_yes():
        p, margin = yes_prob(hidden, weight, yes, no, backend=backend)
        return p + margin

    return fused_yes


# ------------------------------------------------------------------------------------------------- measurement
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(case: Case, repeats: int, warmup: int) -> dict:
    """Run one case in this process: median ms and peak bytes above the inputs."""
    hidden, weight, target = make_inputs(case)
    fn = make_fn(case, hidden, weight, target)
    sync(case.device)
    if case.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()

    def once() -> float:
        if case.mode == "forward":
            with torch.no_grad():
                sync(case.device)
                t0 = time.perf_counter()
                fn()
                sync(case.device)
                return time.perf_counter() - t0
        hidden.grad = None
        if case.mode == "backward":
            out = fn().sum()  # graph built outside the timed region
            sync(case.device)
            t0 = time.perf_counter()
            out.backward()
        else:
            sync(case.device)
            t0 = time.perf_counter()
            fn().sum().backward()
        sync(case.device)
        return time.perf_counter() - t0

    for _ in range(warmup):
        once()
    times = [once() for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated() - base if case.device == "cuda" else peak_rss_bytes() - base
    return {"ms": 1e3 * statistics.median(times), "peak_bytes": max(0, peak)}


def measure_in_child(case: Case, repeats: int, warmup: int) -> dict:
    """CPU: one fresh process per case, so that ru_maxrss is this case's own high-water mark."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", json.dumps(asdict(case))]
    cmd += ["--repeats", str(repeats), "--warmup", str(warmup)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {"ms": float("nan"), "peak_bytes": -1, "error": res.stderr.strip().splitlines()[-1:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------- report
def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def memory_bandwidth(device: str, override_gbs: float | None) -> float | None:
    """Bytes per second of device memory: from --bandwidth-gbs, else the CUDA clock and bus width."""
    if override_gbs:
        return override_gbs * 1e9
    if device != "cuda":
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None  # DDR: two transfers a clock


def fmt_bytes(n: float) -> str:
    if n < 0:
        return "error"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), help="which ops to run")
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=None, help="default: fused eager (+ chunked on GPU)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="forward / backward / full")
    p.add_argument("--V", nargs="+", type=int, default=[32_000, 151_936], help="vocabulary sizes")
    p.add_argument("--H", nargs="+", type=int, default=[2_048, 3_584], help="hidden sizes")
    p.add_argument("--N", nargs="+", type=int, default=[16, 256, 4_096], help="rows (tokens scored)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="default: bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per row (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (Triton compiles on the first)")
    p.add_argument("--quick", action="store_true", help="CPU-sized subset: H=2048, N in {16, 256}, 3 repeats")
    p.add_argument("--bandwidth-gbs", type=float, default=None, help="memory bandwidth for the bound, GB/s")
    p.add_argument("--json", default=None, help="also write every row to this file")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args._child:
        case = Case(**json.loads(args._child))
        print(json.dumps(measure(case, args.repeats, args.warmup)))
        return
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = args.dtype or ("bf16" if device == "cuda" else "fp32")
    impls = args.impls or (["fused", "chunked", "eager"] if device == "cuda" else ["fused", "eager"])
    if args.quick:
        args.H, args.N, args.repeats = [2_048], [16, 256], min(args.repeats, 3)
    name = device_name(device)
    bandwidth = memory_bandwidth(device, args.bandwidth_gbs)
    print(f"# bench_kernels: {name}, torch {torch.__version__}, {dtype}, median of {args.repeats}")
    print(
        "| op | mode | N | H | V | impl | ms | peak mem | mem vs eager | speed vs eager | weight-read bound ms | "
        "x bound | device |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    if bandwidth:
        print(f"<!-- memory bandwidth for the bound: {bandwidth / 1e9:.0f} GB/s -->")
    results = []
    for op in args.ops:
        for V in args.V:
            for H in args.H:
                for N in args.N:
                    for mode in args.modes:
                        rows = {}
                        for impl in impls:
                            case = Case(op, impl, mode, N, H, V, dtype, device)
                            run = measure_in_child if device == "cpu" else measure
                            rows[impl] = run(case, args.repeats, args.warmup)
                        bound_ms = None
                        if bandwidth:
                            passes = 2 if mode == "full" else 1  # the weight is streamed once per pass
                            bound_ms = 1e3 * passes * V * H * DTYPES[dtype].itemsize / bandwidth
                        bound = "" if bound_ms is None else f"{bound_ms:.3f}"
                        eager = rows.get("eager")
                        for impl, r in rows.items():
                            mem_ratio = speed = ""
                            if eager and impl != "eager" and r["peak_bytes"] > 0:
                                mem_ratio = f"{eager['peak_bytes'] / r['peak_bytes']:.1f}x lower"
                                speed = f"{eager['ms'] / r['ms']:.2f}x"
                            x_bound = "" if bound_ms is None else f"{r['ms'] / bound_ms:.1f}"
                            print(
                                f"| {op} | {mode} | {N} | {H} | {V} | {impl} | {r['ms']:.2f} | "
                                f"{fmt_bytes(r['peak_bytes'])} | {mem_ratio} | {speed} | {bound} | {x_bound} | "
                                f"{name} |",
                                flush=True,
                            )
                            results.append({**asdict(Case(op, impl, mode, N, H, V, dtype, device)), **r})
                            results[-1]["bound_ms"] = bound_ms
                            if args.json:  # rewritten after every row, so a run cut short keeps what it measured
                                with open(args.json, "w") as f:
                                    json.dump({"device": name, "torch": torch.__version__, "rows": results}, f)
                            if "error" in r:
                                print(f"<!-- {impl} failed: {r['error']} -->", flush=True)


if __name__ == "__main__":
    main()
