"""The example training configs (examples/training/) and how settings are read from YAML.

Each shipped YAML is loaded into its config dataclass, so a renamed or retyped setting breaks the test and not a
newcomer's first run; the three generic configs also run two steps (one for ReFL) through the command line with
tiny or bundled models, their data and model paths overridden the way a user would. The shapes-m recipe files must
equal the recipe `python -m rewarddance.recipes.shapes` uses.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from rewarddance.shapes import write_dataset
from rewarddance.training.caption import CaptionTrainConfig
from rewarddance.training.grpo_config import GRPOConfig
from rewarddance.training.refl_config import ReFLConfig
from rewarddance.training.rm import RMTrainConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "training"
CONFIGS = {
    "rm.yaml": RMTrainConfig,
    "cap.yaml": CaptionTrainConfig,
    "refl.yaml": ReFLConfig,
    "grpo.yaml": GRPOConfig,
    "refl-shapes.yaml": ReFLConfig,
    "grpo-shapes.yaml": GRPOConfig,
    "shapes-m/1-captions.yaml": CaptionTrainConfig,
    "shapes-m/2-pointwise.yaml": RMTrainConfig,
    "shapes-m/3-onpolicy.yaml": RMTrainConfig,
}


# ---------------------------------------------------------------------------------------------------- settings
def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_numbers_without_a_dot_become_floats(tmp_path):
    # PyYAML reads 1e-3 as the string "1e-3"; the README's `--lr 5e-5` arrives the same way
    path = _write(tmp_path, "model: m\ndata: d\noutput_dir: o\nlr: 1e-3\nce_weight: 2e-1\n")
    cfg = RMTrainConfig.from_yaml(path)
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float) and cfg.ce_weight == 0.2
    cfg = RMTrainConfig.from_yaml(path, {"lr": yaml.safe_load("5e-5"), "max_steps": yaml.safe_load("500")})
    assert cfg.lr == 5e-5 and cfg.max_steps == 500
    assert CaptionTrainConfig.from_yaml(_write(tmp_path, "model: m\ndata: d\noutput_dir: o\nlr: 1e-3\n")).lr == 1e-3


def test_every_kind_of_setting_is_converted_to_its_fields_type(tmp_path):
    text = "model: m\ndata: d\noutput_dir: o\nlr: 1e-3\nmax_steps: 5e2\nresume: 'false'\nquantization: None\n"
    text += "eval_data: {ood: 7}\n"
    cfg = RMTrainConfig.from_yaml(_write(tmp_path, text), {"merge": "no", "warmup_steps": "20"})
    assert (cfg.max_steps, cfg.resume, cfg.merge, cfg.warmup_steps) == (500, False, False, 20)
    assert cfg.quantization is None and cfg.eval_data == {"ood": "7"}
    cap = CaptionTrainConfig(model="m", data="d", output_dir="o", lr="1e-3", batch_size="4", eval_data="null")
    assert (cap.lr, cap.batch_size, cap.eval_data) == (1e-3, 4, None)
    refl = ReFLConfig(
        pretrained="p",
        reward_model="r",
        prompts="prompts.txt",  # a file of prompts stays a path
        output_dir="o",
        lr="5e-5",
        stop_range=["20", 29.0],
        guidance_scale="4",
        lora_targets=("to_q", "to_v"),
    )
    assert refl.prompts == "prompts.txt" and refl.lr == 5e-5 and refl.stop_range == [20, 29]
    assert refl.guidance_scale == 4.0 and refl.lora_targets == ["to_q", "to_v"]
    assert ReFLConfig(pretrained="p", reward_model="r", prompts=["a", 3], output_dir="o").prompts == ["a", "3"]


@pytest.mark.parametrize(
    "key, value, shown",
    [
        ("lr", "fast", "setting lr must be of type float, got 'fast'"),
        ("max_steps", 2.5, "setting max_steps must be of type int, got 2.5"),
        ("resume", "maybe", "setting resume must be of type bool, got 'maybe'"),
        ("eval_data", "data/ood", "setting eval_data must be of type dict[str, str], got 'data/ood'"),
        ("batch_size", True, "setting batch_size must be of type int, got True"),
    ],
)
def test_a_setting_that_does_not_convert_is_named(tmp_path, key, value, shown):
    path = _write(tmp_path, "model: m\ndata: d\noutput_dir: o\n")
    with pytest.raises(ValueError) as err:
        RMTrainConfig.from_yaml(path, {key: value})
    assert str(err.value).startswith(f"RMTrainConfig: {shown}") and "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"ReFLConfig: setting stop_range must be of type list\[int\], got \[1, 'x'\]"):
        ReFLConfig(pretrained="p", reward_model="r", prompts=["a"], output_dir="o", stop_range=[1, "x"])


def test_a_missing_required_setting_is_named(tmp_path):
    with pytest.raises(ValueError, match="missing required setting.s. data"):
        RMTrainConfig.from_yaml(_write(tmp_path, "model: m\noutput_dir: o\n"))


# ---------------------------------------------------------------------------------------------------- the examples
def test_every_example_config_loads_into_its_dataclass():
    shipped = sorted(p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.yaml"))
    assert shipped == sorted(CONFIGS), "a YAML file in examples/training/ without a test (add it to CONFIGS)"
    for name, cls in CONFIGS.items():
        cfg = cls.from_yaml(EXAMPLES / name)
        raw = yaml.safe_load((EXAMPLES / name).read_text())
        assert isinstance(cfg.lr, float) and cfg.lr == float(raw["lr"]), name


def _tail(result: str) -> dict:
    return json.loads(result.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("examples") / "pairs"
    write_dataset(out, n=8, size=48, pairs=True, seed=2)  # manifest.jsonl (captions) and pairs.jsonl
    return out


def test_rm_example_runs_with_the_readme_overrides(tiny_vlm, shapes_data, tmp_path, capsys):
    """`rewarddance train-rm --config rm.yaml --lr 5e-5 --max_steps 500` as the README writes it (fewer steps), with
    a tiny model and tiny data in place of the example's."""
    from rewarddance.cli import main

    out = tmp_path / "rm"
    args = ["train-rm", "--config", str(EXAMPLES / "rm.yaml"), "--no-progress", "--lr", "5e-5", "--max_steps", "2"]
    args += ["--model", tiny_vlm("llava"), "--data", str(shapes_data), "--output_dir", str(out)]
    args += ["--eval_data", f"{{ood: {shapes_data}}}", "--batch_size", "2", "--lora_rank", "4"]
    assert main(args) == 0
    summary = _tail(capsys.readouterr().out)
    assert summary["step"] == 2 and summary["eval"]["ood"]["pairs"] == 8
    saved = json.loads((out / "config.json").read_text())
    assert saved["lr"] == 5e-5 and saved["objective"] == "pairwise" and saved["cot"] == "judgment_first"


