"""Integration: a real ComfyUI server loads this pack from the working tree and runs workflows with every node,
the sampling ones on a random checkpoint that ComfyUI takes for SD 1.5 (``build_sd15_layout_pipeline``). Runs when ``COMFYUI_DIR`` points at a ComfyUI checkout (``COMFYUI_PYTHON``: the interpreter of
its environment, default this one); skipped otherwise."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="COMFYUI_DIR is not set: no ComfyUI checkout to run")
REPO = Path(__file__).resolve().parents[1]
NODES = [
    "RewardDanceLoadRewardModel",
    "RewardDanceContext",
    "RewardDanceScoreImages",
    "RewardDanceCompareImages",
    "RewardDanceScoreVideos",
    "RewardDanceCompareVideos",
    "RewardDanceBestOfN",
    "RewardDanceGuidedSampler",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


CKPT = "sd15-layout.safetensors"
LORA = "refl-lora.safetensors"


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    """A random SD 1.5-layout checkpoint (fp16, ~465 MB) and a ComfyUI LoRA for its UNet written by the ReFL export,
    with the UNet's LoRA-fused weights (LDM names) that ComfyUI must arrive at."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    from rewarddance.testing.tiny_diffusion import build_sd15_layout_pipeline
    from rewarddance.training.export import COMFY_LORA_FILE, save_lora, save_single_file, unet_to_ldm

    root = tmp_path_factory.mktemp("sd15")
    pipe = build_sd15_layout_pipeline()
    (root / "checkpoints").mkdir()
    save_single_file(pipe, root / "checkpoints" / CKPT, torch.float16)
    unet = pipe.unet.half().float()  # what ComfyUI reads from the fp16 file
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(1)
    for name, p in unet.named_parameters():
        if "lora_" in name:
            p.data = 0.05 * torch.randn(p.shape, generator=gen)
    save_lora(pipe, unet, root / "lora-out", alpha=8)
    (root / "loras").mkdir()
    shutil.copy(root / "lora-out" / COMFY_LORA_FILE, root / "loras" / LORA)
    unet.fuse_lora()
    unet.unload_lora()
    fused = unet_to_ldm(unet.state_dict(), unet.config)
    save_file({k: v.contiguous() for k, v in fused.items() if "attn" in k}, str(root / "expected.safetensors"))
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_vlm, sd15):
    root = tmp_path_factory.mktemp("comfy")
    packs = root / "packs"
    packs.mkdir()
    (packs / "rewarddance-pack").symlink_to(REPO, target_is_directory=True)
    models = root / "rd-models"
    shutil.copytree(tiny_vlm("llava"), models / "tiny-llava")
    shutil.copytree(REPO / "rewarddance" / "bundled" / "shapes-s", models / "shapes-s")  # the video workflows' judge
    paths = {
        "custom_nodes": str(packs),
        "rewarddance": str(models),
        "checkpoints": str(sd15 / "checkpoints"),
        "loras": str(sd15 / "loras"),
    }
    (root / "extra.yaml").write_text(json.dumps({"rewarddance_test": paths}))
    base = root / "base"
    (base / "custom_nodes").mkdir(parents=True)
    port = _free_port()
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    cmd = [
        python,
        str(Path(COMFYUI_DIR) / "main.py"),
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(base),
        "--extra-model-paths-config",
        str(root / "extra.yaml"),
        "--disable-api-nodes",
        "--disable-auto-launch",
    ]
    log = open(root / "server.log", "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        try:
            _get(url + "/system_stats")
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.5)
    else:
        proc.kill()
    text = (root / "server.log").read_text()
    if proc.poll() is not None:
        pytest.fail(f"ComfyUI exited early:\n{text[-3000:]}")
    yield {"url": url, "log": root / "server.log", "proc": proc}
    proc.terminate()  # by its own process id
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _run(server, workflow: dict, timeout: float = 300) -> dict:
    status, body = _post(server["url"] + "/prompt", {"prompt": workflow, "client_id": str(uuid.uuid4())})
    if status != 200:
        return {"rejected": body}
    pid = body["prompt_id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        hist = _get(f"{server['url']}/history/{pid}")
        if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
            if hist[pid]["status"].get("status_str") in ("success", "error"):
                return hist[pid]
        time.sleep(0.3)
    pytest.fail(f"workflow did not finish in {timeout} s; log:\n{server['log'].read_text()[-3000:]}")


def _loader():
    return {
        "class_type": "RewardDanceLoadRewardModel",
        "inputs": {
            "model": "tiny-llava",
            "hf_id": "",
            "dtype": "float32",
            "quantization": "none",
            "device": "cpu",
            "offload_others": False,
        },
    }


def _images():
    return {
        "red": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 48, "batch_size": 1, "color": 0xFF0000}},
        "blue": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 48, "batch_size": 2, "color": 0x0000FF}},
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["red", 0], "image2": ["blue", 0]}},
    }


