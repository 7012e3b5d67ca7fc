"""Factories for tests, benchmarks and training recipes: tiny random models of real architectures, built offline.

Nothing in the product imports this package; it imports the product. ``tiny`` builds vision-language models of
every family in :data:`rewarddance.families.FAMILIES`, ``tiny_diffusion`` builds diffusers pipelines,
``tiny_video`` diffusers video pipelines (Wan, CogVideoX, LTX-Video).

    python -m rewarddance.testing.tiny llava ./tiny-llava
    python -m rewarddance.testing.tiny_diffusion sd ./tiny-sd
"""