def test_caption_example_runs(tiny_vlm, shapes_data, tmp_path, capsys):
    from rewarddance.cli import main

    out = tmp_path / "cap"
    args = ["train-captions", "--config", str(EXAMPLES / "cap.yaml"), "--no-progress", "--max_steps", "2"]
    args += ["--model", tiny_vlm("llava"), "--data", str(shapes_data), "--eval_data", str(shapes_data)]
    args += ["--output_dir", str(out), "--batch_size", "2"]
    assert main(args) == 0
    summary = _tail(capsys.readouterr().out)
    assert summary["step"] == 2 and summary["eval"]["rows"] == 8 and Path(summary["final"]).is_dir()


def test_refl_example_runs_with_the_bundled_models(tmp_path, capsys):
    """The ReFL example as shipped (bundled generator and judge), one step, one held-out prompt."""
    from rewarddance.cli import main

    out = tmp_path / "refl"
    args = ["train-refl", "--config", str(EXAMPLES / "refl.yaml"), "--no-progress", "--max_steps", "1"]
    args += ["--output_dir", str(out), "--eval_prompts", "[a photo of three squares]", "--eval_images", "1"]
    args += ["--batch_size", "1"]
    assert main(args) == 0
    summary = _tail(capsys.readouterr().out)
    assert summary["step"] == 1 and 0 < summary["reward_before"] < 1 and 0 < summary["reward_after"] < 1
    assert summary["reward_on"].startswith("1 eval_prompts")
    assert (out / "lora" / "lora_comfyui.safetensors").is_file()