def test_pack_loads_and_lists_every_node(server):
    info = _get(server["url"] + "/object_info")
    missing = [n for n in NODES if n not in info]
    assert not missing, f"not registered: {missing}; log:\n{server['log'].read_text()[-3000:]}"
    failed = [x for x in server["log"].read_text().splitlines() if "IMPORT FAILED" in x or "Cannot import" in x]
    assert not [x for x in failed if "rewarddance" in x], failed  # (built-in audio nodes fail without torchaudio)
    model_input = info["RewardDanceLoadRewardModel"]["input"]["required"]["model"]
    assert model_input[0] == "COMBO" and model_input[1]["options"] == ["shapes-s", "tiny-llava"]
    assert info["RewardDanceScoreImages"]["output_name"][:3] == ["scores", "sorted", "table"]
    video = info["RewardDanceScoreVideos"]["input"]["required"]["video"]
    assert video[0] == "IMAGE,VIDEO", video  # one socket for frames or a VIDEO


def test_workflows_with_each_node(server):
    wf = {"rm": _loader(), **_images()}
    wf["ctx"] = {
        "class_type": "RewardDanceContext",
        "inputs": {"task": "alignment", "criteria": "", "cot": "none", "reference": ["red", 0]},
    }
    wf["score"] = {
        "class_type": "RewardDanceScoreImages",
        "inputs": {"reward_model": ["rm", 0], "image": ["batch", 0], "prompt": "a red square"},
    }
    wf["score_ctx"] = {
        "class_type": "RewardDanceScoreImages",
        "inputs": {"reward_model": ["rm", 0], "image": ["batch", 0], "prompt": "a red square", "context": ["ctx", 0]},
    }
    wf["cmp"] = {
        "class_type": "RewardDanceCompareImages",
        "inputs": {"reward_model": ["rm", 0], "image_a": ["red", 0], "image_b": ["blue", 0], "prompt": "a red square"},
    }
    wf["best"] = {
        "class_type": "RewardDanceBestOfN",
        "inputs": {
            "reward_model": ["rm", 0],
            "image": ["batch", 0],
            "prompt": "a red square",
            "top_k": 2,
            "threshold": 0.0,
            "mode": "tournament",
        },
    }
    wf["show_table"] = {"class_type": "PreviewAny", "inputs": {"source": ["score", 2]}}
    wf["show_ctx"] = {"class_type": "PreviewAny", "inputs": {"source": ["score_ctx", 2]}}
    wf["show_p"] = {"class_type": "PreviewAny", "inputs": {"source": ["cmp", 0]}}
    wf["show_best"] = {"class_type": "PreviewImage", "inputs": {"images": ["best", 0]}}
    res = _run(server, wf)
    assert res.get("status", {}).get("status_str") == "success", json.dumps(res)[-3000:]
    outputs = res["outputs"]
    table = outputs["show_table"]["text"][0]
    assert table.splitlines()[0].startswith("rank") and len(table.splitlines()) == 4
    assert len(outputs["show_best"]["images"]) == 2
    assert outputs["show_p"]["text"]  # P(b better than a) per pair


