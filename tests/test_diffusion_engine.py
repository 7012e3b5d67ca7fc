"""The diffusion trainers' engine is ``accelerate``: one Accelerator per run (mixed precision, gradient accumulation,
DDP over processes). Gradient accumulation and data parallelism are checked against one step on the whole batch,
through the gradient norm each step logs (Adam's first steps hardly depend on the gradient's scale, so equal LoRAs
alone would not show a gradient averaged or accumulated with the wrong weight)."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file
from test_grpo import _cfg as grpo_cfg  # (the tests folder is on sys.path under pytest)
from test_grpo import _pipe
from test_refl import _settings as refl_settings

from rewarddance import RewardModel
from rewarddance.testing.tiny_diffusion import build_tiny_pipeline
from rewarddance.training.diffusion_loop import runtime
from rewarddance.training.grpo import train_grpo
from rewarddance.training.grpo_config import GRPOConfig
from rewarddance.training.refl import train_refl
from rewarddance.training.refl_config import ReFLConfig

LORA_FILE = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def judge(tiny_vlm):
    return RewardModel.from_pretrained(tiny_vlm("llava", init_std=0.02), device="cpu")


def _refl_settings(out, **kw) -> dict:
    """test_refl's small ReFL settings: no evaluations, two steps."""
    return refl_settings(out, **{"eval_prompts": [], "eval_train_prompts": 0, "max_steps": 2, **kw})


def _grpo_cfg(out, **kw) -> GRPOConfig:
    """test_grpo's small GRPO config, two steps."""
    return grpo_cfg(out, **{"max_steps": 2, **kw})


def _same_lora(a_dir, b_dir, atol=1e-5) -> float:
    a, b = load_file(f"{a_dir}/{LORA_FILE}"), load_file(f"{b_dir}/{LORA_FILE}")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k or "lora.up" in k)
    assert moved > 1e-3, "the LoRA did not train"
    assert worst < atol, worst
    return worst


def _grad_norms(rows) -> list[float]:
    return [float(r["grad_norm"]) for r in rows]


# ---------------------------------------------------------------------------------------------------- the runtime
def test_the_runtime_is_an_accelerator_with_the_configs_precision_and_accumulation(tmp_path, monkeypatch):
    from accelerate import Accelerator

    rt = runtime(ReFLConfig(**_refl_settings(tmp_path, mixed_precision="bf16", gradient_accumulation_steps=3)))
    assert isinstance(rt.accelerator, Accelerator) and rt.state is None and rt.main
    assert rt.accelerator.mixed_precision == "bf16" and rt.accelerator.gradient_accumulation_steps == 3
    # a second run in the same process may choose another precision; None takes accelerate launch's choice
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert runtime(ReFLConfig(**_refl_settings(tmp_path))).accelerator.mixed_precision == "bf16"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert runtime(ReFLConfig(**_refl_settings(tmp_path, mixed_precision="no"))).accelerator.mixed_precision == "no"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="mixed_precision fp16 needs a GPU"):
            runtime(ReFLConfig(**_refl_settings(tmp_path, mixed_precision="fp16")))


def test_settings_of_accumulation_fail_when_the_config_is_built(tmp_path):
    cfg = ReFLConfig(**_refl_settings(tmp_path, grad_accum=3))  # the former name
    assert cfg.gradient_accumulation_steps == 3 and cfg.grad_accum is None
    with pytest.raises(ValueError, match="grad_accum 3 and gradient_accumulation_steps 2 disagree"):
        ReFLConfig(**_refl_settings(tmp_path, grad_accum=3, gradient_accumulation_steps=2))
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be 1 or more, got 0"):
        ReFLConfig(**_refl_settings(tmp_path, gradient_accumulation_steps=0))
    with pytest.raises(ValueError, match="prompts_per_step 3 must be a multiple of gradient_accumulation_steps 2"):
        _grpo_cfg(tmp_path, prompts_per_step=3, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="mixed_precision must be no, bf16 or fp16"):
        ReFLConfig(**_refl_settings(tmp_path, mixed_precision="fp8"))


# ---------------------------------------------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("precision", ["bf16", "no"])
def test_refl_steps_run_under_the_accelerators_autocast(judge, tmp_path, monkeypatch, precision):
    """Each rollout of a step runs inside accelerate's autocast (bf16 on the CPU) or none; the pipeline's denoiser
    gets its own forward back after training."""
    import rewarddance.training.refl as refl

    real, seen = refl.rollout_rewards, []

    def recording(*args):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(*args)

    monkeypatch.setattr(refl, "rollout_rewards", recording)
    pipe = _pipe()
    res = train_refl(
        ReFLConfig(**_refl_settings(tmp_path, mixed_precision=precision)), progress=False, pipe=pipe, rm=judge
    )
    assert len(seen) == 2 and len(res["history"]) == 2
    if precision == "bf16":
        assert seen == [(True, torch.bfloat16)] * 2
    else:
        assert not any(on for on, _ in seen)
    assert pipe.unet.forward.__func__ is type(pipe.unet).forward  # accelerate's autocast wrapper is gone
    assert all(torch.isfinite(torch.tensor(r["grad_norm"])) and r["grad_norm"] > 0 for r in res["history"])


