"""Benchmark scoring N candidates against the naive per-image ``generate`` loop, on a realistically sized VLM.

The model is an Idefics3 architecture the size of SmolVLM-256M-Instruct, built offline with random weights:
text = Llama, hidden 576, 30 layers, 9 heads, 3 KV heads, MLP 1536, vocabulary 49 280; vision = SigLIP, hidden
768, 12 layers, 12 heads, MLP 3072, patch 16, 512 px; connector = pixel shuffle with scale factor 4, so one 512-px
image is one tile of 1024 patches -> 64 image tokens. The processor works at 512 px without splitting
(``do_image_splitting=False``): a 512-px image is one tile either way (SmolVLM's own processor, at a longest edge
of 2048, would also leave a 512-px image whole), so every item holds exactly one tile per image.

For N = 1, 4, 16 candidates sharing one prompt, one instruction and (pairwise) one reference image, methods:

- ``naive``: what people do today (t2v_metrics style): per candidate, ``rm.prepare`` for that one item, then
  ``model.generate(max_new_tokens=1, output_scores=True, return_dict_in_generate=True)``; P(yes) = the yes ids'
  share of the softmax of the scores. The reference image is encoded once per candidate.
- ``cached``: ``rm.compare`` / ``rm.score`` with the shared-prefix KV cache (the default).
- ``batch``: the same with ``rm.prefix_cache = False``: one left-padded batch of N full items.
- ``floor``: the model compute that no method can avoid: the vision tower + connector
  (``model.model.get_image_features``) on each distinct image once, one image per call (N + 1 images pairwise,
  N pointwise), then one text-model pass over the shared prefix (with the reference image's features merged in)
  and one batched pass over the N candidates' suffixes reading the prefix's KV cache, and the yes/no read-out.
  Token ids and pixel values are made before the clock starts: tokenisation and image preprocessing are not in
  the floor.

Time: each repeat runs every method once, interleaved (naive, cached, batch, floor), so that load from other
processes on a shared machine falls on all methods alike; the median of ``--repeats`` after one warm-up call of
every method. Throughput = N / median seconds.

Peak memory: each (task, N, method) runs once more in a fresh child process. On the CPU, after the model and the
images are loaded the child resets the kernel's peak-RSS mark (``/proc/self/clear_refs``, 5) and reports
``VmHWM - VmRSS`` at that point, i.e. the peak resident memory above the loaded model during one call (first call,
so lazy allocations count); where the mark cannot be reset it falls back to ``ru_maxrss`` (which then includes
the load). On CUDA: ``torch.cuda.max_memory_allocated()`` during the call minus what was allocated before it.

Agreement: ``cached``, ``batch`` and ``floor`` give P(yes) and margins for the same items as ``naive``; the largest
absolute differences are printed (random weights put P(yes) near (#yes ids) / vocabulary, so the margin and the
relative difference of P(yes) are printed as well).

Examples::

    python benchmarks/bench_score.py --quick                 # N = 1, 4; 2 repeats (about 10 min on 2 CPU cores)
    python benchmarks/bench_score.py                         # N = 1, 4, 16; 3 repeats
    python benchmarks/bench_score.py --device cuda --dtype bf16
    python benchmarks/bench_score.py --arch tiny --N 1 4     # a tiny model, to try the script in a minute
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TASKS = ("pairwise", "pointwise")
METHODS = ("naive", "cached", "batch", "floor")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPT = "a red cat sitting on a blue square to the left of a yellow circle"


# ------------------------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class Arch:
    """Sizes of the benchmarked Idefics3 model."""

    hidden: int = 576
    layers: int = 30
    heads: int = 9
    kv_heads: int = 3
    intermediate: int = 1536
    vocab: int = 49280
    vision_hidden: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_intermediate: int = 3072
    patch: int = 16
    image_size: int = 512
    scale_factor: int = 4

    @property
    def image_seq_len(self) -> int:
        return (self.image_size // self.patch) ** 2 // self.scale_factor**2


ARCHS = {
    "smolvlm-256m": Arch(),
    "tiny": Arch(
        hidden=64,
        layers=2,
        heads=4,
        kv_heads=2,
        intermediate=128,
        vocab=2048,
        vision_hidden=32,
        vision_layers=2,
        vision_heads=2,
        vision_intermediate=64,
        patch=8,
        image_size=64,
        scale_factor=2,
    ),
}


def build_model(arch: Arch, out_dir: Path, seed: int = 0) -> Path:
    """Save a random Idefics3 model of ``arch`` with the offline tokenizer and a one-tile processor."""
    import transformers as tf

    from rewarddance.testing.tiny import build_tokenizer

    tokenizer = build_tokenizer("idefics3")
    tid = tokenizer.convert_tokens_to_ids
    text = dict(
        model_type="llama",
        vocab_size=max(arch.vocab, len(tokenizer)),  # the tokenizer uses the first ids; the rest are unused rows
        hidden_size=arch.hidden,
        intermediate_size=arch.intermediate,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.kv_heads,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=arch.vision_hidden,
        intermediate_size=arch.vision_intermediate,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads,
        patch_size=arch.patch,
        image_size=arch.image_size,
    )
    config = tf.Idefics3Config(
        text_config=text, vision_config=vision, scale_factor=arch.scale_factor, image_token_id=tid("<image>")
    )
    torch.manual_seed(seed)
    model = tf.Idefics3ForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    edge = {"longest_edge": arch.image_size}
    image_processor = tf.Idefics3ImageProcessor(size=edge, max_image_size=edge, do_image_splitting=False)
    processor = tf.Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=arch.image_seq_len,
        chat_template=tokenizer.chat_template,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def make_images(n: int, size: int, seed: int = 0) -> list:
    """``n`` distinct RGB ``size`` x ``size`` PIL images (smooth random colour fields)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        out.append(Image.fromarray(small).resize((size, size), Image.BICUBIC))
    return out


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({torch.get_num_threads()} threads)"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------- the methods
def _answer(rm, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """P(yes) and margin from next-token logits ``[B, V]``, as the naive loop computes them."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    lp_yes = torch.logsumexp(logp[:, rm.yes_ids], dim=-1)
    lp_no = torch.logsumexp(logp[:, rm.no_ids], dim=-1)
    return lp_yes.exp().cpu(), (lp_yes - lp_no).cpu()


def _on_device(rm, inputs) -> dict:
    out = {}
    for k, v in inputs.items():
        v = v.to(rm.device)
        out[k] = v.to(rm.dtype) if torch.is_floating_point(v) else v
    return out


def run_naive(rm, cands, ref, pairwise: bool):
    """One ``generate`` call per candidate on that item's processor inputs (t2v_metrics style)."""
    p_all, m_all = [], []
    for img in cands:
        inputs = rm.prepare([img], PROMPT, references=[ref] if pairwise else None)
        out = rm.model.generate(
            **_on_device(rm, inputs),
            max_new_tokens=1,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
        p, m = _answer(rm, out.scores[0])
        p_all.append(p)
        m_all.append(m)
    return torch.cat(p_all), torch.cat(m_all)


def run_rm(rm, cands, ref, pairwise: bool, prefix_cache: bool):
    rm.prefix_cache = prefix_cache
    out = rm.compare(cands, [ref], PROMPT) if pairwise else rm.score(cands, PROMPT)
    rm.prefix_cache = True
    return out.p_yes, out.margin


class Floor:
    """The unavoidable model compute: each distinct image through vision + connector once, prefix once, suffixes.

    Inputs (ids, pixel values) are prepared in ``__init__``, outside the clock; ``parts`` holds the last call's
    split into vision and text seconds.
    """

    def __init__(self, rm, cands, ref, pairwise: bool):
        from rewarddance.context import RewardContext

        self.rm, self.pairwise = rm, pairwise
        self.context = RewardContext()
        base = rm.backbone
        self.base, self.text_model = base, base.text_model
        self.image_token = base.config.image_token_id
        around = rm.tokenizer.convert_tokens_to_ids("<fake_token_around_image>")
        items = [rm.prepare([c], PROMPT, references=[ref] if pairwise else None) for c in cands]
        ids = [it["input_ids"][0] for it in items]
        if len({len(x) for x in ids}) != 1:
            raise ValueError("floor: candidates of different token lengths are not supported")
        # the candidate's image block starts at the second-to-last <fake_token_around_image>
        self.P = int((ids[0] == around).nonzero()[-2])
        if any(not torch.equal(x[: self.P], ids[0][: self.P]) for x in ids):
            raise ValueError("floor: the candidates do not share the prefix")
        self.prefix_ids = ids[0][: self.P].to(rm.device)
        self.suffix_ids = torch.stack([x[self.P :] for x in ids]).to(rm.device)  # [N, S]

        def pixels(item, k):
            return {
                "pixel_values": item["pixel_values"][:, k : k + 1].to(rm.device, rm.dtype),
                "pixel_attention_mask": item["pixel_attention_mask"][:, k : k + 1].to(rm.device),
            }

        self.ref_pixels = pixels(items[0], 0) if pairwise else None
        self.cand_pixels = [pixels(it, it["pixel_values"].shape[1] - 1) for it in items]
        from rewarddance.prefix import cache_kwarg

        self.cache_arg = cache_kwarg(self.text_model)
        self.parts: dict[str, float] = {}

    def _features(self, px) -> torch.Tensor:
        return self.base.get_image_features(**px).pooler_output[0]  # [image_seq_len, H]

    def _embed(self, ids: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        """Token embeddings ``[B, L, H]`` with each row's image tokens replaced by its features."""
        emb = self.text_model.get_input_embeddings()(ids)
        for r, f in enumerate(feats):
            if f is not None:
                emb[r][ids[r] == self.image_token] = f.to(emb.dtype)
        return emb

    @torch.no_grad()
    def __call__(self):
        from transformers import DynamicCache

        dev = str(self.rm.device)
        sync(dev)
        t0 = time.perf_counter()
        ref_feat = self._features(self.ref_pixels) if self.pairwise else None
        cand_feats = [self._features(px) for px in self.cand_pixels]
        sync(dev)
        t1 = time.perf_counter()
        P = self.P
        N, S = self.suffix_ids.shape
        prefix_emb = self._embed(self.prefix_ids[None], [ref_feat])
        out = self.text_model(
            inputs_embeds=prefix_emb, attention_mask=torch.ones(1, P, dtype=torch.long, device=dev), use_cache=True
        )
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        expanded = DynamicCache()
        for layer_idx, layer in enumerate(cache.layers):
            k, v = layer.keys, layer.values
            expanded.update(k.expand(N, *k.shape[1:]), v.expand(N, *v.shape[1:]), layer_idx)
        suffix_emb = self._embed(self.suffix_ids, cand_feats)
        mask = torch.ones(N, P + S, dtype=torch.long, device=dev)
        out = self.text_model(
            inputs_embeds=suffix_emb, attention_mask=mask, use_cache=True, **{self.cache_arg: expanded}
        )
        p, m = self.rm.read(out.last_hidden_state[:, -1], self.context)
        sync(dev)
        t2 = time.perf_counter()
        self.parts = {"vision": t1 - t0, "text": t2 - t1}
        return p.float().cpu(), m.float().cpu()


def make_method(method: str, rm, cands, ref, pairwise: bool):
    """A zero-argument callable returning (p_yes [N], margin [N]); its setup is done here, outside the clock."""
    if method == "naive":
        return lambda: run_naive(rm, cands, ref, pairwise)
    if method == "cached":
        return lambda: run_rm(rm, cands, ref, pairwise, True)
    if method == "batch":
        return lambda: run_rm(rm, cands, ref, pairwise, False)
    if method == "floor":
        return Floor(rm, cands, ref, pairwise)
    raise ValueError(f"unknown method {method!r}")


def load(args):
    from rewarddance import RewardModel

    torch.set_num_threads(args.threads)
    rm = RewardModel.from_pretrained(args.model_dir, dtype=DTYPES[args.dtype], device=args.device)
    arch = ARCHS[args.arch]
    images = make_images(max(args.N) + 1, arch.image_size)
    return rm, images[0], images[1:]


# ------------------------------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(args) -> None:
    """One (task, N, method) call in this fresh process; prints one JSON line with its peak memory."""
    rm, ref, cands = load(args)
    N = args.N[0]
    fn = make_method(args.method, rm, cands[:N], ref, args.task == "pairwise")
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        how = "cuda max_memory_allocated"
    else:
        reset = _reset_peak()
        before = (_status_kib("VmRSS") or 0) * 1024
        how = "VmHWM after clear_refs" if reset else "ru_maxrss (includes the load)"
    t = time.perf_counter()
    fn()
    sync(args.device)
    seconds = time.perf_counter() - t
    if cuda:
        peak = torch.cuda.max_memory_allocated() - before
    elif how.startswith("VmHWM"):
        peak = (_status_kib("VmHWM") or 0) * 1024 - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print("RESULT " + json.dumps({"peak_bytes": max(peak, 0), "how": how, "seconds": seconds}), flush=True)


def measure_memory(args, task: str, N: int, method: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--task", task, "--method", method, "--N", str(N)]
    cmd += ["--model-dir", str(args.model_dir), "--device", args.device, "--dtype", args.dtype]
    cmd += ["--threads", str(args.threads), "--arch", args.arch]
    res = subprocess.run(cmd, capture_output=True, text=True)
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"memory child {task} N={N} {method} failed:\n{res.stderr[-3000:]}")


# ------------------------------------------------------------------------------------------------- profile
def profile_cached(rm, cands, ref, pairwise: bool) -> dict:
    """Where the cached path's time goes: processor calls, vision calls, text-model passes, the rest."""
    import contextlib

    times: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def patched(owner, name, label):
        orig = getattr(owner, name)

        def timed(*a, **k):
            sync(str(rm.device))
            t = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                sync(str(rm.device))
                times.setdefault(label, []).append(time.perf_counter() - t)

        setattr(owner, name, timed)
        try:
            yield
        finally:
            setattr(owner, name, orig)

    proc_cls = type(rm.processor)
    ip_cls = type(rm.processor.image_processor)
    with contextlib.ExitStack() as stack:
        stack.enter_context(patched(proc_cls, "__call__", "processor (all calls)"))
        stack.enter_context(patched(ip_cls, "__call__", "  of which image preprocessing"))
        stack.enter_context(patched(rm.backbone, "get_image_features", "vision + connector"))
        stack.enter_context(patched(rm.backbone.text_model, "forward", "text model"))
        t = time.perf_counter()
        run_rm(rm, cands, ref, pairwise, True)
        total = time.perf_counter() - t
    out = {"total": [total]}
    out.update(times)
    return out


# ------------------------------------------------------------------------------------------------- main
def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1, 4 and 2 repeats")
    parser.add_argument("--N", type=int, nargs="+", default=None, help="candidate counts (default 1 4 16)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="pairwise and/or pointwise")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per method (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="model dtype (fp32: bf16 is slow on CPUs)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--arch", choices=ARCHS, default="smolvlm-256m", help="model size (tiny: to try the script)")
    parser.add_argument("--model-dir", type=Path, default=None, help="reuse a model saved by an earlier run")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-configuration memory children")
    parser.add_argument("--no-profile", action="store_true", help="skip the breakdown of the cached path")
    parser.add_argument("--json", type=Path, default=None, help="also write all results to this file")
    # internal: one memory measurement in a fresh process
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.N = args.N or ([1, 4] if args.quick else [1, 4, 16])
    args.repeats = args.repeats or (2 if args.quick else 3)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if args.child:
        child(args)
        return 0

    import logging

    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    tmp = None
    if args.model_dir is None or not (args.model_dir / "config.json").exists():
        if args.model_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="bench_score_")
            args.model_dir = Path(tmp.name)
        t = time.perf_counter()
        build_model(ARCHS[args.arch], args.model_dir)
        print(f"built a random {args.arch} Idefics3 model in {args.model_dir} ({time.perf_counter() - t:.0f} s)")
    rm, ref, all_cands = load(args)
    dev = device_name(args.device)
    n_params = sum(p.numel() for p in rm.model.parameters())
    print(f"device {dev}; {n_params / 1e6:.1f} M parameters; dtype {args.dtype}; N = {args.N}; repeats {args.repeats}")

    results = []
    for task in args.tasks:
        pairwise = task == "pairwise"
        # one warm-up call of every method at the smallest N
        for method in METHODS:
            make_method(method, rm, all_cands[: args.N[0]], ref, pairwise)()
        for N in args.N:
            cands = all_cands[:N]
            fns = {m: make_method(m, rm, cands, ref, pairwise) for m in METHODS}
            times = {m: [] for m in METHODS}
            outs = {}
            floor_parts = []
            for _ in range(args.repeats):
                for m in METHODS:
                    sync(args.device)
                    t = time.perf_counter()
                    outs[m] = fns[m]()
                    sync(args.device)
                    times[m].append(time.perf_counter() - t)
                floor_parts.append(fns["floor"].parts)
            med = {m: statistics.median(times[m]) for m in METHODS}
            p0, m0 = outs["naive"]
            for m in METHODS:
                p, mg = outs[m]
                row = dict(
                    device=dev,
                    task=task,
                    N=N,
                    method=m,
                    seconds=med[m],
                    all_seconds=times[m],
                    cand_per_s=N / med[m],
                    speedup=med["naive"] / med[m],
                    vs_floor=med[m] / med["floor"],
                    dp=float((p - p0).abs().max()),
                    rel_dp=float(((p - p0).abs() / p0.abs().clamp_min(1e-30)).max()),
                    dmargin=float((mg - m0).abs().max()),
                    p_mean=float(p.mean()),
                )
                if m == "floor":
                    row["vision_s"] = statistics.median(x["vision"] for x in floor_parts)
                    row["text_s"] = statistics.median(x["text"] for x in floor_parts)
                results.append(row)
                extra = f" (vision {row['vision_s']:.2f} s + text {row['text_s']:.2f} s)" if m == "floor" else ""
                print(
                    f"{task:9s} N={N:2d} {m:6s} {med[m]:7.2f} s  {row['cand_per_s']:6.2f} cand/s  "
                    f"x{row['speedup']:.2f} naive  {row['vs_floor']:.2f}x floor  "
                    f"max|dp| {row['dp']:.1e} rel {row['rel_dp']:.1e} max|dmargin| {row['dmargin']:.1e}{extra}",
                    flush=True,
                )

    profile = {}
    if not args.no_profile:
        N = max(args.N)
        for task in args.tasks:
            prof = profile_cached(rm, all_cands[:N], ref, task == "pairwise")
            profile[task] = {k: (sum(v), len(v)) for k, v in prof.items()}
            print(f"profile of cached {task} at N={N}:")
            for k, (s, n) in profile[task].items():
                print(f"  {k:32s} {s:7.2f} s in {n} calls")

    if not args.no_memory:
        del rm
        for row in results:
            mem = measure_memory(args, row["task"], row["N"], row["method"])
            row["peak_bytes"], row["peak_how"] = mem["peak_bytes"], mem["how"]
            print(
                f"memory {row['task']:9s} N={row['N']:2d} {row['method']:6s} {human_bytes(mem['peak_bytes'])}",
                flush=True,
            )

    print()
    print(
        "| task | N | method | s / call (median) | candidates/s | speed-up vs naive | x floor | peak mem | max abs dp vs naive | max abs dmargin | device |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        mem = human_bytes(r["peak_bytes"]) if "peak_bytes" in r else "-"
        dp, dmargin = ("-", "-") if r["method"] == "naive" else (f"{r['dp']:.1e}", f"{r['dmargin']:.1e}")
        print(
            f"| {r['task']} | {r['N']} | {r['method']} | {r['seconds']:.2f} | {r['cand_per_s']:.3f} | "
            f"{r['speedup']:.2f}x | {r['vs_floor']:.2f} | {mem} | {dp} | {dmargin} | {r['device']} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"results": results, "profile": profile}, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
