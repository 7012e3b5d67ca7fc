"""ComfyUI entry point of the RewardDance node pack. It imports nothing heavy: ComfyUI awaits
``comfy_entrypoint()`` and only then are the nodes (and torch, transformers) loaded. The library is ``rewarddance/``."""


async def comfy_entrypoint():
    from .nodes import comfy_entrypoint as entry

    return await entry()
