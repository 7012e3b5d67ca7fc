"""Cached reference sets for pairwise ReFL (RewardDance, arXiv 2509.08826: the pairwise reward compares each sample
with a reference image; Table 8 compares strong and weak references).

:func:`build_references` samples the base model ``n`` times per prompt, ranks the samples with a pairwise
tournament (:func:`rewarddance.search.tournament`) and keeps the best (or the worst) ``top_k`` as PNGs listed in
``manifest.jsonl``; :func:`load_references` reads that folder back for the trainer (``train-refl --references``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from .manifest import ManifestError, read_jsonl
from .search import as_generate, generated_pixels, tournament


def _slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def build_references(
    pipe,
    rm,
    prompts: Sequence[str],
    out_dir: str | os.PathLike,
    n: int = 16,
    top_k: int = 2,
    seed: int = 0,
    context=None,
    batch_size: int = 4,
    progress: bool = True,
    keep: str = "top",
    **pipe_kwargs,
) -> Path:
    """The cached reference set of the ReFL trainer, as in the paper: per prompt, ``n`` base-model samples ranked
    by a pairwise tournament, the ``top_k`` kept as PNGs (``keep="bottom"``: the ``top_k`` last of the ranking
    instead, the weak references of the paper's Table 8). Writes ``out_dir/manifest.jsonl`` (one line per finished
    prompt: ``prompt``, ``images``, ``seeds``, ``wins``) and returns its path. Resumable: prompts already in the
    manifest are skipped, and a prompt is appended only once its images are on disk.

    ``pipe`` is a diffusers pipeline (called with ``pipe_kwargs``) or any callable ``(prompt, seeds) -> images``."""
    from PIL import Image
    from tqdm.auto import tqdm

    if keep not in ("top", "bottom"):
        raise ValueError(f"keep must be 'top' or 'bottom', got {keep!r}")
    generate = as_generate(pipe, pipe_kwargs, name="pipe")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    done = {row["prompt"] for _, row in _reference_rows(manifest)} if manifest.exists() else set()
    for p_index, prompt in enumerate(tqdm(list(prompts), desc="references", disable=not progress)):
        if prompt in done:
            continue
        p_seed = seed + 1_000_003 * p_index  # prompt i's seeds do not depend on which prompts were done before
        seeds = [p_seed + i for i in range(n)]
        imgs = []
        for start in range(0, n, batch_size):
            imgs += list(generated_pixels(generate(prompt, seeds[start : start + batch_size])))
        result = tournament(imgs, rm, prompt, top_k=top_k, context=context, seed=seed)
        kept = result.top_k if keep == "top" else result.ranking[::-1][:top_k]  # bottom: the worst first
        files = []
        for rank, i in enumerate(kept):
            name = f"images/{p_index:05d}-{_slug(prompt)}-{keep}{rank}.png"
            arr = (imgs[i].permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
            tmp = out / (name + ".tmp")
            Image.fromarray(arr).save(tmp, format="PNG")
            os.replace(tmp, out / name)
            files.append(name)
        row = {
            "prompt": prompt,
            "images": files,
            "seeds": [seeds[i] for i in kept],
            "wins": [float(result.wins[i]) for i in kept],
            "n": n,
        }
        with open(manifest, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        done.add(prompt)
    return manifest


def load_references(out_dir: str | os.PathLike) -> dict[str, list[Path]]:
    """``prompt -> [reference image paths]`` from a folder written by :func:`build_references`."""
    out = Path(out_dir)
    return {row["prompt"]: [out / f for f in row["images"]] for _, row in _reference_rows(out / "manifest.jsonl")}


def _reference_rows(manifest: Path):
    """``(line_no, row)`` of a reference manifest; a line that is not one raises, naming the file and line."""
    for line_no, row in read_jsonl(manifest):
        missing = [k for k in ("prompt", "images") if k not in row]
        if missing:
            raise ManifestError(f"{manifest}:{line_no}: missing field(s) {', '.join(missing)}")
        yield line_no, row
