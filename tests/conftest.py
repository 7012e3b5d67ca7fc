"""Shared fixtures: tiny random VLMs of real architectures, built offline once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    """``tiny_vlm(family, **kw)`` -> path of a saved tiny model (built once per distinct arguments).

    ``init_std`` defaults to 0.2 so that random outputs depend visibly on the image and prompt.
    """
    from rewarddance.testing.tiny import build_tiny_vlm

    built: dict[tuple, str] = {}

    def make(family: str, **kw):
        kw.setdefault("init_std", 0.2)
        key = (family, tuple(sorted(kw.items())))
        if key not in built:
            out = tmp_path_factory.mktemp(f"tiny-{family}")
            built[key] = str(build_tiny_vlm(family, out, **kw))
        return built[key]

    return make


@pytest.fixture(scope="session")
def rm_cache(tiny_vlm):
    """``rm_cache(family)`` -> a loaded fp32 RewardModel on the CPU, shared across tests."""
    from rewarddance import RewardModel

    loaded = {}

    def get(family: str):
        if family not in loaded:
            loaded[family] = RewardModel.from_pretrained(tiny_vlm(family), device="cpu")
        return loaded[family]

    return get


@pytest.fixture(scope="session")
def launch_two():
    """``launch_two(cli_args, port)``: ``accelerate launch`` of ``rewarddance.cli`` in 2 CPU processes.

    On a machine without CUDA, accelerate's multi-process launch without MPI is its torchrun launcher
    (``--multi_gpu``); ``--cpu --num_processes 2`` would start a single process.
    """
    import shutil
    import subprocess
    import sys

    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "accelerate is a dependency; its launcher should be installed beside python"

    def run(args: list[str], port: int, timeout: int = 600):
        cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]
        cmd += ["-m", "rewarddance.cli", *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def json_objects():
    """``json_objects(text)``: every JSON summary object in ``text``, however the processes' lines interleaved."""
    import json

    def find(text: str) -> list[dict]:
        decoder, out, i = json.JSONDecoder(), [], text.find("{")
        while i != -1:
            try:
                obj, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                i = text.find("{", i + 1)
                continue
            if isinstance(obj, dict) and "processes" in obj:
                out.append(obj)
            i = text.find("{", end)
        return out

    return find
