"""Rendered blob negatives: a clean scene against the same scene with its shapes bent out of shape.

The bundled generator's commonest failure is a lumpy blob where a shape should be (the strict verifier: "a blob fits
no shape"); judges trained only on rendered pairs and on the generator's own samples rank such pairs near chance.
Here the shape layer of a scene that satisfies its prompt is drawn at 4x, moved by a smooth random displacement
(normal offsets on a 4-8 cell grid, bicubic upsampling, 4-10 % of the frame) and averaged down; the background stays
as it was. A pair is kept only when the verifier passes the clean image and rejects the bent one as a blob.

    from rewarddance.shapes.blobs import write_blob_pairs
    write_blob_pairs(Path("blob-pairs"), scenes=12000, seed=71)   # pairs.jsonl + images/, the train-rm format
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .prompts import CATEGORIES
from .render import _draw_objects, render_array, render_background
from .sample import sample_examples
from .verify import reason_sentence, verify

SIZE, UP = 32, 4  # the generator's resolution; the shape layer is bent at 4x and averaged down


def bend_shapes(scene, rng: np.random.Generator, size: int = SIZE, up: int = UP) -> np.ndarray:
    """``scene`` at ``size`` px with its shapes bent by a smooth random displacement (uint8 ``[size, size, 3]``)."""
    import torch
    import torch.nn.functional as F

    big = size * up
    colour, cover = _draw_objects(scene, big)  # premultiplied colour and coverage of the shapes
    layer = torch.from_numpy(np.concatenate([colour, cover], -1).astype(np.float32)).permute(2, 0, 1)[None]
    cells = int(rng.integers(4, 9))
    amplitude = float(rng.uniform(0.04, 0.10))  # in grid units: the frame spans [-1, 1]
    offsets = torch.from_numpy(rng.normal(size=(1, 2, cells, cells)).astype(np.float32))
    offsets = F.interpolate(offsets, size=(big, big), mode="bicubic", align_corners=True) * amplitude
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, big), torch.linspace(-1, 1, big), indexing="ij")
    grid = torch.stack([xs, ys], -1)[None] + offsets.permute(0, 2, 3, 1)
    bent = F.grid_sample(layer, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    bent = F.avg_pool2d(bent, up)[0].permute(1, 2, 0).numpy()
    out = render_background(scene.background, size) * (1.0 - bent[..., 3:]) + bent[..., :3]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def write_blob_pairs(out: Path, scenes: int, seed: int) -> dict:
    """Up to ``scenes`` (clean, bent) pairs of in-domain prompts into ``out`` (four bends tried per scene); returns
    the counts, which ``out/info.json`` keeps: a folder that has one is reused as it is."""
    info = out / "info.json"
    if info.exists():
        return json.loads(info.read_text(encoding="utf-8"))
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines, tries = [], 0
    for k, ex in enumerate(sample_examples(scenes, seed=seed, split="id", categories=CATEGORIES)):
        clean = render_array(ex.scene, SIZE)
        if not verify(Image.fromarray(clean), ex.spec).passed:
            continue
        for _ in range(4):
            tries += 1
            bent = bend_shapes(ex.scene, rng)
            verdict = verify(Image.fromarray(bent), ex.spec)
            if "fits no shape" in verdict.reason:
                break
        else:
            continue
        chosen, rejected = f"images/{k:05d}.png", f"images/{k:05d}-blob.png"
        Image.fromarray(clean).save(out / chosen)
        Image.fromarray(bent).save(out / rejected)
        row = dict(id=f"blob-{k:05d}", prompt=ex.prompt, category=ex.category, chosen=chosen, rejected=rejected)
        lines.append(json.dumps({**row, "reason": reason_sentence(verdict.reason), "split": "id"}) + "\n")
    (out / "pairs.jsonl").write_text("".join(lines), encoding="utf-8")
    facts = {"scenes": scenes, "seed": seed, "pairs": len(lines), "bends": tries}
    info.write_text(json.dumps(facts) + "\n", encoding="utf-8")
    return facts
