"""ReFL on tiny SD-, SDXL-, SD3- and Flux-shaped pipelines with a tiny reward model, in-process."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rewarddance import RewardModel
from rewarddance.images import load_image, to_tensor
from rewarddance.reference_sets import build_references, load_references
from rewarddance.shapes import write_dataset
from rewarddance.testing.tiny_diffusion import build_tiny_pipeline, exported_lora, same_weights
from rewarddance.training.export import COMFY_LORA_FILE
from rewarddance.training.refl import train_refl
from rewarddance.training.refl_config import ReFLConfig

PROMPTS = ["a red circle", "a blue square", "two green triangles"]
HELD_OUT = ["a yellow circle", "a red square"]


@pytest.fixture(scope="module")
def smooth_rm(tiny_vlm):
    """A tiny LLaVA judge with small initial weights: its P(yes) changes little with the image but smoothly, so the
    direction that raises it is shared across prompts and noises (a large init makes it too rough to climb)."""
    return RewardModel.from_pretrained(tiny_vlm("llava", init_std=0.02), device="cpu")


class RecordingJudge:
    """The given reward model, unchanged, that also keeps the reference image of every pairwise reward call."""

    def __init__(self, rm):
        self.rm, self.references, self.contexts = rm, [], []

    def __getattr__(self, name):
        return getattr(self.rm, name)

    def reward(self, pixels, prompts, references=None, context=None):
        self.references.extend([None] * len(prompts) if references is None else references)  # one per row
        self.contexts.append(context)  # one per call
        return self.rm.reward(pixels, prompts, references=references, context=context)


def _pipe(kind):
    pipe = build_tiny_pipeline(kind, "ddim" if kind in ("sd", "sdxl") else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _settings(out, **kw) -> dict:
    """Small, fast ReFL settings (as a config file would hold them), with ``kw`` overriding."""
    base = dict(
        pretrained="in-process",
        reward_model="in-process",
        prompts=PROMPTS,
        eval_prompts=HELD_OUT,
        output_dir=str(out),
        num_inference_steps=6,
        stop_range=[4, 5],
        resolution=32,
        lora_rank=4,
        lora_alpha=4,
        lr=3e-2,
        batch_size=2,
        max_steps=30,
        save_every=0,
        eval_images=2,
        loss="log",
        seed=0,
    )
    base.update(kw)
    return base


def _cfg(out, **kw) -> ReFLConfig:
    return ReFLConfig(**_settings(out, **kw))


@pytest.mark.parametrize("kind", ["sd", "sdxl", "sd3", "flux"])
def test_refl_raises_the_held_out_reward(smooth_rm, tmp_path, kind):
    res = train_refl(_cfg(tmp_path / kind), progress=False, pipe=_pipe(kind), rm=smooth_rm)
    gain = res["reward_after"] - res["reward_before"]
    print(f"{kind}: held-out P(yes) {res['reward_before']:.6f} -> {res['reward_after']:.6f} ({gain:+.2e})")
    # measured +5e-5 (SD3) to +1.4e-4 (SDXL) over 30 steps: small because this judge is nearly flat by design
    assert gain > 2e-5
    rows = (tmp_path / kind / "metrics.csv").read_text().splitlines()
    assert len(rows) == 31 and rows[0].startswith("step,loss,reward_mean,reward_std,window_mean,window_std")
    assert (tmp_path / kind / "reward_curve.png").is_file()


@pytest.mark.parametrize("kind", ["sd", "flux"])
def test_exported_lora_reproduces_the_trained_model(smooth_rm, tmp_path, kind):
    pipe = _pipe(kind)
    cfg = _cfg(tmp_path, max_steps=3, eval_prompts=[], lora_alpha=8)  # scale alpha / rank = 2: must carry over
    res = train_refl(cfg, progress=False, pipe=pipe, rm=smooth_rm)
    kw = dict(num_inference_steps=4, height=32, width=32, output_type="pt")
    if kind == "flux":
        kw["max_sequence_length"] = 32
    trained = pipe(PROMPTS[0], generator=[torch.Generator().manual_seed(1)], **kw).images
    fresh = _pipe(kind)
    base = fresh(PROMPTS[0], generator=[torch.Generator().manual_seed(1)], **kw).images
    fresh.load_lora_weights(res["lora"])
    loaded = fresh(PROMPTS[0], generator=[torch.Generator().manual_seed(1)], **kw).images
    assert (loaded - trained).abs().max() < 1e-4
    assert (base - trained).abs().max() > 1e-3  # the LoRA changed the model
    # the ComfyUI file (kohya names for a UNet, with alpha) also reproduces it when diffusers reads it
    comfy = load_file(f"{res['lora']}/{COMFY_LORA_FILE}")
    alphas = {k: v for k, v in comfy.items() if k.endswith(".alpha")}
    assert alphas and all(float(v) == 8.0 for v in alphas.values())
    prefix = "lora_unet_" if kind == "sd" else "transformer."
    assert all(k.startswith(prefix) for k in comfy)
    other = _pipe(kind)
    other.load_lora_weights(f"{res['lora']}/{COMFY_LORA_FILE}")
    loaded = other(PROMPTS[0], generator=[torch.Generator().manual_seed(1)], **kw).images
    assert (loaded - trained).abs().max() < 1e-4


def test_interrupted_run_resumes_exactly(smooth_rm, tmp_path):
    straight = train_refl(
        _cfg(tmp_path / "a", max_steps=6, eval_prompts=[]), progress=False, pipe=_pipe("sd"), rm=smooth_rm
    )
    first = train_refl(
        _cfg(tmp_path / "b", max_steps=6, eval_prompts=[]), progress=False, pipe=_pipe("sd"), rm=smooth_rm, stop_at=3
    )
    assert first["stopped_at"] == 3
    resumed = train_refl(
        _cfg(tmp_path / "b", max_steps=6, eval_prompts=[]), progress=False, pipe=_pipe("sd"), rm=smooth_rm
    )
    assert resumed["step"] == 6 and len(resumed["history"]) == 3
    a = load_file(f"{straight['lora']}/pytorch_lora_weights.safetensors")
    b = load_file(f"{resumed['lora']}/pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # without eval_prompts the reward before / after is measured on training prompts (fixed seeds), and a resumed
    # run reports the number its first part measured
    assert straight["reward_on"].startswith("3 training prompts") and 0 < straight["reward_before"] < 1
    assert resumed["reward_before"] == straight["reward_before"]
    assert resumed["reward_after"] == pytest.approx(straight["reward_after"], abs=1e-6)


def test_ema_decay_evaluates_and_exports_the_average_and_resumes_exactly(smooth_rm, tmp_path):
    def run(name, stop_at=None, **kw):
        cfg = _cfg(tmp_path / name, max_steps=4, eval_prompts=HELD_OUT[:1], verifier="none", **kw)
        return train_refl(cfg, progress=False, pipe=_pipe("sd"), rm=smooth_rm, stop_at=stop_at)

    plain, averaged = run("plain"), run("ema", ema_decay=0.6)
    assert averaged["reward_before"] == pytest.approx(plain["reward_before"], abs=1e-9)  # nothing averaged yet
    assert averaged["reward_after"] != pytest.approx(plain["reward_after"], abs=1e-7)  # measured on the average
    assert not same_weights(exported_lora(averaged), exported_lora(plain))
    assert run("b", stop_at=2, ema_decay=0.6)["stopped_at"] == 2
    resumed = run("b", ema_decay=0.6)
    assert same_weights(exported_lora(resumed), exported_lora(averaged))
    assert resumed["reward_after"] == pytest.approx(averaged["reward_after"], abs=1e-6)


def test_a_run_resumed_after_a_crash_logs_each_step_once(smooth_rm, tmp_path, monkeypatch, capsys):
    """A crash in step 4 with the newest checkpoint at step 2 and step 3 in metrics.csv: the rerun says where it
    resumes and metrics.csv holds each step once."""
    import rewarddance.training.refl as refl

    real, calls = refl.rollout_rewards, []

    def crashing(*args, **kw):
        calls.append(1)
        if len(calls) == 4:  # the rollout of step 4 (both prompts of a step in one)
            raise RuntimeError("killed")
        return real(*args, **kw)

    def logged_steps() -> list[int]:
        return [int(row.split(",")[0]) for row in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]

    cfg = _cfg(tmp_path, max_steps=5, save_every=2, eval_prompts=[], eval_train_prompts=0)
    monkeypatch.setattr(refl, "rollout_rewards", crashing)
    with pytest.raises(RuntimeError, match="killed"):
        train_refl(cfg, progress=False, pipe=_pipe("sd"), rm=smooth_rm)
    monkeypatch.setattr(refl, "rollout_rewards", real)
    assert logged_steps() == [1, 2, 3]
    capsys.readouterr()
    res = train_refl(cfg, progress=False, pipe=_pipe("sd"), rm=smooth_rm)
    assert "resuming from step 2" in capsys.readouterr().err
    assert logged_steps() == [1, 2, 3, 4, 5]
    assert res["reward_before"] is None and res["reward_on"].startswith("no reward measured: eval_prompts is empty")


def test_a_step_rolls_its_rows_out_together_as_drawn_one_by_one(smooth_rm, tmp_path, monkeypatch):
    """Each micro-batch is one rollout call whose rows (prompt, stop level, noise seed) are those a rollout per
    prompt drew: row by row from the step's generator, so (seed, step) still fixes them and resume stays exact."""
    import rewarddance.training.refl as refl

    real, seen = refl.rollout_rewards, []

    def recording(pipe, rm, prompts, sampler_cfg, stops, noise_seeds, references, context):
        seen.append((list(prompts), list(stops), list(noise_seeds), references))
        return real(pipe, rm, prompts, sampler_cfg, stops, noise_seeds, references, context)

    monkeypatch.setattr(refl, "rollout_rewards", recording)
    cfg = _cfg(tmp_path, max_steps=2, batch_size=3, grad_accum=2, stop_range=[2, 5], eval_prompts=[])
    res = train_refl(cfg, progress=False, pipe=_pipe("sd"), rm=smooth_rm)
    expected = []
    for step in range(2):
        gen = refl._step_generator(cfg.seed, step)
        for _micro in range(2):
            rows = []
            for _b in range(3):
                prompt = PROMPTS[int(torch.randint(0, len(PROMPTS), (1,), generator=gen))]
                stop = int(torch.randint(2, 6, (1,), generator=gen))
                rows.append((prompt, stop, int(torch.randint(0, 2**31 - 1, (1,), generator=gen))))
            expected.append(tuple(list(col) for col in zip(*rows)) + (None,))
    assert seen == expected
    assert any(len(set(stops)) > 1 for _, stops, _, _ in seen)  # rows of one call stopped at different levels
    assert len(res["history"]) == 2 and all(0 < h["reward_mean"] < 1 for h in res["history"])