def test_bad_input_is_a_node_error_not_a_crash(server):
    wf = {"rm": _loader(), **_images()}
    wf["best"] = {
        "class_type": "RewardDanceBestOfN",
        "inputs": {
            "reward_model": ["rm", 0],
            "image": ["batch", 0],
            "prompt": "x",
            "top_k": 9,
            "threshold": 0.0,
            "mode": "pointwise",
        },
    }
    wf["show"] = {"class_type": "PreviewImage", "inputs": {"images": ["best", 0]}}
    res = _run(server, wf)
    assert res["status"]["status_str"] == "error"
    messages = json.dumps(res["status"]["messages"])
    assert "top_k = 9 but the batch holds 3 images" in messages
    wf = {"rm": {**_loader(), "inputs": {**_loader()["inputs"], "hf_id": "../../secrets"}}, **_images()}
    wf["score"] = {
        "class_type": "RewardDanceScoreImages",
        "inputs": {"reward_model": ["rm", 0], "image": ["batch", 0], "prompt": "x"},
    }
    wf["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["score", 2]}}
    res = _run(server, wf)
    assert res["status"]["status_str"] == "error" and "outside the models folder" in json.dumps(res["status"])
    assert server["proc"].poll() is None  # the server is still up
    _get(server["url"] + "/object_info")


JUDGE_KEY = "comfy-test-key"


@pytest.fixture(scope="module")
def served_judge():
    """The bundled ``shapes-s`` served by ``rewarddance serve``'s app on loopback (ComfyUI reaches it there), and the
    same judge loaded here, to score locally."""
    from rewarddance import RewardModel
    from rewarddance.serving import create_app
    from rewarddance.testing.serve import serve_in_thread

    rm = RewardModel.from_pretrained("shapes-s", device="cpu")
    with serve_in_thread(create_app(rm, model_name="shapes-s", api_key=JUDGE_KEY)) as url:
        yield {"url": url, "rm": rm}


def test_served_judge_scores_in_a_workflow_as_locally(server, served_judge):
    """The loader's `server` input: Score Images and Best-of-N run on a `rewarddance serve` judge over HTTP, with
    the scores of the same judge run locally (ShapesWorld images: a match, a hard and an easy negative, loaded by
    ComfyUI's LoadImage); a bad or unreachable server is a node error and ComfyUI stays up."""
    import numpy as np

    from rewarddance import comfy as rd
    from rewarddance.shapes import make_pair, render, sample_pairs

    pair = sample_pairs(1, seed=0)[0]
    easy = make_pair(pair.chosen, np.random.default_rng(0), negative="easy")
    pictures = [render(pair.chosen.scene, 64), render(pair.rejected, 64), render(easy.rejected, 64)]
    inputs = server["log"].parent / "base" / "input"  # ComfyUI's input folder under --base-directory
    inputs.mkdir(parents=True, exist_ok=True)
    loader = {**_loader(), "inputs": {**_loader()["inputs"], "server": served_judge["url"], "api_key": JUDGE_KEY}}
    wf = {"rm": loader}
    for i, picture in enumerate(pictures):
        picture.save(inputs / f"served-{i}.png")
        wf[f"img{i}"] = {"class_type": "LoadImage", "inputs": {"image": f"served-{i}.png"}}
    wf["ab"] = {"class_type": "ImageBatch", "inputs": {"image1": ["img0", 0], "image2": ["img1", 0]}}
    wf["batch"] = {"class_type": "ImageBatch", "inputs": {"image1": ["ab", 0], "image2": ["img2", 0]}}
    wf["score"] = {
        "class_type": "RewardDanceScoreImages",
        "inputs": {"reward_model": ["rm", 0], "image": ["batch", 0], "prompt": pair.prompt},
    }
    wf["best"] = {
        "class_type": "RewardDanceBestOfN",
        "inputs": {
            "reward_model": ["rm", 0],
            "image": ["batch", 0],
            "prompt": pair.prompt,
            "top_k": 2,
            "threshold": 0.0,
            "mode": "pointwise",
        },
    }
    wf["show_scores"] = {"class_type": "PreviewAny", "inputs": {"source": ["score", 0]}}
    wf["kept"] = {  # the images Best-of-N kept, scored again
        "class_type": "RewardDanceScoreImages",
        "inputs": {"reward_model": ["rm", 0], "image": ["best", 0], "prompt": pair.prompt},
    }
    wf["show_best"] = {"class_type": "PreviewAny", "inputs": {"source": ["best", 3]}}
    wf["show_kept"] = {"class_type": "PreviewAny", "inputs": {"source": ["kept", 0]}}
    res = _run(server, wf)
    assert res.get("status", {}).get("status_str") == "success", json.dumps(res)[-3000:]
    served = [float(x) for x in res["outputs"]["show_scores"]["text"]]
    batch = [float(x) for x in res["outputs"]["show_best"]["text"]]  # Best-of-N's scores: the whole batch
    kept = [float(x) for x in res["outputs"]["show_kept"]["text"]]
    pixels = torch.stack([torch.from_numpy(np.array(x.convert("RGB"))).float() / 255 for x in pictures])
    local, _, _, _ = rd.score_images(served_judge["rm"], pixels, pair.prompt)
    for got in (served, batch):
        assert len(got) == 3 and max(abs(a - b) for a, b in zip(got, local, strict=True)) < 1e-4, (got, local)
    ranked = sorted(local, reverse=True)
    assert min(a - b for a, b in zip(ranked, ranked[1:])) > 1e-3, local  # distinct: the top 2 are certain
    top2 = ranked[:2]
    assert len(kept) == 2 and max(abs(a - b) for a, b in zip(kept, top2, strict=True)) < 1e-4, (kept, top2)

    def fails(spec: str, key: str = JUDGE_KEY) -> str:
        bad = {**loader, "inputs": {**loader["inputs"], "server": spec, "api_key": key}}
        res = _run(server, {**wf, "rm": bad})
        assert res["status"]["status_str"] == "error", (spec, json.dumps(res)[-2000:])
        errors = [data for kind, data in res["status"]["messages"] if kind == "execution_error"]
        assert len(errors) == 1, errors
        print(f"{spec}: {errors[0]['exception_type']}: {errors[0]['exception_message']}")
        return errors[0]["exception_message"]

    assert "is not http://HOST:PORT or openai:BASE_URL#MODEL" in fails("ftp://127.0.0.1:1")
    assert "openai:BASE_URL#MODEL" in fails("openai:http://127.0.0.1:1/v1")  # no #MODEL
    assert "127.0.0.1:1" in fails("http://127.0.0.1:1")  # nothing listens there
    assert "401" in fails(served_judge["url"], key="wrong-key")
    assert server["proc"].poll() is None  # the server is still up


def _colour(rgb: int, frames: int, size: int = 48) -> torch.Tensor:
    """The IMAGE ComfyUI's EmptyImage makes: ``frames`` frames of one colour."""
    channels = [((rgb >> shift) & 0xFF) / 0xFF for shift in (16, 8, 0)]
    return torch.tensor(channels).view(1, 1, 1, 3).expand(frames, size, size, 3)


def test_videos_scored_in_a_workflow_as_locally(server):
    """Two videos as one IMAGE batch of 8 frames (EmptyImage and ImageBatch), judged by the bundled shapes-s through
    Score Videos (frames_per_video 4, 3 frames each), again as a VIDEO (Create Video at 8 fps, sampled at 4 fps),
    Compare Videos and Best-of-N over the videos; every score equals the same judge's score(videos=...) here."""
    from rewarddance import RewardModel

    prompt = "a red square"
    loader = {**_loader(), "inputs": {**_loader()["inputs"], "model": "shapes-s"}}
    frames = {"red": (0xFF0000, 2), "blue": (0x0000FF, 2), "green": (0x00FF00, 4)}
    wf = {"rm": loader}
    for name, (rgb, n) in frames.items():
        wf[name] = {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 48, "batch_size": n, "color": rgb}}
    wf["first"] = {"class_type": "ImageBatch", "inputs": {"image1": ["red", 0], "image2": ["blue", 0]}}
    wf["both"] = {"class_type": "ImageBatch", "inputs": {"image1": ["first", 0], "image2": ["green", 0]}}
    sampling = {"frames_per_video": 4, "num_frames": 3, "fps": 0.0}
    wf["score"] = {
        "class_type": "RewardDanceScoreVideos",
        "inputs": {"reward_model": ["rm", 0], "video": ["both", 0], "prompt": prompt, **sampling},
    }
    wf["clip"] = {"class_type": "CreateVideo", "inputs": {"images": ["both", 0], "fps": 8.0}}
    wf["score_clip"] = {
        "class_type": "RewardDanceScoreVideos",
        "inputs": {"reward_model": ["rm", 0], "video": ["clip", 0], "prompt": prompt, **sampling, "fps": 4.0},
    }
    wf["cmp"] = {
        "class_type": "RewardDanceCompareVideos",
        "inputs": {
            "reward_model": ["rm", 0],
            "video_a": ["first", 0],
            "video_b": ["green", 0],
            "prompt": prompt,
            **sampling,
            "frames_per_video": 0,
        },
    }
    wf["best"] = {
        "class_type": "RewardDanceBestOfN",
        "inputs": {
            "reward_model": ["rm", 0],
            "image": ["both", 0],
            "prompt": prompt,
            "top_k": 1,
            "threshold": 0.0,
            "mode": "pointwise",
            "frames_per_video": 4,
            "num_frames": 3,
        },
    }
    for key, src in [("scores", ["score", 0]), ("table", ["score", 2]), ("clip_scores", ["score_clip", 0])]:
        wf[f"show_{key}"] = {"class_type": "PreviewAny", "inputs": {"source": src}}
    wf["show_p"] = {"class_type": "PreviewAny", "inputs": {"source": ["cmp", 0]}}
    wf["show_best"] = {"class_type": "PreviewImage", "inputs": {"images": ["best", 0]}}
    wf["show_best_scores"] = {"class_type": "PreviewAny", "inputs": {"source": ["best", 3]}}
    res = _run(server, wf)
    assert res.get("status", {}).get("status_str") == "success", json.dumps(res)[-3000:]
    out = res["outputs"]

    def floats(key):
        return [float(x) for x in out[key]["text"]]

    rm = RewardModel.from_pretrained("shapes-s", device="cpu")
    first = torch.cat([_colour(0xFF0000, 2), _colour(0x0000FF, 2)]).permute(0, 3, 1, 2)
    green = _colour(0x00FF00, 4).permute(0, 3, 1, 2)
    local = rm.score(videos=[first, green], prompts=prompt, num_frames=3)
    want = local.p_yes.tolist()
    assert abs(want[0] - want[1]) > 1e-4, want  # the two videos score apart: the ranking is meaningful
    for key in ("show_scores", "show_best_scores"):
        assert max(abs(a - b) for a, b in zip(floats(key), want, strict=True)) < 1e-4, (key, floats(key), want)
    at_4fps = rm.score(videos=[first[[0, 3]], green[[0, 3]]], prompts=prompt).p_yes.tolist()  # 0.5 s at 8 fps: 2
    assert max(abs(a - b) for a, b in zip(floats("show_clip_scores"), at_4fps, strict=True)) < 1e-4
    table = out["show_table"]["text"][0].splitlines()
    assert table[1].split()[1] == str(int(want[1] > want[0])) and table[1].endswith("3 of 4 (0-3)")
    p = torch.sigmoid(local.margin[1] - local.margin[0]).item()  # shapes-s is pointwise: Bradley-Terry
    assert floats("show_p") == pytest.approx([p], abs=1e-4)
    assert len(out["show_best"]["images"]) == 4  # the best video, every frame


