"""RewardDance: generative reward models from vision-language models (arXiv 2509.08826).

``RewardModel`` reads P("yes") from any supported Hugging Face VLM; ``RewardContext`` says what it is asked.
"""

from .context import Example, RewardContext
from .model import RewardModel, RewardOutput

__all__ = ["Example", "RewardContext", "RewardModel", "RewardOutput"]
__version__ = "0.1.0"