def test_pairwise_mode_and_pretraining_loss(smooth_rm, tmp_path):
    pipe = _pipe("sd")

    def generate(prompt, seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return pipe(
            [prompt] * len(seeds), generator=gens, output_type="pt", num_inference_steps=4, height=32, width=32
        ).images

    build_references(generate, smooth_rm, PROMPTS, tmp_path / "refs", n=3, top_k=2, progress=False)
    cached = [to_tensor(load_image(f)) for v in load_references(tmp_path / "refs").values() for f in v]
    judge = RecordingJudge(smooth_rm)
    res = train_refl(
        _cfg(tmp_path / "pw", mode="pairwise", references=str(tmp_path / "refs"), max_steps=3, eval_prompts=[]),
        progress=False,
        pipe=_pipe("sd"),
        rm=judge,
    )
    assert res["step"] == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in res["history"])
    used = {next(k for k, c in enumerate(cached) if torch.equal(c, ref)) for ref in judge.references}
    assert len(judge.references) == 6 and len(used) >= 4  # 3 prompts x 2 kept: not only the first of each is drawn
    assert all(c.cot == "none" for c in judge.contexts)
    cot_judge = RecordingJudge(smooth_rm)  # a judge trained with its verdict first is asked the same way
    cot_cfg = _cfg(tmp_path / "cot", cot="judgment_first", max_steps=1, eval_prompts=[])
    train_refl(cot_cfg, progress=False, pipe=_pipe("sd"), rm=cot_judge)
    assert [c.cot for c in cot_judge.contexts] == ["judgment_first"]  # one call for the step's two prompts
    assert len(cot_judge.references) == 2
    data = tmp_path / "captions"
    write_dataset(data, n=4, size=32, seed=1)
    plain = train_refl(
        _cfg(tmp_path / "p0", max_steps=1, eval_prompts=[]), progress=False, pipe=_pipe("sd"), rm=smooth_rm
    )
    reg = train_refl(
        _cfg(tmp_path / "p1", max_steps=1, eval_prompts=[], pretrain_data=str(data), pretrain_weight=1.0),
        progress=False,
        pipe=_pipe("sd"),
        rm=smooth_rm,
    )
    assert reg["history"][0]["reward_mean"] == pytest.approx(plain["history"][0]["reward_mean"], abs=1e-6)
    assert reg["history"][0]["loss"] > plain["history"][0]["loss"] + 1e-3  # the diffusion loss was added


