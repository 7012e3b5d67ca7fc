"""The generative reward model: reward = P("yes") from a vision-language model, in context (paper Sec. 3.1-3.2).

``RewardModel.from_pretrained`` loads any supported Hugging Face VLM (safetensors only). ``score`` reads the
probability of "yes" at the answer position for pointwise questions, ``compare`` for pairwise ones (image 1 =
reference, image 2 = candidate), and ``reward`` does the same differentiably from pixel tensors so gradients reach a
generator. Only the last position's hidden state is turned into probabilities (``rewarddance.kernels.yes_prob``);
no ``[B, T, V]`` logits are built. When several candidates share the instruction, prompt and reference image, the
shared prefix is run once and its KV cache is reused for every candidate.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .context import RewardContext
from .families import Family, family_for
from .images import ImageError, as_image_list, check_pixels, load_image, to_tensor
from .judge_info import OBJECTIVES, TrainedFor, read_trained_for, write_trained_for
from .kernels import selected_logprobs, yes_prob
from .loading import (
    CPU_4BIT_IN_MULTIPLE,
    CPU_4BIT_OUT_MULTIPLE,
    ModelLoadError,
    _check_device,
    _check_hub_id,
    _check_local_weights,
    _first_line,
    cpu_4bit_unsupported,
    device_map_for,
)
from .preference import pair_up, preference_of
from .prefix import score_shared, shared_groups
from .preprocess import image_inputs
from .tokens import answer_ids
from .video import prefer_videos, reward_videos, score_videos

logger = logging.getLogger(__name__)

QUANTIZATION = (None, "8bit", "4bit")


CPU_BATCH = 4  # default items per forward pass on the CPU
# default candidates per suffix pass of the shared-prefix path on the CPU: the vision tower runs faster one image at a
# time there (16 candidates of a 256M VLM at 512 px: 26.3 s one at a time vs 27.7 s in fours; benchmarks/RESULTS.md)
CPU_SUFFIX_BATCH = 1


class PromptTooLongError(ValueError):
    """A rendered prompt does not fit in the model's context window."""


@dataclass
class RewardOutput:
    """Scores for a batch. ``p_yes`` and ``margin`` are float32 ``[B]`` tensors on the CPU."""

    p_yes: torch.Tensor
    margin: torch.Tensor  # log P(yes) - log P(no)
    reasons: list[str] | None = None
    videos: list | None = None  # scoring videos: each candidate's sampled frames (rewarddance.video.FrameSample)

    def __len__(self) -> int:
        return self.p_yes.shape[0]


