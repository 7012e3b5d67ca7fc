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
    from rewarddance.tiny import build_tiny_vlm

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
