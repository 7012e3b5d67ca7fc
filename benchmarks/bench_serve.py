"""Load test of ``rewarddance serve``: sequential single requests against many concurrent clients (issue 23).

Starts ``rewarddance serve --model MODEL`` as a real subprocess on a free loopback port, waits for ``/health``, then
measures two modes against it, each request one ShapesWorld image (``--size`` px, rendered with
:mod:`rewarddance.shapes`, a pool of ``--pool`` scenes with their own prompts) sent to ``POST /v1/score``:

- ``sequential``: one client, ``--sequential`` requests one after another (no batching possible);
- ``concurrent``: ``--clients`` asyncio clients (one ``httpx.AsyncClient`` each) sharing ``--requests`` requests;
  the server's micro-batcher merges what arrives together (``--max-batch``, ``--max-wait-ms``).

Both modes together are bounded by ``--timeout`` seconds (the sequential mode by half of it): at the deadline the
script stops sending, gives up on requests still in flight and reports what it got. Per mode: requests ok, lost
(sent, no answer: a connection error), cut (still in flight at the deadline), server errors (5xx), other errors
(4xx), not sent, p50 / p99 latency of the answered requests, throughput (answered requests / wall seconds), and
the server's own counters from ``/health`` over the mode (batches run, model calls, mean batch size = items /
batches). The client runs in this process, on the same cores as the server.

``--prefix-ab``: the concurrent mode runs again against a second server started with ``--no-prefix-cache``, so the
shared-prefix engine's effect on merged batches (items with one prompt read one prefix cache) is measured side by
side; ``--pool`` sets how many distinct prompts the requests share.

Agreement: ``--check`` answers (a seeded sample of the concurrent mode's) are compared with a local ``rm.score`` of
the same image and prompt; each must be within 1e-5.

Output: JSON on stdout; a markdown table for ``benchmarks/RESULTS.md`` (machine, date, command) on stderr and, with
``--markdown PATH``, in that file. The exit status is 1 when a request was lost, the server answered 5xx or the
agreement check failed. The server is stopped (terminate, then kill after 15 s) in a ``finally`` block.

    python benchmarks/bench_serve.py                                   # 200 sequential, 32 clients x 2000 requests
    python benchmarks/bench_serve.py --clients 4 --requests 40 --sequential 10 --check 5   # a quick try
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import io
import json
import os
import platform
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rewarddance.shapes import render, sample_examples

TOLERANCE = 1e-5


@dataclass
class Outcome:
    """One request: which pool item it sent, how it ended, its latency (answered requests only) and its P(yes)."""

    item: int
    status: str  # "ok", "lost", "cut" (in flight at the deadline), "5xx", "4xx"
    seconds: float | None = None
    p_yes: float | None = None
    detail: str = ""


@dataclass
class ModeResult:
    name: str
    planned: int
    wall_s: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    health_before: dict = field(default_factory=dict)
    health_after: dict = field(default_factory=dict)
    stopped_by_timeout: bool = False

    def summary(self) -> dict:
        counts = {k: sum(o.status == k for o in self.outcomes) for k in ("ok", "lost", "cut", "5xx", "4xx")}
        answered = sorted(o.seconds for o in self.outcomes if o.seconds is not None)
        delta = {
            k: self.health_after.get(k, 0) - self.health_before.get(k, 0)
            for k in ("requests", "items", "batches", "model_calls", "failed_requests", "prefix_cached_items")
        }
        return {
            "mode": self.name,
            "planned": self.planned,
            "ok": counts["ok"],
            "lost": counts["lost"],
            "cut_at_timeout": counts["cut"],
            "server_errors_5xx": counts["5xx"],
            "client_errors_4xx": counts["4xx"],
            "not_sent": self.planned - len(self.outcomes),
            "stopped_by_timeout": self.stopped_by_timeout,
            "wall_s": round(self.wall_s, 3),
            "p50_ms": round(1000 * percentile(answered, 50), 2) if answered else None,
            "p99_ms": round(1000 * percentile(answered, 99), 2) if answered else None,
            "throughput_rps": round(counts["ok"] / self.wall_s, 2) if self.wall_s > 0 else None,
            "server_batches": delta["batches"],
            "server_model_calls": delta["model_calls"],
            "server_requests": delta["requests"],
            "server_failed_requests": delta["failed_requests"],
            "mean_batch_size": round(delta["items"] / delta["batches"], 2) if delta["batches"] else None,
            "prefix_cached_items": delta["prefix_cached_items"],
            "errors": sorted({o.detail for o in self.outcomes if o.status != "ok"})[:5],
        }


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile of sorted values, linear between the closest ranks (numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_pool(n: int, size: int, seed: int) -> tuple[list, list[str], list[str]]:
    """``n`` ShapesWorld scenes at ``size`` px: images, their prompts, and the images as base64 PNG."""
    examples = sample_examples(n, seed=seed)
    images = [render(ex.scene, size) for ex in examples]
    encoded = []
    for img in images:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        encoded.append(base64.b64encode(buf.getvalue()).decode())
    return images, [ex.prompt for ex in examples], encoded


# ------------------------------------------------------------------------------------------------- the server
def start_server(args: argparse.Namespace, port: int, log, prefix_cache: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rewarddance", "serve", "--model", args.model, "--port", str(port)]
    cmd += [] if prefix_cache else ["--no-prefix-cache"]
    cmd += ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning"]
    cmd += ["--device", args.device]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print(f"starting: {shlex.join(cmd)}", file=sys.stderr)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before answering /health")
        try:
            resp = httpx.get(url + "/health", timeout=2)
            if resp.status_code == 200:
                return resp.json()
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /health within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


# ------------------------------------------------------------------------------------------------- the clients
async def one_request(client: httpx.AsyncClient, item: int, prompts, encoded, deadline: float) -> Outcome:
    body = {"images": [encoded[item]], "prompts": prompts[item]}
    left = deadline - time.monotonic()
    t0 = time.perf_counter()
    try:
        resp = await asyncio.wait_for(client.post("/v1/score", json=body), timeout=max(left, 0.001))
    except asyncio.TimeoutError:
        return Outcome(item, "cut", detail="no answer before the deadline")
    except httpx.TransportError as err:
        return Outcome(item, "lost", detail=f"{type(err).__name__}: {err}")
    seconds = time.perf_counter() - t0
    if resp.status_code == 200:
        return Outcome(item, "ok", seconds, float(resp.json()["p_yes"][0]))
    kind = "5xx" if resp.status_code >= 500 else "4xx"
    return Outcome(item, kind, seconds, detail=f"HTTP {resp.status_code}: {resp.text[:200]}")


async def run_mode(name, url, clients: int, total: int, prompts, encoded, deadline: float, seed: int) -> ModeResult:
    """``clients`` clients send ``total`` requests between them, each taking the next one as soon as it has an
    answer; items are drawn from the pool in a seeded order."""
    order = random.Random(seed).choices(range(len(encoded)), k=total)
    result = ModeResult(name, total)
    async with httpx.AsyncClient(base_url=url, timeout=10) as probe:
        result.health_before = (await probe.get("/health")).json()
    next_index = 0

    async def client_loop():
        nonlocal next_index
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as client:
            while next_index < total and time.monotonic() < deadline:
                item = order[next_index]
                next_index += 1
                result.outcomes.append(await one_request(client, item, prompts, encoded, deadline))

    t0 = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    result.wall_s = time.perf_counter() - t0
    result.stopped_by_timeout = next_index < total or any(o.status == "cut" for o in result.outcomes)
    async with httpx.AsyncClient(base_url=url, timeout=10) as probe:
        result.health_after = (await probe.get("/health")).json()
    return result


# ------------------------------------------------------------------------------------------------- reporting
def check_against_local(args, result: ModeResult, images, prompts) -> dict:
    """Score a seeded sample of answered requests locally and compare P(yes)."""
    import torch

    from rewarddance import RewardModel

    if args.threads:
        torch.set_num_threads(args.threads)
    answered = [o for o in result.outcomes if o.status == "ok"]
    sample = random.Random(args.seed + 1).sample(answered, min(args.check, len(answered)))
    if not sample:
        return {"checked": 0, "max_abs_diff": None, "passed": False}
    rm = RewardModel.from_pretrained(args.model, device=args.device)
    local = rm.score([images[o.item] for o in sample], [prompts[o.item] for o in sample])
    diffs = [abs(o.p_yes - float(p)) for o, p in zip(sample, local.p_yes)]
    return {"checked": len(sample), "max_abs_diff": max(diffs), "passed": max(diffs) <= TOLERANCE}


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {platform.system()}"


def markdown(report: dict) -> str:
    cfg = report["config"]
    lines = [
        f"Machine: {report['machine']}; server on the CPU, client in a second process on the same cores.",
        f"Date: {report['date']}. Command: `{report['command']}`.",
        f"Model {cfg['model']}, one {cfg['size']} px ShapesWorld image per request, "
        f"--max-batch {cfg['max_batch']}, --max-wait-ms {cfg['max_wait_ms']}, "
        f"server torch threads: {cfg['threads'] or 'default'}.",
        "",
        "| mode | clients | requests | ok | lost | 5xx | 4xx | cut | not sent | p50 ms | p99 ms | req/s | batches "
        "| mean batch | prefix-cached items |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["modes"]:
        lines.append(
            f"| {row['mode']} | {row['clients']} | {row['planned']} | {row['ok']} | {row['lost']} "
            f"| {row['server_errors_5xx']} | {row['client_errors_4xx']} | {row['cut_at_timeout']} | {row['not_sent']} | {row['p50_ms']} "
            f"| {row['p99_ms']} | {row['throughput_rps']} | {row['server_batches']} | {row['mean_batch_size']} "
            f"| {row['prefix_cached_items']} |"
        )
    chk = report["check"]
    lines += ["", f"Agreement with local `rm.score`: {chk['checked']} answers, max |diff| {chk['max_abs_diff']}."]
    if any(row["stopped_by_timeout"] for row in report["modes"]):
        lines.append(f"Stopped by the {cfg['timeout']} s timeout before all requests were answered.")
    return "\n".join(lines)


def measure_server(args, prompts, encoded, sequential: bool, prefix_cache: bool) -> list[ModeResult]:
    """Start a server, run the sequential mode (if asked) and the concurrent mode against it, stop it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile(mode="w+")
    proc = start_server(args, port, log, prefix_cache)
    suffix = "" if prefix_cache else ", no prefix cache"
    modes: list[ModeResult] = []
    try:
        wait_healthy(proc, url, args.startup_timeout)
        t0 = time.monotonic()
        if sequential:
            seq = asyncio.run(
                run_mode("sequential", url, 1, args.sequential, prompts, encoded, t0 + args.timeout / 2, args.seed)
            )
            modes.append(seq)
            print(f"sequential: {seq.summary()['ok']} ok in {seq.wall_s:.1f} s", file=sys.stderr)
        name = "concurrent" + suffix
        load = asyncio.run(
            run_mode(name, url, args.clients, args.requests, prompts, encoded, t0 + args.timeout, args.seed)
        )
        modes.append(load)
        print(f"{name}: {load.summary()['ok']} ok in {load.wall_s:.1f} s", file=sys.stderr)
    except Exception:
        log.seek(0)
        print("server log (tail):\n" + log.read()[-4000:], file=sys.stderr)
        raise
    finally:
        stop_server(proc)
        log.close()
    return modes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes-m", help="the judge to serve (default shapes-m)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch")
    ap.add_argument("--max-wait-ms", type=float, default=10.0, help="the server's --max-wait-ms")
    ap.add_argument("--sequential", type=int, default=200, help="sequential single requests")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=2000, help="requests in total over the concurrent clients")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds for both modes together")
    ap.add_argument("--size", type=int, default=32, help="image size in px")
    ap.add_argument("--pool", type=int, default=64, help="distinct scenes (and prompts) to draw requests from")
    ap.add_argument("--check", type=int, default=20, help="answers compared with a local rm.score")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the server (0: its default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for /health")
    ap.add_argument("--markdown", default=None, help="also write the markdown table to this file")
    ap.add_argument(
        "--prefix-ab",
        action="store_true",
        help="also run the concurrent mode against a second server started with --no-prefix-cache",
    )
    args = ap.parse_args()
    for name in ("sequential", "clients", "requests", "size", "pool", "max_batch"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.timeout <= 0 or args.check < 0:
        ap.error("--timeout must be positive and --check at least 0")

    images, prompts, encoded = make_pool(args.pool, args.size, args.seed)
    modes = measure_server(args, prompts, encoded, sequential=True, prefix_cache=True)
    if args.prefix_ab:  # the same load against a server that scores every item as a full sequence
        modes += measure_server(args, prompts, encoded, sequential=False, prefix_cache=False)

    check = check_against_local(args, modes[1], images, prompts) if args.check else {"checked": 0, "passed": True}
    rows = [m.summary() for m in modes]
    for row in rows:
        row["clients"] = 1 if row["mode"] == "sequential" else args.clients
    report = {
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "command": shlex.join(["python", "benchmarks/bench_serve.py", *sys.argv[1:]]),
        "config": {
            k: getattr(args, k) for k in ("model", "device", "max_batch", "max_wait_ms", "size", "timeout", "threads")
        },
        "modes": rows,
        "check": check,
    }
    print(json.dumps(report, indent=2))
    table = markdown(report)
    print(table, file=sys.stderr)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    failed = any(r["lost"] or r["server_errors_5xx"] for r in rows) or not check.get("passed", False)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