def test_nan_losses_are_skipped_then_stop_the_run(smooth_rm, tmp_path):
    with pytest.raises(RuntimeError, match="2 consecutive NaN/inf losses"):
        train_refl(
            _cfg(tmp_path, reward_scale=float("nan"), max_nan_steps=2, eval_prompts=[]),
            progress=False,
            pipe=_pipe("sd"),
            rm=smooth_rm,
        )
    assert (tmp_path / "checkpoints").is_dir()  # the last good state was kept


def test_bad_configs_fail_before_training(smooth_rm, tmp_path):
    with pytest.raises(ValueError, match="model_type"):
        _cfg(tmp_path, model_type="kandinsky")
    with pytest.raises(ValueError, match="outside the schedule of 6 steps"):
        _cfg(tmp_path, stop_range=[4, 6])
    with pytest.raises(ValueError, match="lora_rank must be positive"):
        _cfg(tmp_path, lora_rank=0)
    with pytest.raises(ValueError, match="needs `references`"):
        _cfg(tmp_path, mode="pairwise")
    with pytest.raises(ValueError, match="cot must be none or judgment_first"):
        _cfg(tmp_path, cot="reasoning_first")
    with pytest.raises(ValueError, match="trackers must be among"):
        _cfg(tmp_path, trackers=["tensorbord"])
    with pytest.raises(ValueError, match="distributed must be ddp or fsdp"):
        _cfg(tmp_path, distributed="zero3")
    with pytest.raises(ValueError, match="adamw8bit does not take FSDP"):
        _cfg(tmp_path, distributed="fsdp", optimizer="adamw8bit")
    with pytest.raises(ValueError, match="no manifest.jsonl; run build_references"):
        train_refl(
            _cfg(tmp_path / "o", mode="pairwise", references=str(tmp_path / "nothing")), pipe=_pipe("sd"), rm=smooth_rm
        )
    data = tmp_path / "captions"
    write_dataset(data, n=3, size=32, seed=2)
    rec = json.loads((data / "manifest.jsonl").read_text().splitlines()[1])
    (data / rec["image"]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match=r"manifest.jsonl:2: .*id-000001.png"):
        train_refl(_cfg(tmp_path / "o2", pretrain_data=str(data), pretrain_weight=0.5), pipe=_pipe("sd"), rm=smooth_rm)
    assert not (tmp_path / "o2" / "checkpoints").exists()