def test_grpo_example_runs_with_the_bundled_models(tmp_path, capsys):
    """The GRPO example as shipped (bundled generator and judge) through ``rewarddance train-grpo``: one step of
    one group of two on a short schedule."""
    from rewarddance.cli import main

    out = tmp_path / "grpo"
    args = ["train-grpo", "--config", str(EXAMPLES / "grpo.yaml"), "--no-progress", "--max_steps", "1"]
    args += ["--output_dir", str(out), "--eval_prompts", "[a photo of three squares]", "--eval_images", "1"]
    args += ["--group_size", "2", "--prompts_per_step", "1", "--num_inference_steps", "4", "--train_steps", "[0, 3]"]
    args += ["--train_subset", "2"]
    assert main(args) == 0
    summary = _tail(capsys.readouterr().out)
    assert summary["step"] == 1 and 0 < summary["reward_before"] < 1 and 0 < summary["reward_after"] < 1
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.parametrize("command,recipe", [("train-refl", "refl-shapes.yaml"), ("train-grpo", "grpo-shapes.yaml")])
def test_shapes_alignment_recipe_takes_any_prompt_file_and_its_lora_loads_in_diffusers(
    tmp_path, capsys, command, recipe
):
    """The issue's usage: ``--config RECIPE --output_dir DIR --prompts FILE`` with another file of 100+ in-domain
    prompts than the recipe's own; one step as shipped, and DIR/lora changes the bundled generator's denoiser when
    diffusers' ``load_lora_weights`` loads it."""
    from rewarddance.bundled import load_generator
    from rewarddance.cli import main
    from rewarddance.demo import demo_prompts

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(p for _, p in demo_prompts(18, seed=5)) + "\n")  # 108 prompts, not the recipe's
    out = tmp_path / "run"
    args = [command, "--config", str(EXAMPLES / recipe), "--no-progress", "--output_dir", str(out)]
    args += ["--prompts", str(prompts), "--max_steps", "1", "--save_every", "0"]
    assert main(args) == 0
    assert _tail(capsys.readouterr().out)["step"] == 1
    pipe = load_generator()
    x = torch.randn(1, pipe.unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    ids = pipe.tokenizer(["a photo of a red square"], return_tensors="pt").input_ids
    with torch.no_grad():
        cond = pipe.text_encoder(ids)[0]
        before = pipe.unet(x, 500, encoder_hidden_states=cond).sample
        pipe.load_lora_weights(str(out / "lora"))
        after = pipe.unet(x, 500, encoder_hidden_states=cond).sample
    assert (after - before).abs().max() > 0, "the exported LoRA did not change the generator"


def test_shapes_m_recipe_files_are_the_bundled_recipe():
    """The settings and the data commands in examples/training/shapes-m/ equal rewarddance/recipes/shapes.py's."""
    from rewarddance.cli import build_parser
    from rewarddance.recipes import shapes as recipe

    stages = {
        "1-captions.yaml": {**recipe.stage_settings("m", "caption"), "save_every": 0},
        "2-pointwise.yaml": {**recipe.stage_settings("m", "pointwise"), "eval_every": 0, "save_every": 0},
        "3-onpolicy.yaml": {**recipe.stage_settings("m", "onpolicy"), "eval_every": 0, "save_every": 0},
    }
    paths = {
        "1-captions.yaml": ("work/m-random", "work/scenes", "work/m-captions"),
        "2-pointwise.yaml": ("work/m-captions/final", "work/train", "work/m-pointwise"),
        "3-onpolicy.yaml": ("work/m-pointwise/final", "work/mixed-train", "work/m-onpolicy"),
    }
    made = {}
    for name, settings in stages.items():
        text = (EXAMPLES / "shapes-m" / name).read_text()
        raw = yaml.safe_load(text)
        cfg = CONFIGS[f"shapes-m/{name}"].from_yaml(EXAMPLES / "shapes-m" / name)
        assert (cfg.model, cfg.data, cfg.output_dir) == paths[name]
        assert set(raw) == set(settings) | {"model", "data", "output_dir"}, name
        for key, value in settings.items():
            assert getattr(cfg, key) == value, (name, key)
        for line in re.findall(r"rewarddance shapes make [^\n]+", text):
            args = build_parser().parse_args(shlex.split(line)[1:])
            made[Path(args.out).name] = (args.n, args.split, args.seed, args.pairs, args.size)
        if name == "1-captions.yaml":
            shape = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text)}
            expected = {**recipe.RM_SIZES["m"], "image_size": recipe.IMAGE_SIZE, "seed": recipe.VLM_SEED}
            assert shape == expected
    for folder in ("scenes", "train", "ood"):
        assert made[folder] == (*recipe.DATA[folder], recipe.IMAGE_SIZE), folder