def test_frame_rate_of_an_image_batch_and_judge_frames_in_comfyui(server):
    """Score Videos on an IMAGE batch with frame_rate 8, sampled at 4 fps, scores and times as the same frames in a
    VIDEO at 8 fps (Create Video); the table's last line names the rate's source. The optional inputs are declared
    (frame_rate on both video nodes, judge_frames on the Reward-Guided Sampler) and ComfyUI refuses out-of-range
    values."""
    info = _get(server["url"] + "/object_info")
    for node in ("RewardDanceScoreVideos", "RewardDanceCompareVideos"):
        kind, opts = info[node]["input"]["optional"]["frame_rate"]
        assert kind == "FLOAT" and opts["default"] == 0.0 and opts["min"] == 0.0, (node, opts)
    kind, opts = info["RewardDanceGuidedSampler"]["input"]["optional"]["judge_frames"]
    assert kind == "INT" and opts["default"] == 8 and opts["min"] == 1, opts

    loader = {**_loader(), "inputs": {**_loader()["inputs"], "model": "shapes-s"}}
    wf = {"rm": loader}
    for name, (rgb, n) in {"red": (0xFF0000, 4), "green": (0x00FF00, 4)}.items():
        wf[name] = {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 48, "batch_size": n, "color": rgb}}
    wf["both"] = {"class_type": "ImageBatch", "inputs": {"image1": ["red", 0], "image2": ["green", 0]}}
    wf["clip"] = {"class_type": "CreateVideo", "inputs": {"images": ["both", 0], "fps": 8.0}}
    sampling = {"prompt": "a red square", "frames_per_video": 4, "num_frames": 8, "fps": 4.0}
    wf["frames"] = {
        "class_type": "RewardDanceScoreVideos",
        "inputs": {"reward_model": ["rm", 0], "video": ["both", 0], **sampling, "frame_rate": 8.0},
    }
    wf["video"] = {
        "class_type": "RewardDanceScoreVideos",
        "inputs": {"reward_model": ["rm", 0], "video": ["clip", 0], **sampling},
    }
    for name in ("frames", "video"):
        wf[f"show_{name}"] = {"class_type": "PreviewAny", "inputs": {"source": [name, 0]}}
        wf[f"table_{name}"] = {"class_type": "PreviewAny", "inputs": {"source": [name, 2]}}
    res = _run(server, wf)
    assert res.get("status", {}).get("status_str") == "success", json.dumps(res)[-3000:]
    out = res["outputs"]
    assert [float(x) for x in out["show_frames"]["text"]] == [float(x) for x in out["show_video"]["text"]]
    from_frames, from_video = (out[f"table_{k}"]["text"][0].splitlines() for k in ("frames", "video"))
    assert from_frames[:-1] == from_video[:-1] and from_frames[1].endswith("2 of 4 (0-3) 0.00-0.38 s")
    assert from_frames[-1] == "frame rate: video: 8 fps (the frame_rate input)"
    assert from_video[-1] == "frame rate: video: 8 fps (the VIDEO's own)"

    wf["frames"]["inputs"]["frame_rate"] = -1.0  # below the declared min: ComfyUI's check names the input
    _, body = _post(server["url"] + "/prompt", {"prompt": wf, "client_id": str(uuid.uuid4())})
    assert "frame_rate" in json.dumps(body.get("node_errors", {}).get("frames", {})), body


