"""Integration: a real ComfyUI server loads this pack from the working tree and runs workflows with every
non-sampling node. Runs when ``COMFYUI_DIR`` points at a ComfyUI checkout (``COMFYUI_PYTHON``: the interpreter of
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

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="COMFYUI_DIR is not set: no ComfyUI checkout to run")
REPO = Path(__file__).resolve().parents[1]
NODES = [
    "RewardDanceLoadRewardModel",
    "RewardDanceContext",
    "RewardDanceScoreImages",
    "RewardDanceCompareImages",
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
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_vlm):
    root = tmp_path_factory.mktemp("comfy")
    packs = root / "packs"
    packs.mkdir()
    (packs / "rewarddance-pack").symlink_to(REPO, target_is_directory=True)
    models = root / "rd-models"
    shutil.copytree(tiny_vlm("llava"), models / "tiny-llava")
    (root / "extra.yaml").write_text(
        json.dumps({"rewarddance_test": {"custom_nodes": str(packs), "rewarddance": str(models)}})
    )
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
    assert model_input[0] == "COMBO" and model_input[1]["options"] == ["tiny-llava"]
    assert info["RewardDanceScoreImages"]["output_name"][:3] == ["scores", "sorted", "table"]


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


def test_example_workflows_run(server):
    """The committed API-format examples: the two without a diffusion checkpoint run to success with the tiny judge;
    the two that sample only fail validation on the absent checkpoint file, so every other input is valid."""
    folder = REPO / "examples" / "workflows"
    for name in ("score_images", "compare_images", "best_of_n_select", "reward_guided_sampler"):
        wf = json.loads((folder / f"{name}.api.json").read_text())
        for node in wf.values():
            if node["class_type"] == "RewardDanceLoadRewardModel":
                node["inputs"].update(model="tiny-llava", quantization="none", device="cpu", dtype="float32")
        if name in ("score_images", "compare_images"):
            res = _run(server, wf)
            assert res.get("status", {}).get("status_str") == "success", (name, json.dumps(res)[-2000:])
        else:
            res = _run(server, wf)
            errors = res["rejected"]["node_errors"]
            bad = {(nid, e["details"]) for nid, v in errors.items() for e in v["errors"]}
            assert bad and all(wf[nid]["class_type"] == "CheckpointLoaderSimple" for nid, _ in bad), (name, bad)
