#!/usr/bin/env bash
# Everything in this repository that needs a GPU, in one run of at most ~8 minutes on one H200-class card:
#
#   1. card.csv        nvidia-smi --query-gpu=name,memory.total, plus env.txt (versions, commit, date)
#   2. gpu_tests.*     every test marked `gpu` (pytest -m gpu): Triton vs the torch references, the Triton backward
#                      kernels, fp16 / P(yes) edge cases, peak memory vs eager, CUDA preprocessing, ReFL offload
#   3. kernels.*       bench_kernels.py grid: Triton (fused) vs chunked torch vs eager, bf16, with the bandwidth
#                      bound (weight read once per pass) and each row as a multiple of it
#   4. score.*         bench_score.py --device cuda --dtype bf16 at N = 16 (naive / cached / batch / floor)
#   5. refl.*          bench_refl.py --device cuda: ReFL s / step and CUDA peak memory, tiny pipelines
#
# Usage: benchmarks/gpu_check.sh [OUT_DIR]      (default: $OUT if set, else benchmarks/out/gpu-DATE)
# Every step runs under `timeout` (limits below, seconds; override with the environment variables named there),
# so one hang cannot eat the budget; a failed step is recorded and the next one runs; the exit status is nonzero
# when any step failed. summary.md lists each step's status and time. Without CUDA it stops at once: one line on
# stderr, exit status 2, nothing written. PYTHON picks the interpreter (default: .venv/bin/python, else python3).
# GPU_CHECK_REQUIRE_CUDA=0 skips the CUDA check; it exists to test this script's plumbing on a CPU.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
fi
T_TESTS=${GPU_CHECK_T_TESTS:-100}
T_KERNELS=${GPU_CHECK_T_KERNELS:-140}
T_SCORE=${GPU_CHECK_T_SCORE:-140}
T_REFL=${GPU_CHECK_T_REFL:-90}

if [ "${GPU_CHECK_REQUIRE_CUDA:-1}" != 0 ]; then
    why=$("$PY" -c '
try:
    import torch
except Exception as exc:
    print(f"torch does not import ({type(exc).__name__}: {exc})".splitlines()[0])
else:
    if not torch.cuda.is_available():
        print(f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device")
    else:
        print("ok")
' 2> /dev/null | tail -n 1)
    [ -n "$why" ] || why="$PY does not run"
    if [ "$why" = ok ] && ! command -v nvidia-smi > /dev/null 2>&1; then
        why="nvidia-smi not found"
    fi
    if [ "$why" != ok ]; then
        echo "gpu_check: no CUDA GPU here: $why; run this script on a machine with an NVIDIA GPU" >&2
        exit 2
    fi
fi

OUT_DIR="${1:-${OUT:-benchmarks/out/gpu-$(date -u +%Y%m%d-%H%M%S)}}"
mkdir -p "$OUT_DIR" || { echo "gpu_check: cannot create $OUT_DIR" >&2; exit 2; }
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
failed=0
{
    echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "| step | status | seconds | limit | output |"
    echo "|---|---|---|---|---|"
} > "$OUT_DIR/summary.md"

# step NAME LIMIT CMD...: stdout -> NAME.md, stderr -> NAME.err.log, one summary row
step() {
    local name=$1 limit=$2 start rc status
    shift 2
    echo "gpu_check: $name (limit ${limit} s) ..." >&2
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.md" 2> "$OUT_DIR/$name.err.log"
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status="TIMED OUT" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    [ "$rc" -eq 0 ] || failed=1
    echo "| $name | $status | $(($(date +%s) - start)) | $limit | $name.md, $name.err.log |" >> "$OUT_DIR/summary.md"
    echo "gpu_check: $name: $status" >&2
}

step card 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
cp "$OUT_DIR/card.md" "$OUT_DIR/card.csv" 2> /dev/null
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse HEAD 2> /dev/null || echo unknown)"
    "$PY" -c 'import platform, torch; print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1
    "$PY" -c 'import triton; print("triton", triton.__version__)' 2>&1 | tail -n 1
} > "$OUT_DIR/env.txt"

step gpu_tests "$T_TESTS" "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml="$OUT_DIR/gpu_tests.xml"
# a run where every gpu test skipped is not a pass
if [ -f "$OUT_DIR/gpu_tests.xml" ] && grep -q 'skipped="[1-9]' "$OUT_DIR/gpu_tests.xml"; then
    echo "| gpu_tests | SKIPPED TESTS (see gpu_tests.md) | - | - | gpu_tests.xml |" >> "$OUT_DIR/summary.md"
    failed=1
fi
step kernels "$T_KERNELS" "$PY" benchmarks/bench_kernels.py --device cuda --repeats 3 --warmup 1 \
    --json "$OUT_DIR/kernels.json"
step score "$T_SCORE" "$PY" benchmarks/bench_score.py --device cuda --dtype bf16 --N 16 --repeats 2 \
    --json "$OUT_DIR/score.json"
step refl "$T_REFL" "$PY" benchmarks/bench_refl.py --device cuda --steps 3 --json "$OUT_DIR/refl.json"

cat "$OUT_DIR/summary.md" >&2
if [ "$failed" -ne 0 ]; then
    echo "gpu_check: some steps failed; results in $OUT_DIR" >&2
    exit 1
fi
echo "gpu_check: all steps passed; results in $OUT_DIR" >&2