def test_example_workflows_run(server):
    """The committed API-format examples run to success: the tiny judge stands in for the 2B one, and the two that
    sample use the SD 1.5-layout checkpoint at 64 px with a few steps."""
    folder = REPO / "examples" / "workflows"
    for name in ("score_images", "compare_images", "score_video", "best_of_n_select", "reward_guided_sampler"):
        wf = json.loads((folder / f"{name}.api.json").read_text())
        for node in wf.values():
            kind, inputs = node["class_type"], node["inputs"]
            if kind == "RewardDanceLoadRewardModel":
                inputs.update(model="tiny-llava", quantization="none", device="cpu", dtype="float32")
            elif kind == "CheckpointLoaderSimple":
                inputs["ckpt_name"] = CKPT
            elif kind == "EmptyLatentImage":
                inputs.update(width=64, height=64)
            if "steps" in inputs:
                inputs["steps"] = 4
        res = _run(server, wf)
        assert res.get("status", {}).get("status_str") == "success", (name, json.dumps(res)[-2000:])


def _sampling(strategy: str, budget: int, steps: int = 6, lora: bool = True) -> dict:
    clip = ["lora", 1] if lora else ["ckpt", 1]
    wf = {
        "rm": _loader(),
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": clip}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "guided": {
            "class_type": "RewardDanceGuidedSampler",
            "inputs": {
                "model": ["lora", 0] if lora else ["ckpt", 0],
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "latent_image": ["latent", 0],
                "vae": ["ckpt", 2],
                "seed": 3,
                "steps": steps,
                "cfg": 5.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "reward_model": ["rm", 0],
                "prompt": "a red circle",
                "strategy": strategy,
                "budget": budget,
            },
        },
        "show_image": {"class_type": "PreviewImage", "inputs": {"images": ["guided", 1]}},
        "show_scores": {"class_type": "PreviewAny", "inputs": {"source": ["guided", 2]}},
    }
    if lora:
        wf["lora"] = {
            "class_type": "LoraLoader",
            "inputs": {
                "model": ["ckpt", 0],
                "clip": ["ckpt", 1],
                "lora_name": LORA,
                "strength_model": 1.0,
                "strength_clip": 1.0,
            },
        }
    return wf


