"""The ``rewarddance serve`` command: load a judge and serve it (:mod:`rewarddance.serving.app`). Registering the
command imports nothing heavy; FastAPI, uvicorn and torch load when it runs."""

from __future__ import annotations

import argparse
import os

from ..bundled import DEFAULT_RM, REWARD_MODELS

API_KEY_ENV = "REWARDDANCE_API_KEY"


def add_serve_command(sub) -> None:
    p = sub.add_parser("serve", help="serve a judge over HTTP (score, compare, OpenRLHF and OpenAI endpoints)")
    p.add_argument(
        "--model",
        default=DEFAULT_RM,
        help=f"a Hugging Face id, a local folder or a bundled judge ({', '.join(REWARD_MODELS)}); default {DEFAULT_RM}",
    )
    p.add_argument("--name", default=None, help="the model name clients see and send (default: --model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on every endpoint but /health (default: ${API_KEY_ENV} if set)",
    )
    p.add_argument("--quantization", default=None, choices=["8bit", "4bit"], help="bitsandbytes quantisation")
    p.add_argument("--dtype", default=None, help="torch dtype, e.g. float32 or bfloat16")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...")
    p.add_argument("--max-batch", type=int, default=16, help="items per model call at most (default 16)")
    p.add_argument(
        "--max-wait-ms", type=float, default=10.0, help="how long a batch waits for more requests (default 10)"
    )
    p.add_argument("--max-request-bytes", type=int, default=None, help="larger bodies get 413 (default 32 MiB)")
    p.add_argument("--max-images", type=int, default=None, help="images per request at most (default 64)")
    p.add_argument("--max-pixels", type=int, default=None, help="pixels per image at most (default 4096 x 4096)")
    p.add_argument("--max-frames", type=int, default=None, help="frames per video at most (default 128)")
    p.add_argument(
        "--no-prefix-cache",
        action="store_true",
        help="score every item as a full sequence (default: items of a merged batch that share a prompt and reference read one prefix cache)",
    )
    p.add_argument("--log-level", default="info", help="uvicorn's log level (default info)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ValueError(f"serve needs FastAPI and uvicorn ({err}): pip install 'rewarddance[serve]'") from err
    from ..model import RewardModel
    from .app import serve

    limits = {"max_request_bytes": args.max_request_bytes, "max_images": args.max_images, "max_pixels": args.max_pixels}
    limits["max_frames"] = args.max_frames
    rm = RewardModel.from_pretrained(
        args.model,
        dtype=args.dtype,
        device=args.device,
        quantization=args.quantization,
        prefix_cache=not args.no_prefix_cache,
    )
    serve(
        rm,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        model_name=args.name or args.model,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        **{k: v for k, v in limits.items() if v is not None},
    )
    return 0
