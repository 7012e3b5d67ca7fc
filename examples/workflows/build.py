"""Write the example workflows in both of ComfyUI's formats: API (``*.api.json``, for ``POST /prompt``) and UI
(``*.json``, to drag into the editor). The UI layout needs each node's input order and types, which come from a
running ComfyUI's ``/object_info`` saved to a file:

    curl -s http://127.0.0.1:8188/object_info > object_info.json
    python examples/workflows/build.py object_info.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CKPT = "v1-5-pruned-emaonly.safetensors"  # any SD checkpoint in models/checkpoints
RM = {
    "model": "Qwen2-VL-2B-Instruct",
    "hf_id": "",
    "dtype": "auto",
    "quantization": "8bit",
    "device": "auto",
    "offload_others": False,
}
PROMPT = "a red circle left of a blue square"


def _sd(batch: int) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": batch}},
    }


def _colours() -> dict:
    return {
        "red": {
            "class_type": "EmptyImage",
            "inputs": {"width": 256, "height": 256, "batch_size": 1, "color": 0xFF0000},
        },
        "blue": {
            "class_type": "EmptyImage",
            "inputs": {"width": 256, "height": 256, "batch_size": 1, "color": 0x0000FF},
        },
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["red", 0], "image2": ["blue", 0]}},
    }


WORKFLOWS = {
    "score_images": {
        "rm": {"class_type": "RewardDanceLoadRewardModel", "inputs": RM},
        **_colours(),
        "score": {
            "class_type": "RewardDanceScoreImages",
            "inputs": {"reward_model": ["rm", 0], "image": ["batch", 0], "prompt": "a red square"},
        },
        "table": {"class_type": "PreviewAny", "inputs": {"source": ["score", 2]}},
        "sorted": {"class_type": "PreviewImage", "inputs": {"images": ["score", 1]}},
    },
    "compare_images": {
        "rm": {"class_type": "RewardDanceLoadRewardModel", "inputs": RM},
        **_colours(),
        "ctx": {
            "class_type": "RewardDanceContext",
            "inputs": {"task": "alignment", "criteria": "the colour matters most", "cot": "none"},
        },
        "cmp": {
            "class_type": "RewardDanceCompareImages",
            "inputs": {
                "reward_model": ["rm", 0],
                "image_a": ["red", 0],
                "image_b": ["blue", 0],
                "prompt": "a red square",
                "context": ["ctx", 0],
            },
        },
        "p": {"class_type": "PreviewAny", "inputs": {"source": ["cmp", 0]}},
        "winner": {"class_type": "PreviewImage", "inputs": {"images": ["cmp", 1]}},
    },
    "score_video": {  # two 4-frame "videos" as one IMAGE batch; a VIDEO (Load Video, Create Video) plugs in too
        "rm": {"class_type": "RewardDanceLoadRewardModel", "inputs": RM},
        "red": {
            "class_type": "EmptyImage",
            "inputs": {"width": 256, "height": 256, "batch_size": 4, "color": 0xFF0000},
        },
        "blue": {
            "class_type": "EmptyImage",
            "inputs": {"width": 256, "height": 256, "batch_size": 4, "color": 0x0000FF},
        },
        "frames": {"class_type": "ImageBatch", "inputs": {"image1": ["red", 0], "image2": ["blue", 0]}},
        "ctx": {
            "class_type": "RewardDanceContext",
            "inputs": {"task": "video_alignment", "criteria": "", "cot": "none"},
        },
        "score": {
            "class_type": "RewardDanceScoreVideos",
            "inputs": {
                "reward_model": ["rm", 0],
                "video": ["frames", 0],
                "prompt": "a red square",
                "frames_per_video": 4,
                "num_frames": 4,
                "fps": 0.0,
                "context": ["ctx", 0],
            },
        },
        "table": {"class_type": "PreviewAny", "inputs": {"source": ["score", 2]}},
        "sorted": {"class_type": "PreviewImage", "inputs": {"images": ["score", 1]}},
    },
    "best_of_n_select": {
        **_sd(4),
        "sample": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["ckpt", 0],
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "latent_image": ["latent", 0],
                "seed": 0,
                "control_after_generate": "fixed",
                "steps": 25,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "rm": {"class_type": "RewardDanceLoadRewardModel", "inputs": RM},
        "best": {
            "class_type": "RewardDanceBestOfN",
            "inputs": {
                "reward_model": ["rm", 0],
                "image": ["decode", 0],
                "prompt": PROMPT,
                "top_k": 1,
                "threshold": 0.0,
                "mode": "tournament",
                "latent": ["sample", 0],
            },
        },
        "save": {"class_type": "SaveImage", "inputs": {"images": ["best", 0], "filename_prefix": "best_of_n"}},
        "scores": {"class_type": "PreviewAny", "inputs": {"source": ["best", 3]}},
    },
    "reward_guided_sampler": {
        **_sd(1),
        "rm": {"class_type": "RewardDanceLoadRewardModel", "inputs": RM},
        "guided": {
            "class_type": "RewardDanceGuidedSampler",
            "inputs": {
                "model": ["ckpt", 0],
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "latent_image": ["latent", 0],
                "vae": ["ckpt", 2],
                "seed": 0,
                "steps": 25,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "reward_model": ["rm", 0],
                "prompt": PROMPT,
                "strategy": "search_over_paths",
                "budget": 6,
            },
        },
        "save": {"class_type": "SaveImage", "inputs": {"images": ["guided", 1], "filename_prefix": "guided"}},
        "scores": {"class_type": "PreviewAny", "inputs": {"source": ["guided", 2]}},
    },
}
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def api_format(wf: dict) -> dict:
    """API format: node ids are strings of numbers; ``control_after_generate`` is a UI-only widget."""
    ids = {name: str(i) for i, name in enumerate(wf, 1)}
    out = {}
    for name, node in wf.items():
        inputs = {}
        for k, v in node["inputs"].items():
            if k == "control_after_generate":
                continue
            inputs[k] = [ids[v[0]], v[1]] if isinstance(v, list) and len(v) == 2 and v[0] in ids else v
        out[ids[name]] = {"class_type": node["class_type"], "inputs": inputs, "_meta": {"title": name}}
    return out


def ui_format(wf: dict, info: dict) -> dict:
    """The editor's graph format: nodes with socket inputs, outputs, widget values in input order, and links."""
    ids = {name: i for i, name in enumerate(wf, 1)}
    nodes, links = [], []
    out_links: dict[tuple[int, int], list[int]] = {}
    for order, (name, node) in enumerate(wf.items()):
        spec = info[node["class_type"]]
        declared = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        order_names = spec.get("input_order", {})
        names = order_names.get("required", []) + order_names.get("optional", []) or list(declared)
        inputs, widgets = [], []
        for k in names:
            kind = declared[k][0]
            is_widget = isinstance(kind, list) or kind in WIDGETS
            v = node["inputs"].get(k)
            if is_widget:
                if v is not None:
                    widgets.append(v)
                    options = declared[k][1] if len(declared[k]) > 1 else {}
                    if options.get("control_after_generate"):  # the editor adds this widget after the value
                        widgets.append(node["inputs"].get("control_after_generate", "fixed"))
                continue
            link = None
            if isinstance(v, list):
                link = len(links) + 1
                src = (ids[v[0]], v[1])
                out_type = info[wf[v[0]]["class_type"]]["output"][v[1]]  # a link carries its source's type
                links.append([link, src[0], src[1], ids[name], len(inputs), out_type])
                out_links.setdefault(src, []).append(link)
            if v is not None or k in spec["input"].get("required", {}):
                inputs.append({"name": k, "type": kind, "link": link})
        nodes.append(
            {
                "id": ids[name],
                "type": node["class_type"],
                "pos": [40 + 320 * (order % 4), 60 + 280 * (order // 4)],
                "size": [300, 200],
                "flags": {},
                "order": order,
                "mode": 0,
                "inputs": inputs,
                "outputs": [],
                "properties": {"Node name for S&R": node["class_type"]},
                "widgets_values": widgets,
                "title": name,
            }
        )
    for n in nodes:
        spec = info[n["type"]]
        n["outputs"] = [
            {"name": oname, "type": otype, "links": out_links.get((n["id"], k), []), "slot_index": k}
            for k, (oname, otype) in enumerate(zip(spec["output_name"], spec["output"]))
        ]
    return {
        "last_node_id": len(nodes),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def main(argv: list[str]) -> int:
    info = json.loads(Path(argv[0]).read_text()) if argv else None
    for name, wf in WORKFLOWS.items():
        (HERE / f"{name}.api.json").write_text(json.dumps(api_format(wf), indent=1) + "\n")
        if info is not None:
            (HERE / f"{name}.json").write_text(json.dumps(ui_format(wf, info), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