@pytest.mark.slow  # two processes: run by .ci/run after the README command
def test_two_processes_train_in_step(tiny_vlm, tmp_path, launch_two, json_objects):
    """``accelerate launch`` with 2 CPU processes: each draws its own prompts and noise, gradients are averaged, so
    both end with the same LoRA; the main process alone writes checkpoints, metrics and the LoRA."""

    import yaml

    pipe_dir = tmp_path / "pipe"
    build_tiny_pipeline("sd", "ddim").save_pretrained(pipe_dir)
    out = tmp_path / "out"
    settings = _settings(
        out,
        pretrained=str(pipe_dir),
        reward_model=tiny_vlm("llava", init_std=0.02),
        batch_size=1,
        max_steps=3,
        eval_prompts=[],
        device="cpu",
    )
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(settings))
    proc = launch_two(["train-refl", "--config", str(tmp_path / "cfg.yaml"), "--no-progress"], port=29533)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json_objects(proc.stdout)  # the two processes share stdout: their lines may interleave
    assert len(rows) == 2 and all(r["processes"] == 2 and r["step"] == 3 for r in rows)
    assert rows[0]["lora_checksum"] == pytest.approx(rows[1]["lora_checksum"], rel=1e-9)
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert len((out / "metrics.csv").read_text().splitlines()) == 4  # header + 3 steps, written once


