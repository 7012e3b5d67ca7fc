"""RewardDance: generative reward models from vision-language models (arXiv 2509.08826).

``RewardModel`` reads P("yes") from any supported Hugging Face VLM; ``RewardContext`` says what it is asked. Its
results are ``RewardOutput`` (score, compare) and ``Preference`` (prefer: which image of a pair wins).

The names below are imported on first use (PEP 562), so ``import rewarddance`` and ``rewarddance --help`` do not
load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import Example, RewardContext
    from .model import Preference, RewardModel, RewardOutput

_LAZY = {
    "Example": ".context",
    "RewardContext": ".context",
    "Preference": ".model",
    "RewardModel": ".model",
    "RewardOutput": ".model",
}

__all__ = ["Example", "Preference", "RewardContext", "RewardModel", "RewardOutput"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
