"""ShapesWorld: procedural compositional scenes, a programmatic verifier, and preference data.

The project's own offline GenEval (Ghosh et al., 2023): scenes of coloured circles, squares and triangles with
prompts in GenEval's six categories, a verifier that reads an image back into objects and checks the prompt, and
preference pairs with one-attribute hard negatives and a reason sentence, for training and testing reward models
as in RewardDance (arXiv 2509.08826). Needs only numpy, Pillow and tqdm.

Modules: ``scene`` (the spec), ``render`` (PIL, anti-aliased, 16-512+ px), ``prompts`` (templates, parser, the
pass/fail rule), ``sample`` (seeded, balanced, ``id``/``ood`` splits), ``verify`` (segmentation, components,
shape moments), ``pairs`` (hard and easy negatives), ``blobs`` (a scene against its shapes bent into blobs; uses
torch), ``corrupt`` (blur, JPEG, noise), ``dataset`` (disk format and evaluation), ``cli`` (``rewarddance shapes
make|eval``).

On-disk format (details in ``FORMAT.md`` beside this file): a folder with ``manifest.jsonl`` (one line per image:
``id``, ``prompt``, ``category``, ``image`` as a path relative to the folder, ``split``, ``size``, ``scene``),
``images/*.png``, ``info.json``, and with ``--pairs`` a ``pairs.jsonl`` (``id``, ``prompt``, ``category``,
``chosen``, ``rejected``, ``reason``, ``negative`` in hard-count | hard-colour | hard-shape | hard-relation | easy,
``split``, ``size``, ``rejected_scene``).

Example::

    from rewarddance.shapes import sample_examples, render, verify
    ex = sample_examples(1, seed=0)[0]
    verdict = verify(render(ex.scene, 128), ex.prompt)   # Verdict(passed=True, reason=..., detections=...)
"""

from .corrupt import CORRUPTIONS, corrupt
from .dataset import EvalResult, evaluate, read_records, write_dataset
from .pairs import NEGATIVES, Pair, iter_pairs, make_pair, sample_pairs
from .prompts import CATEGORIES, RELATIONS, ObjectReq, PromptSpec, caption, check, parse_prompt
from .render import render, render_array
from .sample import (
    SPLITS,
    Example,
    LayoutConfig,
    iter_examples,
    sample_example,
    sample_examples,
    scene_in_split,
)
from .scene import (
    COLOURS,
    HELD_OUT_BACKGROUND,
    HELD_OUT_COMBOS,
    SHAPES,
    Background,
    Scene,
    ShapeObject,
    ShapesError,
)
from .verify import Detection, Scoreboard, Verdict, VerifierConfig, detect, verify

__all__ = [
    "CATEGORIES",
    "COLOURS",
    "CORRUPTIONS",
    "HELD_OUT_BACKGROUND",
    "HELD_OUT_COMBOS",
    "NEGATIVES",
    "RELATIONS",
    "SHAPES",
    "SPLITS",
    "Background",
    "Detection",
    "EvalResult",
    "Example",
    "ObjectReq",
    "Pair",
    "PromptSpec",
    "LayoutConfig",
    "Scene",
    "Scoreboard",
    "ShapeObject",
    "ShapesError",
    "Verdict",
    "VerifierConfig",
    "caption",
    "check",
    "corrupt",
    "detect",
    "evaluate",
    "iter_examples",
    "iter_pairs",
    "make_pair",
    "parse_prompt",
    "read_records",
    "render",
    "render_array",
    "sample_example",
    "sample_examples",
    "sample_pairs",
    "scene_in_split",
    "verify",
    "write_dataset",
]