def test_memory_options_run_and_train(smooth_rm, tmp_path):
    """8-bit AdamW (bitsandbytes, on the CPU too), bf16 autocast and gradient checkpointing together still train."""
    res = train_refl(
        _cfg(
            tmp_path,
            max_steps=2,
            eval_prompts=[],
            optimizer="adamw8bit",
            mixed_precision="bf16",
            gradient_checkpointing=True,
        ),
        progress=False,
        pipe=_pipe("sd"),
        rm=smooth_rm,
    )
    weights = load_file(f"{res['lora']}/pytorch_lora_weights.safetensors")
    ups = [v for k, v in weights.items() if "lora_B" in k or "lora.up" in k]
    assert ups and all(torch.isfinite(v).all() for v in ups)
    assert max(v.abs().max().item() for v in ups) > 0  # B starts at zero: the optimiser moved it


def test_tensorboard_gets_the_same_numbers_as_the_csv(smooth_rm, tmp_path):
    """``trackers: [tensorboard]`` goes through accelerate's tracker; the event files hold every step's metrics (as
    metrics.csv has them) and the held-out reward before and after."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = train_refl(
        _cfg(tmp_path, max_steps=3, trackers=["tensorboard"], eval_images=1),
        progress=False,
        pipe=_pipe("sd"),
        rm=smooth_rm,
    )
    runs = [p.parent for p in (tmp_path / "logs").rglob("events.out.tfevents.*")]
    scalars = {}
    for run in set(runs):
        acc = EventAccumulator(str(run))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    assert [s for s, _ in scalars["reward_mean"]] == [1, 2, 3]
    for row, (_, value) in zip(res["history"], scalars["reward_mean"]):
        assert value == pytest.approx(row["reward_mean"], rel=1e-6)
    assert [v for _, v in scalars["lr"]] == pytest.approx([3e-2] * 3)
    evals = [v for _, v in scalars["eval_reward"]]
    assert evals == pytest.approx([res["reward_before"], res["reward_after"]], rel=1e-6)


@pytest.mark.slow  # two processes: run by .ci/run after the README command
def test_fsdp_trains_like_ddp_and_resumes(tiny_vlm, tmp_path, launch_two, json_objects):
    """``distributed: fsdp`` shards the denoiser over 2 CPU processes (gloo). With one stop level every step does
    the same arithmetic as data parallel, so the LoRA must match the DDP run's; a run stopped after 2 steps and
    resumed to 3 (sharded checkpoint gathered to full tensors, optimiser state by name) must match the straight one."""
    import yaml

    pipe_dir = tmp_path / "pipe"
    build_tiny_pipeline("sd", "ddim").save_pretrained(pipe_dir)
    judge = tiny_vlm("llava", init_std=0.02)

    def launch(name: str, port: int, **kw) -> dict:
        settings = _settings(
            tmp_path / name,
            pretrained=str(pipe_dir),
            reward_model=judge,
            batch_size=1,
            stop_range=[4, 4],
            eval_prompts=HELD_OUT[:1],
            eval_images=1,
            device="cpu",
            **{"max_steps": 3, **kw},
        )
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(settings))
        proc = launch_two(["train-refl", "--config", str(tmp_path / f"{name}.yaml"), "--no-progress"], port=port)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = json_objects(proc.stdout)
        assert len(rows) == 2 and all(r["processes"] == 2 for r in rows), proc.stdout[-2000:]
        assert rows[0]["lora_checksum"] == pytest.approx(rows[1]["lora_checksum"], rel=1e-9)
        main = [r for r in rows if r["reward_before"] is not None] or rows  # (only the main process evaluates in DDP)
        return {"row": main[0], "lora": load_file(tmp_path / name / "lora" / "pytorch_lora_weights.safetensors")}

    ddp = launch("ddp", 29541)
    fsdp = launch("fsdp", 29542, distributed="fsdp")
    assert ddp["lora"].keys() == fsdp["lora"].keys()
    worst = max((ddp["lora"][k] - fsdp["lora"][k]).abs().max().item() for k in ddp["lora"])
    moved = max(v.abs().max().item() for k, v in fsdp["lora"].items() if "lora_B" in k or "lora.up" in k)
    print(f"FSDP vs DDP LoRA: largest difference {worst:.2e}; largest B entry {moved:.2e}")
    assert moved > 1e-3 and worst < 1e-5
    assert fsdp["row"]["reward_before"] == pytest.approx(ddp["row"]["reward_before"], rel=1e-6)

    launch("resumed", 29543, distributed="fsdp", max_steps=2)
    resumed = launch("resumed", 29544, distributed="fsdp")
    assert resumed["row"]["step"] == 3  # it went on from step 2, and reports the reward its first part measured
    assert resumed["row"]["reward_before"] == pytest.approx(fsdp["row"]["reward_before"], rel=1e-6)
    assert len((tmp_path / "resumed" / "metrics.csv").read_text().splitlines()) == 4  # header + 2 + 1 steps
    worst = max((resumed["lora"][k] - fsdp["lora"][k]).abs().max().item() for k in fsdp["lora"])
    print(f"FSDP resumed vs straight: largest difference {worst:.2e}")
    assert worst < 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_reward_model_offload_keeps_the_judge_on_the_cpu_between_steps(tiny_vlm, tmp_path):
    """``offload_reward_model``: the judge scores on the GPU and goes back to the CPU after every step and eval."""
    pipe = _pipe("sd").to("cuda")
    rm = RewardModel.from_pretrained(tiny_vlm("llava", init_std=0.02), device="cuda")
    cfg = _cfg(
        tmp_path, max_steps=2, eval_prompts=HELD_OUT[:1], eval_images=1, offload_reward_model=True, device="cuda"
    )
    cfg.dtype = "float32"
    res = train_refl(cfg, progress=False, pipe=pipe, rm=rm)
    assert rm.device.type == "cpu"
    for key in ("reward_before", "reward_after"):  # mean held-out P(yes), measured on the GPU
        value = res[key]
        assert isinstance(value, float) and 0.0 < value < 1.0, (key, value)
    assert len(res["history"]) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in res["history"])
    weights = load_file(f"{res['lora']}/pytorch_lora_weights.safetensors")
    ups = [v for k, v in weights.items() if "lora_B" in k or "lora.up" in k]
    assert ups and all(torch.isfinite(v).all() for v in ups)
    assert max(v.abs().max().item() for v in ups) > 0  # B starts at zero: the steps on the GPU trained the LoRA


def test_reward_curve_is_a_matplotlib_png(tmp_path):
    """The reward curve is a figure with labelled axes, the window mean as its line, saved as a readable PNG."""
    from PIL import Image

    from rewarddance.training.plots import plot_reward_curve

    history = [
        {"step": s, "reward_mean": 0.1 * s, "window_mean": 0.05 * s + 0.2, "window_std": 0.01 * s} for s in range(1, 8)
    ]
    path = tmp_path / "out" / "reward_curve.png"
    fig = plot_reward_curve(history, path)
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (800, 400)
        assert img.convert("L").getextrema()[0] < 64  # dark ink: axes, ticks and labels were drawn
    (ax,) = fig.axes
    assert ax.get_xlabel() == "step" and "reward" in ax.get_ylabel() and ax.get_title()
    line = next(ln for ln in ax.get_lines() if ln.get_label().startswith("window mean"))
    assert list(line.get_xdata()) == list(range(1, 8))
    assert list(line.get_ydata()) == pytest.approx([0.05 * s + 0.2 for s in range(1, 8)])
    with pytest.raises(ValueError, match="history: no steps to plot"):
        plot_reward_curve([], tmp_path / "empty.png")