def test_grpo_runs_a_bf16_step_on_the_cpu(judge, tmp_path):
    res = train_grpo(_grpo_cfg(tmp_path, max_steps=1, mixed_precision="bf16"), progress=False, pipe=_pipe(), rm=judge)
    weights = load_file(tmp_path / "lora" / LORA_FILE)
    assert res["step"] == 1 and res["history"][0]["grad_norm"] > 0
    assert max(float(v.abs().max()) for k, v in weights.items() if "lora.up" in k or "lora_B" in k) > 0


# ---------------------------------------------------------------------------------------------------- accumulation
def test_refl_accumulating_micro_batches_equals_one_step_on_the_whole_batch(judge, tmp_path):
    """Two micro-batches of one prompt accumulated (accelerator.accumulate) against one batch of both: the rows of
    a step are drawn in one order either way, so the gradient and the trained LoRA agree up to float rounding."""
    whole = train_refl(
        ReFLConfig(**_refl_settings(tmp_path / "whole", batch_size=2)), progress=False, pipe=_pipe(), rm=judge
    )
    parts = train_refl(
        ReFLConfig(**_refl_settings(tmp_path / "parts", batch_size=1, gradient_accumulation_steps=2)),
        progress=False,
        pipe=_pipe(),
        rm=judge,
    )
    for a, b in zip(whole["history"], parts["history"]):
        for key in ("loss", "reward_mean", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
    _same_lora(whole["lora"], parts["lora"])


def test_grpo_accumulating_micro_batches_of_groups_equals_one_step_on_all_of_them(judge, tmp_path):
    whole = train_grpo(_grpo_cfg(tmp_path / "whole"), progress=False, pipe=_pipe(), rm=judge)
    parts = train_grpo(
        _grpo_cfg(tmp_path / "parts", gradient_accumulation_steps=2), progress=False, pipe=_pipe(), rm=judge
    )
    first_whole, first_parts = whole["history"][0], parts["history"][0]
    assert first_parts["reward_mean"] == first_whole["reward_mean"]  # the same rollouts: sampled together either way
    for key in ("loss", "kl", "grad_norm"):  # the same step from the same rollouts, up to summation order
        assert first_parts[key] == pytest.approx(first_whole[key], rel=1e-5, abs=1e-9), key
    for a, b in zip(whole["history"][1:], parts["history"][1:]):
        # later steps start from LoRAs that differ by float rounding that Adam magnifies (below; 1.2e-4 relative in
        # step 2's gradient norm measured with transformers 5.25): the same run, not bit for bit
        for key in ("reward_mean", "loss", "kl", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-9), key
    # Adam's step on gradient entries near its eps (this step's gradient norm is 3e-3) magnifies float rounding:
    # 4e-5 measured in an earlier environment, 1.2e-3 with transformers 5.25, against steps of lr = 3e-2 (a micro-batch
    # lost or counted twice moves entries by up to 2 lr a step, and the first step's gradient norm above by far more)
    _same_lora(whole["lora"], parts["lora"], atol=5e-3)


# ---------------------------------------------------------------------------------------------------- processes
@pytest.mark.slow  # two processes: run by .ci/run after the README command
def test_two_processes_train_like_one_on_the_same_global_batch(tiny_vlm, tmp_path, launch_two, json_objects):
    """``accelerate launch`` of 2 CPU processes with ``batch_size: 1`` (DDP averages their gradients) against one
    process with ``batch_size: 2``: each step's rows are drawn from one stream and split between the processes, so
    both runs take the same steps: the same gradient norm each step and the same LoRA."""
    import yaml

    pipe_dir = tmp_path / "pipe"
    build_tiny_pipeline("sd", "ddim").save_pretrained(pipe_dir)
    models = dict(pretrained=str(pipe_dir), reward_model=tiny_vlm("llava", init_std=0.02), device="cpu")
    two = _refl_settings(tmp_path / "two", batch_size=1, **models)
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(two))
    proc = launch_two(["train-refl", "--config", str(tmp_path / "two.yaml"), "--no-progress"], port=29551)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json_objects(proc.stdout)
    assert len(rows) == 2 and all(r["processes"] == 2 for r in rows)
    one = train_refl(ReFLConfig(**_refl_settings(tmp_path / "one", batch_size=2, **models)), progress=False)
    assert one["processes"] == 1
    with open(tmp_path / "two" / "metrics.csv", newline="", encoding="utf-8") as f:
        logged = list(csv.DictReader(f))
    assert _grad_norms(logged) == pytest.approx(_grad_norms(one["history"]), rel=1e-4)
    worst = _same_lora(tmp_path / "two" / "lora", one["lora"])
    print(f"2 processes x batch 1 vs 1 process x batch 2: largest LoRA difference {worst:.2e}")