@dataclass
class Preference:
    """Which image of each pair ``(a, b)`` the judge prefers (:meth:`RewardModel.prefer`); float32 ``[N]`` tensors
    on the CPU.

    ``objective`` says how the judge was asked. ``"pairwise"``: ``p_b_better`` is P(yes) to "is image 2 (b) better
    than image 1 (a)?" and ``margin`` that answer's log P(yes) - log P(no). ``"pointwise"``: each image is scored on
    its own, ``margin`` is ``margin_b - margin_a`` and ``p_b_better = sigmoid(margin)`` (Bradley-Terry); ``p_yes_a``
    and ``p_yes_b`` are the two scores (``None`` when pairwise).
    """

    p_b_better: torch.Tensor
    margin: torch.Tensor
    objective: str
    p_yes_a: torch.Tensor | None = None
    p_yes_b: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.p_b_better.shape[0]


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class RewardModel:
    """A VLM read as a yes/no judge. Build it with :meth:`from_pretrained`."""

    def __init__(self, model, processor, family: Family, answer_tokens=None, prefix_cache: bool = True):
        self.model = model.eval()
        self.processor = processor
        self.family = family
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.yes_ids, self.no_ids = answer_ids(self.tokenizer, answer_tokens)
        self.prefix_cache = prefix_cache
        self._ids_cache: dict[tuple, tuple[list[int], list[int]]] = {(None,): (self.yes_ids, self.no_ids)}
        head = model.get_output_embeddings()
        self._head_weight = head.weight
        self._head_bias = getattr(head, "bias", None)
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper or not
        self.backbone = inner.model  # the model without its language-model head: vision, connector, text model
        text_cfg = model.config.get_text_config()
        self.max_length = getattr(text_cfg, "max_position_embeddings", None)
        self.stats = {"prefix_cached_items": 0, "plain_items": 0}  # how items were scored, for tests and logs
        # what the judge was trained to answer (its folder's rewarddance.json); None for a general VLM
        self.trained_for: TrainedFor | None = None

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        quantization: str | None = None,
        trust_remote_code: bool = False,
        answer_tokens=None,
        prefix_cache: bool = True,
    ) -> RewardModel:
        """Load a VLM checkpoint (hub id or local folder) as a reward model.

        ``dtype`` defaults to bfloat16 on CUDA and float32 on the CPU; ``quantization`` is ``None``, ``"8bit"`` or
        ``"4bit"`` (bitsandbytes; the lm_head stays in full precision). ``answer_tokens`` overrides the yes/no token
        sets (see :func:`rewarddance.tokens.answer_ids`). ``shapes-s``, ``shapes-m`` and ``shapes-l`` name the
        bundled ShapesWorld judges (:mod:`rewarddance.bundled`) unless a local folder has that name.
        """
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        from .bundled import resolve

        name_or_path = resolve(name_or_path)

        if quantization not in QUANTIZATION:
            raise ValueError(f"quantization must be one of {QUANTIZATION}, got {quantization!r}")
        device = _check_device(device) if device is not None else _default_device()
        if isinstance(dtype, str):
            found = getattr(torch, dtype.removeprefix("torch."), None)
            if not isinstance(found, torch.dtype) or not found.is_floating_point:
                raise ValueError(f"dtype: unknown {dtype!r}; use float32, bfloat16 or float16")
            dtype = found
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        name = str(name_or_path)
        local = Path(name)
        if not local.exists():
            _check_hub_id(name)
        if local.exists():
            if not local.is_dir():
                raise ModelLoadError(f"{name}: expected a model directory, got a file")
            if (local / "adapter_config.json").exists() and not (local / "config.json").exists():
                return cls._from_adapter(
                    local, dtype, device, quantization, trust_remote_code, answer_tokens, prefix_cache
                )
            if not (local / "config.json").exists():
                raise ModelLoadError(f"{name}: no config.json in this directory")
            _check_local_weights(local)
        try:
            config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        except ValueError as err:
            if "trust_remote_code" in str(err) or "custom code" in str(err):
                raise ModelLoadError(
                    f"{name}: this checkpoint needs its own code from the repository; pass trust_remote_code=True "
                    "only if you trust it"
                ) from err
            raise ModelLoadError(f"{name}: cannot read the model config ({err})") from err
        except OSError as err:  # not on the hub, gated, or the network failed mid-way: its first line says which
            raise ModelLoadError(f"{name}: cannot read the model config ({_first_line(err)})") from err
        family = family_for(config.model_type)
        kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True)
        if quantization is not None:
            from transformers import BitsAndBytesConfig

            skip = ["lm_head"]
            if quantization == "4bit" and device.type == "cpu":
                kept, total = cpu_4bit_unsupported(config)
                kept = [n for n in kept if n != "lm_head"]
                if kept:
                    logger.warning(
                        "%s: 4-bit on the CPU keeps %d of %d Linear layers in %s: bitsandbytes' CPU kernels need "
                        "in_features %% %d == 0 and out_features %% %d == 0",
                        name,
                        len(kept),
                        total,
                        str(dtype).removeprefix("torch."),
                        CPU_4BIT_IN_MULTIPLE,
                        CPU_4BIT_OUT_MULTIPLE,
                    )
                    skip += [re.escape(n) for n in kept]  # transformers reads each entry as a regex
            if quantization == "8bit":
                kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
            else:
                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_compute_dtype=dtype,
                    llm_int8_skip_modules=skip,
                )
            kwargs["device_map"] = device_map_for(device)
        try:
            model = AutoModelForImageTextToText.from_pretrained(name, **kwargs)
        except OSError as err:
            raise ModelLoadError(f"{name}: cannot load the weights ({err})") from err
        if quantization is None:
            model = model.to(device)
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
        rm = cls(model, processor, family, answer_tokens=answer_tokens, prefix_cache=prefix_cache)
        rm.trained_for = read_trained_for(local) if local.is_dir() else None
        return rm

    @classmethod
    def _from_adapter(cls, folder: Path, dtype, device, quantization, trust_remote_code, answer_tokens, prefix_cache):
        """A folder holding a peft LoRA adapter (as ``rewarddance train-rm`` saves with ``merge: false``): load the
        base model it names, apply the adapter (merged into the weights unless the base is quantised), and use the
        folder's processor when it has one."""
        import json

        from peft import PeftModel
        from transformers import AutoProcessor

        _check_local_weights(folder)
        base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise ModelLoadError(f"{folder}: adapter_config.json does not name its base model")
        rm = cls.from_pretrained(base, dtype, device, quantization, trust_remote_code, answer_tokens, prefix_cache)
        model = PeftModel.from_pretrained(rm.model, str(folder))
        model = model.merge_and_unload() if quantization is None else model
        has_processor = any((folder / f).exists() for f in ("processor_config.json", "preprocessor_config.json"))
        processor = AutoProcessor.from_pretrained(str(folder)) if has_processor else rm.processor
        adapted = cls(model, processor, rm.family, answer_tokens=answer_tokens, prefix_cache=prefix_cache)
        adapted.trained_for = read_trained_for(folder)
        return adapted

    @staticmethod
    def from_server(url: str, api_key: str | None = None, timeout: float = 120.0, retries: int = 3, **options):
        """A judge served by ``rewarddance serve`` at ``url``, with the same ``score`` / ``compare`` / ``prefer``
        (a :class:`rewarddance.remote.RemoteRewardModel`; ``options``: ``batch_size``, ``concurrency``)."""
        from .remote import RemoteRewardModel

        return RemoteRewardModel(url, api_key=api_key, timeout=timeout, retries=retries, **options)

    @staticmethod
    def from_openai(base_url: str, model: str, api_key: str | None = None, top_logprobs: int = 20, **options):
        """A judge on an OpenAI-compatible server (vLLM, SGLang, ``rewarddance serve``): P(yes) from the answer
        token's ``top_logprobs`` (:class:`rewarddance.openai_judge.OpenAIJudge`, which states the approximation)."""
        from .openai_judge import OpenAIJudge

        return OpenAIJudge(base_url, model, api_key=api_key, top_logprobs=top_logprobs, **options)

    def save(self, out_dir: str | os.PathLike, merge: bool = True, trained_for: TrainedFor | None = None) -> Path:
        """Save so that :meth:`from_pretrained` loads ``out_dir`` back: full weights (a LoRA merged in first when
        ``merge``, and then this model holds the merged weights too) or, with ``merge=False``, the LoRA adapter
        alone; the processor beside them. ``trained_for`` (how the judge was trained to be asked) goes to
        ``rewarddance.json``, where :attr:`trained_for` and the command line read it."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model = self.model
        if hasattr(model, "peft_config") and merge:
            model = self.model = model.merge_and_unload()  # the backbone's layers are merged in place
        if hasattr(model, "peft_config"):
            model.save_pretrained(out)  # adapter_config.json + adapter_model.safetensors
        else:
            model.save_pretrained(out, safe_serialization=True)
        self.processor.save_pretrained(out)
        if trained_for is not None:
            write_trained_for(out, trained_for)
            self.trained_for = trained_for
        return out

    @property
    def device(self) -> torch.device:
        return self._head_weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._head_weight.dtype

    # ----------------------------------------------------------------------------------------------- inputs
    def _items(self, images, prompts, references, context: RewardContext, pairwise: bool):
        """Validate and broadcast the batch: (candidates, prompts, references or None)."""
        cands = as_image_list(images, "images")
        if not cands:
            raise ValueError("images: the batch is empty")
        B = len(cands)
        if isinstance(prompts, str) or prompts is None:
            prompts = [prompts] * B
        prompts = list(prompts)
        if len(prompts) != B:
            raise ValueError(f"prompts: got {len(prompts)} prompts for {B} images")
        for i, p in enumerate(prompts):
            if p is None or not str(p).strip():
                if context.uses_prompt:
                    raise ValueError(f"prompts[{i}]: empty prompt; the task {context.task!r} asks about the prompt")
                prompts[i] = ""
        refs = None
        if pairwise:
            if references is None:
                raise ValueError("references: pairwise comparison needs a reference image per candidate")
            refs = as_image_list(references, "references")
            if len(refs) == 1 and B > 1:
                refs = refs * B
            if len(refs) != B:
                raise ValueError(f"references: got {len(refs)} references for {B} images")
        return cands, prompts, refs

    def prompt_texts(self, prompts, context: RewardContext, pairwise: bool) -> list[str]:
        """The chat-template text of each prompt's question under ``context``, ending where the answer begins."""
        return [
            self.processor.apply_chat_template(
                context.messages(p, pairwise), add_generation_prompt=True, tokenize=False
            )
            for p in prompts
        ]

    def render(self, images, prompts, context: RewardContext | None = None, references=None) -> list[str]:
        """The exact prompt text for each item, with the family's image placeholders shown."""
        context = context or RewardContext()
        pairwise = references is not None
        _, prompts, _ = self._items(images, prompts, references, context, pairwise)
        return self.prompt_texts(prompts, context, pairwise)

    def _load_all(self, items: list, label: str) -> list:
        return [
            load_image(x, name=f"{label}[{k}]" if not isinstance(x, (str, os.PathLike)) else None)
            for k, x in enumerate(items)
        ]

    def check_length(self, lengths, what: str = "prompt") -> None:
        """A :class:`PromptTooLongError` naming the first item whose token count exceeds the model's context."""
        if self.max_length is None:
            return
        for i, n in enumerate(lengths):
            if n > self.max_length:
                raise PromptTooLongError(
                    f"item {i}: the rendered {what} is {n} tokens, longer than the model's context of "
                    f"{self.max_length}; shorten the prompt or criteria, use fewer examples or smaller images"
                )

    def encode(self, texts: list[str], image_lists: list[list]):
        """Tokenise ``texts`` with their images (one list per text) into model inputs, a left-padded batch; the
        length of each is checked against the model's context."""
        inputs = self.processor(text=texts, images=image_lists, padding=True, return_tensors="pt")
        self.check_length(inputs["attention_mask"].sum(dim=1).tolist())
        return inputs

    def prepare(self, images, prompts, context: RewardContext | None = None, references=None):
        """The exact model inputs (a ``BatchFeature``, left padded) for a batch of items."""
        context = context or RewardContext()
        pairwise = references is not None
        cands, prompts, refs = self._items(images, prompts, references, context, pairwise)
        cands = self._load_all(cands, "images")
        refs = self._load_all(refs, "references") if pairwise else None
        ctx_imgs = [load_image(x, name=f"examples[{k}]") for k, x in enumerate(context.example_images(pairwise))]
        lists = [ctx_imgs + ([refs[i]] if pairwise else []) + [cands[i]] for i in range(len(cands))]
        return self.encode(self.prompt_texts(prompts, context, pairwise), lists)

    # ----------------------------------------------------------------------------------------------- reading
    def verdict_ids(self, context: RewardContext) -> tuple[list[int], list[int]]:
        """The token ids read as "yes" and as "no" under ``context`` (its ``answer_tokens``, else the model's)."""
        key = (context.answer_tokens,) if context.answer_tokens is not None else (None,)
        if key not in self._ids_cache:
            self._ids_cache[key] = answer_ids(self.tokenizer, context.answer_tokens)
        return self._ids_cache[key]

    def head(self, trainable: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The language-model head as ``(weight [V, H], bias [V] or None)``.

        Frozen (default): both detached, so a backward through a reward builds no dense ``[V, H]`` weight gradient.
        ``trainable``: the weight keeps its graph when it requires grad (training the whole model) and the bias as
        it is.
        """
        w, b = self._head_weight, self._head_bias
        if not trainable:
            return w.detach(), b.detach() if b is not None else None
        return (w if w.requires_grad else w.detach()), b

    def read(
        self, hidden: torch.Tensor, context: RewardContext, trainable: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states ``[N, H]`` at answer positions -> (p_yes, margin), each float32 ``[N]``, differentiable in
        ``hidden`` (and in the head when ``trainable``, see :meth:`head`)."""
        yes, no = self.verdict_ids(context)
        weight, bias = self.head(trainable)
        return yes_prob(hidden, weight, yes, no, bias=bias, normalize=context.normalize)

    def token_log_probs(self, hidden: torch.Tensor, targets: torch.Tensor, trainable: bool = True) -> torch.Tensor:
        """log P(``targets[n]`` | ``hidden[n]``) over the whole vocabulary, ``[N]`` float32, without building
        ``[N, V]`` logits (:func:`rewarddance.kernels.selected_logprobs`); the head trains when ``trainable``."""
        weight, bias = self.head(trainable)
        return selected_logprobs(hidden, weight, targets, bias=bias)

    def to_device(self, inputs: dict) -> dict:
        """``inputs`` with every tensor on the model's device and floating-point ones in its dtype."""
        out = {}
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device)
                if torch.is_floating_point(v):
                    v = v.to(self.dtype)
            out[k] = v
        return out

    def hidden_states(self, inputs: dict) -> torch.Tensor:
        """One forward pass of the backbone (no head, no cache) on encoded ``inputs``: the last layer's hidden
        states ``[B, T, H]``, with gradients where anything requires them."""
        return self.backbone(**self.to_device(inputs), use_cache=False).last_hidden_state

    def _last_hidden(self, inputs: dict) -> torch.Tensor:
        """Hidden state at the last (left-padded) position, ``[B, H]``."""
        return self.hidden_states(inputs)[:, -1]

    # ----------------------------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def _score_items(self, cands, prompts, refs, context: RewardContext, pairwise: bool, batch_size: int | None):
        cands = self._load_all(cands, "images")
        refs = self._load_all(refs, "references") if pairwise else None
        ctx_imgs = [load_image(x, name=f"examples[{k}]") for k, x in enumerate(context.example_images(pairwise))]
        texts = self.prompt_texts(prompts, context, pairwise)
        lists = [ctx_imgs + ([refs[i]] if pairwise else []) + [cands[i]] for i in range(len(cands))]
        B = len(cands)
        # on the CPU small batches run faster per item (measured 27.3 s vs 31.5 s for 16 candidates of a 256M VLM at
        # 512 px: benchmarks/RESULTS.md); a GPU wants the whole batch
        cuda = self.device.type == "cuda"
        suffix_batch = batch_size or (B if cuda else CPU_SUFFIX_BATCH)
        batch_size = batch_size or (B if cuda else min(B, CPU_BATCH))
        p_yes = torch.empty(B)
        margin = torch.empty(B)
        reasons: list[str] | None = [""] * B if context.wants_reasons else None
        done = torch.zeros(B, dtype=torch.bool)
        if self.prefix_cache and not context.wants_reasons and B > 1:
            for idx in shared_groups(texts, lists):
                res = score_shared(self, [texts[i] for i in idx], [lists[i] for i in idx], context, suffix_batch)
                if res is not None:
                    p_yes[idx], margin[idx] = res
                    done[idx] = True
                    self.stats["prefix_cached_items"] += len(idx)
        todo = [i for i in range(B) if not done[i]]
        self.stats["plain_items"] += len(todo)
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            inputs = self.encode([texts[i] for i in idx], [lists[i] for i in idx])
            if context.wants_reasons:
                p, m, why = self._score_with_reasons(inputs, [texts[i] for i in idx], [lists[i] for i in idx], context)
                for r, i in enumerate(idx):
                    reasons[i] = why[r]
            else:
                with torch.no_grad():
                    p, m = self.read(self._last_hidden(inputs), context)
            p_yes[idx], margin[idx] = p.float().cpu(), m.float().cpu()
        return RewardOutput(p_yes=p_yes, margin=margin, reasons=reasons)

    def _score_with_reasons(self, inputs, texts, lists, context: RewardContext):
        """Decode the chain of thought; the verdict is read at the first answer token (judgment first) or after
        the decoded reasoning (reasoning first)."""
        L = inputs["input_ids"].shape[1]
        with torch.no_grad():
            gen = self.model.generate(
                **self.to_device(inputs), max_new_tokens=context.max_reason_tokens, do_sample=False
            )
            reasons = [r.strip() for r in self.tokenizer.batch_decode(gen[:, L:], skip_special_tokens=True)]
            if context.cot == "reasoning_first":
                # a judge trained by train-rm writes "<reason>\nFinal answer (yes or no): ..."; keep the reason only
                reasons = [r.split("Final answer")[0].strip() for r in reasons]
            if context.cot == "judgment_first":
                p, m = self.read(self._last_hidden(inputs), context)
            else:
                follow = [t + r + "\nFinal answer (yes or no):" for t, r in zip(texts, reasons)]
                p, m = self.read(self._last_hidden(self.encode(follow, lists)), context)
        return p, m, reasons

    def score(
        self, images=None, prompts=None, context: RewardContext | None = None, batch_size: int | None = None,
        references=None, videos=None, num_frames: int | None = None, fps: float | None = None,
    ) -> RewardOutput:  # fmt: skip
        """Pointwise reward: P("yes" | image, prompt, context) for each image.

        ``images``: paths, PIL images, or a ``[B, 3, H, W]`` tensor in [0, 1]; ``prompts``: one string or one per
        image. With ``references`` this is the same as :meth:`compare`. ``videos`` instead of ``images``: clips
        sampled to ``num_frames`` or at ``fps`` (:mod:`rewarddance.video`), recorded in the output's ``videos``.
        """
        if videos is not None:
            return score_videos(self, images, videos, prompts, references, context, batch_size, num_frames, fps)
        context = context or RewardContext()
        if references is not None:
            return self.compare(images, references, prompts, context=context, batch_size=batch_size)
        cands, prompts, _ = self._items(images, prompts, None, context, False)
        return self._score_items(cands, prompts, None, context, False, batch_size)

    def compare(
        self, images=None, references=None, prompts=None, context: RewardContext | None = None,
        batch_size: int | None = None, videos=None, num_frames: int | None = None, fps: float | None = None,
    ) -> RewardOutput:  # fmt: skip
        """Pairwise reward: P("yes") to "Is image 2 better than image 1?" with image 1 = ``references[i]`` and
        image 2 = ``images[i]``. ``context.average_orders`` also asks the swapped question and averages
        ``p`` with ``1 - p_swapped`` (margins: ``(m - m_swapped) / 2``). ``videos``: as in :meth:`score`."""
        if videos is not None:
            return score_videos(self, images, videos, prompts, references, context, batch_size, num_frames, fps, True)
        context = context or RewardContext()
        cands, prompts, refs = self._items(images, prompts, references, context, True)
        out = self._score_items(cands, prompts, refs, context, True, batch_size)
        if context.average_orders:
            swapped = self._score_items(refs, prompts, cands, context, True, batch_size)
            out = RewardOutput(
                p_yes=(out.p_yes + 1.0 - swapped.p_yes) / 2,
                margin=(out.margin - swapped.margin) / 2,
                reasons=out.reasons,
            )
        return out

    def prefer(
        self, a=None, b=None, prompts=None, context: RewardContext | None = None, objective: str | None = None,
        batch_size=None, videos=None, num_frames: int | None = None, fps: float | None = None,
    ) -> Preference:  # fmt: skip
        """P(``b[i]`` is better than ``a[i]``) for each pair; a side of one image is paired with every image of the
        other. ``objective``: ``"pairwise"`` (both images shown together, as :meth:`compare` with ``a`` as reference)
        or ``"pointwise"`` (each image alone, Bradley-Terry on the margins); by default what the judge was trained
        for (:attr:`trained_for`), else pairwise. ``videos=(a, b)``: two batches of videos. See :class:`Preference`."""
        if objective is None:
            objective = self.trained_for.objective if self.trained_for is not None else "pairwise"
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if videos is not None:
            return prefer_videos(self, a, b, videos, prompts, context, objective, batch_size, num_frames, fps)
        a, b = pair_up(as_image_list(a, "a"), as_image_list(b, "b"))
        return preference_of(
            a,
            b,
            prompts,
            objective,
            lambda x, ref, p: self.compare(x, ref, p, context=context, batch_size=batch_size),
            lambda x, p: self.score(x, p, context=context, batch_size=batch_size),
        )

    # ----------------------------------------------------------------------------------------------- gradients
    def _differentiable_read(self, texts: list[str], tensors: list[list[torch.Tensor]], context: RewardContext):
        """(p_yes, margin) of items whose images are checked ``[3, H, W]`` tensors in [0, 1], with gradients to them.
        The pixel inputs come from :func:`rewarddance.preprocess.image_inputs` (the family's image processing in
        torch; within ~1.1 uint8 levels of the stock processor, ~1.75 for Idefics3 / SmolVLM). The text's image
        tokens depend only on each image's size: the processor tokenises it with blank images of those sizes."""
        blanks = [[Image.new("RGB", (t.shape[-1], t.shape[-2])) for t in lst] for lst in tensors]
        inputs = dict(self.encode(texts, blanks))
        per_sample = [image_inputs(self.processor, lst, self.family.name, validate=False) for lst in tensors]
        inputs.update(self.family.stack_image_inputs(per_sample))
        return self.read(self._last_hidden(inputs), context)

    def reward(
        self,
        pixels: torch.Tensor | None = None,
        prompts=None,
        references=None,
        context: RewardContext | None = None,
        output: str = "p_yes",
        videos=None, num_frames: int | None = None, fps: float | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Differentiable reward for generated pixels ``[B, 3, H, W]`` in [0, 1]: float32 ``[B]``.

        Preprocessing (resize, normalise, patchify) runs in torch so gradients reach ``pixels``. ``output`` is
        ``"p_yes"`` (default), ``"margin"`` or ``"log_p"`` (log P(yes)). ``references`` make it pairwise; they are
        fixed targets, detached, so no gradient reaches them. Then ``context.average_orders`` also asks the swapped
        question and averages as :meth:`compare` does (``log_p`` is the log of the averaged ``p_yes``).
        ``cot="reasoning_first"`` needs decoding and is refused here. ``videos``: as in :meth:`score`.
        """
        if videos is not None:
            return reward_videos(self, pixels, videos, prompts, references, context, output, num_frames, fps)
        if output not in ("p_yes", "margin", "log_p"):
            raise ValueError(f"output must be 'p_yes', 'margin' or 'log_p', got {output!r}")
        context = context or RewardContext()
        if context.cot == "reasoning_first":
            raise ValueError(
                "context.cot='reasoning_first': reward() cannot decode the reasoning before the verdict; use "
                "cot='none' or 'judgment_first' for a differentiable reward, or score() / compare()"
            )
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[1] != 3:
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise ImageError(f"pixels: expected a [B, 3, H, W] tensor in [0, 1], got {shape}")
        check_pixels(pixels, "pixels")  # the one scan of the values: nothing below converts or checks them again
        pairwise = references is not None
        if isinstance(references, torch.Tensor):
            check_pixels(references, "references")
        elif pairwise:
            for k, r in enumerate(as_image_list(references, "references")):
                if isinstance(r, torch.Tensor):
                    check_pixels(r, f"references[{k}]")
        cands, prompts, refs = self._items(pixels, prompts, references, context, pairwise)
        texts = self.prompt_texts(prompts, context, pairwise)
        ctx_t = [
            to_tensor(load_image(x, name=f"examples[{k}]")) for k, x in enumerate(context.example_images(pairwise))
        ]
        ref_t = None
        if pairwise:  # references are fixed targets: no gradient reaches them, even from a tensor that asks for one
            ref_t = [
                r.detach() if isinstance(r, torch.Tensor) else to_tensor(load_image(r, name=f"references[{k}]"))
                for k, r in enumerate(refs)
            ]
        tensors = [ctx_t + ([ref_t[i]] if pairwise else []) + [cands[i]] for i in range(len(cands))]
        p, m = self._differentiable_read(texts, tensors, context)
        if pairwise and context.average_orders:
            # the swapped question: is the reference better than the candidate? p -> (p + 1 - p_swapped) / 2
            swapped = [ctx_t + [cands[i], ref_t[i]] for i in range(len(cands))]
            p_swapped, m_swapped = self._differentiable_read(texts, swapped, context)
            p, m = (p + 1.0 - p_swapped) / 2, (m - m_swapped) / 2
        if output == "margin":
            return m
        if output == "log_p":
            return torch.log(p.clamp_min(1e-30))
        return p