@pytest.mark.parametrize("strategy", ["best_of_n", "search_over_paths"])
def test_guided_sampler_runs_on_a_loaded_checkpoint_with_a_refl_lora(server, strategy):
    res = _run(server, _sampling(strategy, budget=3 if strategy == "best_of_n" else 7))
    assert res.get("status", {}).get("status_str") == "success", json.dumps(res)[-3000:]
    scores = [float(x) for x in res["outputs"]["show_scores"]["text"]]
    assert all(0.0 < x < 1.0 for x in scores)
    # best-of-N: one score per seed. The search (2 paths, 2 children each) over 6 steps plans two rounds, from
    # levels 1 and 4, costing 38 evaluations (34 steps, and an x0 estimate for each of the first round's 4 children)
    # within the budget of 7 x 6: 2 x 4 children scored, then the 2 final paths.
    assert len(scores) == (3 if strategy == "best_of_n" else 10), scores
    assert len(res["outputs"]["show_image"]["images"]) == 1
    log = server["log"].read_text()
    assert "lora key not loaded" not in log and "ERROR lora" not in log


def test_interrupt_stops_the_guided_sampler(server):
    """A best-of-N run far longer than the test: ComfyUI's interrupt ends it and the server takes the next prompt."""
    status, body = _post(server["url"] + "/prompt", {"prompt": _sampling("best_of_n", budget=500, lora=False)})
    assert status == 200, body
    pid = body["prompt_id"]
    deadline = time.time() + 120
    while time.time() < deadline and not _get(server["url"] + "/queue")["queue_running"]:
        time.sleep(0.2)
    time.sleep(3)  # well into the sampling loop
    _post(server["url"] + "/interrupt", {})
    deadline = time.time() + 120
    while time.time() < deadline:
        hist = _get(f"{server['url']}/history/{pid}")
        if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
            break
        time.sleep(0.3)
    else:
        pytest.fail("the interrupted prompt never finished")
    assert "execution_interrupted" in json.dumps(hist[pid]["status"]["messages"])
    res = _run(server, _sampling("best_of_n", budget=1, steps=2, lora=False))
    assert res["status"]["status_str"] == "success"


def test_refl_lora_patches_comfyui_weights_as_diffusers_fuses_them(sd15):
    """ComfyUI's own loader applies the ReFL export to the checkpoint: every patched attention weight equals the
    LoRA-fused diffusers weight (compared by LDM name), and no LoRA key is left unmatched."""
    script = f"""
import sys, logging, torch
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.sd, comfy.utils
from safetensors.torch import load_file
unmatched = []
class Catch(logging.Handler):
    def emit(self, record):
        if "not loaded" in record.getMessage():
            unmatched.append(record.getMessage())
logging.getLogger().addHandler(Catch())
model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config({str(sd15 / "checkpoints" / CKPT)!r})
lora = comfy.utils.load_torch_file({str(sd15 / "loras" / LORA)!r})
model, clip = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 1.0)
expected = load_file({str(sd15 / "expected.safetensors")!r})
def worst():
    sd = model.model.diffusion_model.state_dict()
    return max((sd[k].float() - v.float()).abs().max().item() for k, v in expected.items())
before = worst()
model.patch_model()
print("RESULT", len(expected), worst(), before, len(unmatched), unmatched[:3])
"""
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    env = {**os.environ, "PYTHONPATH": COMFYUI_DIR}
    proc = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd=COMFYUI_DIR, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][0].split(maxsplit=5)
    count, worst, before, unmatched = int(line[1]), float(line[2]), float(line[3]), int(line[4])
    print(f"{count} attention tensors; largest difference before patching {before:.2e}, after {worst:.2e}")
    assert count > 0 and unmatched == 0, line
    assert worst < 2e-3 < before, line  # ComfyUI patches in the checkpoint's fp16; diffusers fused in fp32


COMFY_HEADER = """
import sys, json, torch
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
"""
# ComfyUI's WanModel; dim 128, as ComfyUI reads one head per 128 channels (and text_dim 4096) from a Wan checkpoint
COMFY_WAN = dict(dim=128, ffn_dim=256, num_heads=1, num_layers=2, in_dim=16, out_dim=16, text_dim=4096, freq_dim=256)


def _in_comfyui(script: str) -> str:
    """Run ``script`` in ComfyUI's interpreter, from its checkout; its stdout."""
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    env = {**os.environ, "PYTHONPATH": COMFYUI_DIR, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [python, "-c", COMFY_HEADER + script], capture_output=True, text=True, cwd=COMFYUI_DIR, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_wan_lora_export_patches_comfyuis_wan_model_as_diffusers_fuses_it(tmp_path):
    """The ComfyUI file of a Wan LoRA, applied by ComfyUI's LoraLoader path (load_lora_for_models) to a WAN 2.1 model
    that ComfyUI builds from a Wan checkpoint: every key is mapped (no "lora key not loaded"), every LoRA layer is
    patched, and the patched weights, read back under diffusers' names by diffusers' own Wan checkpoint converter,
    equal the diffusers transformer's with the LoRA fused (both from the same random checkpoint)."""
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    from peft import LoraConfig
    from safetensors.torch import load_file

    from rewarddance.testing.tiny_video import build_tiny_video_pipeline
    from rewarddance.training.export import COMFY_LORA_FILE, save_lora

    checkpoint, patched = tmp_path / "wan.safetensors", tmp_path / "patched.safetensors"
    _in_comfyui(f"""
import comfy.ops, comfy.ldm.wan.model
from safetensors.torch import save_file
g = torch.Generator().manual_seed(0)
net = comfy.ldm.wan.model.WanModel(model_type="t2v", operations=comfy.ops.disable_weight_init, **{COMFY_WAN!r})
save_file({{k: 0.1 * torch.randn(v.shape, generator=g) for k, v in net.state_dict().items()}}, {str(checkpoint)!r})
""")
    base = convert_wan_transformer_to_diffusers(load_file(checkpoint))
    transformer = WanTransformer3DModel(
        **dict(patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=128, in_channels=16, out_channels=16),
        **dict(text_dim=4096, freq_dim=256, ffn_dim=256, num_layers=2, cross_attn_norm=True, eps=1e-6),
        qk_norm="rms_norm_across_heads",
    )
    transformer.load_state_dict(base, strict=True)
    pipe = build_tiny_video_pipeline("wan")
    pipe.register_modules(transformer=transformer)
    targets = ["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2", "linear_1", "linear_2", "time_proj"]
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=targets + ["proj_out"]))
    gen = torch.Generator().manual_seed(1)
    for name, p in transformer.named_parameters():
        if "lora_" in name:
            p.data = 0.05 * torch.randn(p.shape, generator=gen)
    save_lora(pipe, transformer, tmp_path / "lora", alpha=8)
    transformer.fuse_lora()
    transformer.unload_lora()
    expected = transformer.state_dict()
    layers = [k for k in expected if not torch.equal(expected[k], base[k])]
    assert len(layers) == 2 * 10 + 6, layers  # 10 Linear layers a block, 6 outside: each has its update
    out = _in_comfyui(f"""
import logging, comfy.sd, comfy.utils
from safetensors.torch import save_file
unmatched = []
class Catch(logging.Handler):
    def emit(self, record):
        if "not loaded" in record.getMessage().lower():
            unmatched.append(record.getMessage())
logging.getLogger().addHandler(Catch())
model = comfy.sd.load_diffusion_model_state_dict(comfy.utils.load_torch_file({str(checkpoint)!r}),
                                                 model_options={{"dtype": torch.float32}})
lora = comfy.utils.load_torch_file({str(tmp_path / "lora" / COMFY_LORA_FILE)!r})
model, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
model.patch_model()
sd = model.model.diffusion_model.state_dict()
save_file({{k: v.contiguous() for k, v in sd.items()}}, {str(patched)!r})
print("RESULT", json.dumps(dict(model=type(model.model).__name__, patched=len(model.patches), unmatched=unmatched)))
""")
    got = json.loads([x for x in out.splitlines() if x.startswith("RESULT")][0].split(maxsplit=1)[1])
    assert got["model"] == "WAN21" and got["unmatched"] == [] and got["patched"] == len(layers), got
    comfy = convert_wan_transformer_to_diffusers(load_file(patched))
    assert comfy.keys() == expected.keys()
    worst = max((comfy[k] - expected[k]).abs().max().item() for k in expected)
    print(f"{len(layers)} LoRA layers patched; largest difference to diffusers' fused weights {worst:.1e}")
    assert worst < 1e-5


def test_guided_sampler_logic_judges_what_comfyuis_wan_vae_decodes():
    """No Wan model runs here, but its VAE does: ComfyUI's own Wan 2.1 VAE (random weights, built by comfy.sd.VAE as
    from a checkpoint) decodes 5-D latents [1, 16, 3, 4, 4] to [1, 9, 32, 32, 3], and the guided sampler's logic, on
    a stand-in host sampler, judges them as videos with the bundled shapes-s (best-of-N and the search) and returns
    the chosen video's 9 frames; its scores are score(videos=...) of the same decoded frames."""
    script = """
import sys, json, torch
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.sd, comfy.ldm.wan.vae
from rewarddance import RewardModel
from rewarddance import comfy as rd
g = torch.Generator().manual_seed(0)
cfg = dict(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
           temperal_downsample=[False, True, True], dropout=0.0)  # ComfyUI's Wan 2.1 VAE
sd = comfy.ldm.wan.vae.WanVAE(**cfg).state_dict()  # ComfyUI's layers skip initialisation: fill them here
sd = {k: torch.randn(v.shape, generator=g) / v[0].numel() ** 0.5 if v.ndim > 1 else
      torch.ones(v.shape) if k.endswith("gamma") else torch.zeros(v.shape) for k, v in sd.items()}
vae = comfy.sd.VAE(sd=sd)
rm = RewardModel.from_pretrained("shapes-s", device="cpu")
def run(x, seed, lo, hi, add_noise):
    return x + torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) if add_noise else x * 0.9
latent = torch.zeros(1, 16, 3, 4, 4)
best = rd.guided_sample("best_of_n", run, None, vae.decode, latent, rm, "a red circle", 5, 4, 3)
frames = [rd.to_bchw(vae.decode(run(latent, s, 0, 4, True))[0]) for s in (5, 6, 7)]
local = rm.score(videos=frames, prompts="a red circle", num_frames=8).p_yes.tolist()
sigmas = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.0])
search = rd.guided_sample("search_over_paths", run, lambda x, s: x * 0.5, vae.decode, latent, rm, "a red circle",
                          0, 4, 6, sigmas=sigmas)
print("RESULT", json.dumps(dict(decoded=list(vae.decode(latent).shape), image=list(best.image.shape),
    latent=list(best.latent.shape), scores=best.scores, local=local, search=list(search.image.shape))))
"""
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    env = {**os.environ, "PYTHONPATH": COMFYUI_DIR, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd=COMFYUI_DIR, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT")][0].split(maxsplit=1)[1])
    assert got["decoded"] == [1, 9, 32, 32, 3], got  # ComfyUI's video VAEs decode to [B, T, H, W, C]
    assert got["image"] == got["search"] == [9, 32, 32, 3] and got["latent"] == [1, 16, 3, 4, 4], got
    assert got["scores"] == pytest.approx(got["local"], abs=1e-5), got


def test_guided_sampler_reports_progress_over_the_websocket(server):
    """The node's progress bar reaches ComfyUI's clients: a websocket client (aiohttp, from ComfyUI's environment)
    sees one progress message per best-of-N candidate for the sampler node, ending at the budget."""
    workflow = _sampling("best_of_n", budget=3, steps=2, lora=False)
    script = f"""
import asyncio, json, uuid, aiohttp
async def main():
    cid = str(uuid.uuid4())
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect({server["url"]!r}.replace("http", "ws") + "/ws?clientId=" + cid) as ws:
            r = await s.post({server["url"]!r} + "/prompt", json={{"prompt": json.loads({json.dumps(workflow)!r}), "client_id": cid}})
            pid = (await r.json())["prompt_id"]
            seen = []
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                if m["type"] == "progress" and m["data"].get("node") == "guided":
                    seen.append([m["data"]["value"], m["data"]["max"]])
                if m["type"] == "executing" and m["data"].get("node") is None and m["data"].get("prompt_id") == pid:
                    break
                if m["type"] == "execution_error":
                    break
            print("PROGRESS", json.dumps(seen))
asyncio.run(asyncio.wait_for(main(), 300))
"""
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    proc = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads([x for x in proc.stdout.splitlines() if x.startswith("PROGRESS")][0].split(maxsplit=1)[1])
    assert seen == [[1, 3], [2, 3], [3, 3]], seen
