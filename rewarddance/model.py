"""The generative reward model: reward = P("yes") from a vision-language model, in context (paper Sec. 3.1-3.2).

``RewardModel.from_pretrained`` loads any supported Hugging Face VLM (safetensors only). ``score`` reads the
probability of "yes" at the answer position for pointwise questions, ``compare`` for pairwise ones (image 1 =
reference, image 2 = candidate), and ``reward`` does the same differentiably from pixel tensors so gradients reach a
generator. Only the last position's hidden state is turned into probabilities (``rewarddance.kernels.yes_prob``);
no ``[B, T, V]`` logits are built. When several candidates share the instruction, prompt and reference image, the
shared prefix is run once and its KV cache is reused for every candidate.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .context import RewardContext
from .families import Family, family_for
from .images import ImageError, as_image_list, check_pixels, load_image, to_tensor
from .judge_info import TrainedFor, read_trained_for
from .kernels import yes_prob
from .preprocess import image_inputs
from .tokens import answer_ids

logger = logging.getLogger(__name__)

QUANTIZATION = (None, "8bit", "4bit")


CPU_BATCH = 4  # default items per forward pass on the CPU


class PromptTooLongError(ValueError):
    """A rendered prompt does not fit in the model's context window."""


class ModelLoadError(ValueError):
    """A checkpoint that cannot be loaded as a reward model; the message names it."""


@dataclass
class RewardOutput:
    """Scores for a batch. ``p_yes`` and ``margin`` are float32 ``[B]`` tensors on the CPU."""

    p_yes: torch.Tensor
    margin: torch.Tensor  # log P(yes) - log P(no)
    reasons: list[str] | None = None

    def __len__(self) -> int:
        return self.p_yes.shape[0]


def _check_local_weights(path: Path) -> None:
    if not any(path.glob("*.safetensors")):
        found = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        hint = f" (found {', '.join(found[:3])}: convert them to safetensors)" if found else ""
        raise ModelLoadError(f"{path}: no .safetensors weights in this model directory{hint}")


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_map_for(device: str | torch.device) -> dict:
    """The ``device_map`` that puts a whole quantised model on ``device``: a GPU index for CUDA (``"cuda"`` without
    an index means the current device, 0 when CUDA is not initialised or absent), else the device's name."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"": str(device)}
    if device.index is not None:
        return {"": device.index}
    return {"": torch.cuda.current_device() if torch.cuda.is_available() else 0}


# bitsandbytes' CPU 4-bit path (0.50) quantises a weight in blocks of 64 per row and, on CPUs with AVX512-BF16,
# repacks rows in groups of 32: a Linear whose in_features is not a multiple of 64, or whose out_features is not a
# multiple of 32, fails inside its forward ("N must be divisible by block_n", "shape '[96, 1]' is invalid").
CPU_4BIT_IN_MULTIPLE = 64
CPU_4BIT_OUT_MULTIPLE = 32


def cpu_4bit_unsupported(config) -> tuple[list[str], int]:
    """Names of the ``nn.Linear`` modules of a model built from ``config`` that bitsandbytes cannot run in 4-bit on
    the CPU, and the number of Linear modules in all. The model is built on the meta device: no weights, no memory.
    """
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        skeleton = AutoModelForImageTextToText.from_config(config)
    linears = [(n, m) for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)]
    bad = [n for n, m in linears if m.in_features % CPU_4BIT_IN_MULTIPLE or m.out_features % CPU_4BIT_OUT_MULTIPLE]
    return bad, len(linears)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; a one-line error for a name torch does not know or a GPU this machine
    does not have (instead of a long traceback from the first CUDA call)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        msg = f"device: {device!r} is not a device name ({_first_line(err)}); use cpu, cuda or cuda:N"
        raise ValueError(msg) from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} asks for a GPU, but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _looks_like_path(name: str) -> bool:
    """True for a name that can only be a folder: absolute, ``./``, ``~``, or more than one ``/`` (a hub id is
    ``name`` or ``owner/name``)."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name


def _check_hub_id(name: str) -> None:
    """For a name that is not a local folder: a one-line :class:`ModelLoadError` when it cannot be a hub id, when
    it is not in the Hugging Face cache while offline, or when the hub cannot be reached (one quick request, instead
    of the hub client's ~30 s of retries)."""
    if _looks_like_path(name):
        raise ModelLoadError(f"{name}: no such folder")
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError as err:  # not a valid repo id
        raise ModelLoadError(f"{name}: no such folder, and not a Hugging Face model id ({_first_line(err)})") from err
    if isinstance(cached, str):
        return  # in the local cache: loads offline
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            f"{name}: no such folder, and not in the Hugging Face cache while offline (HF_HUB_OFFLINE is set)"
        )
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=10)
    except Exception as err:  # any transport failure: DNS, refused, timeout, proxy
        raise ModelLoadError(
            f"{name}: no such folder, and the Hugging Face hub ({constants.ENDPOINT}) cannot be reached "
            f"({_first_line(err)})"
        ) from err


def _cache_kwarg(module) -> str:
    """Name of the KV-cache argument: ``cache`` in newer transformers, ``past_key_values`` before."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


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
        self._base = inner.model
        self._cache_arg = _cache_kwarg(self._base)
        text_cfg = model.config.get_text_config()
        self.max_length = getattr(text_cfg, "max_position_embeddings", None)
        self._image_token = getattr(processor, "image_token", None)
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

    def _images_of(self, i: int, cands, refs, context: RewardContext, pairwise: bool) -> list:
        shared = context.example_images(pairwise) + ([refs[i]] if pairwise else [])
        return shared + [cands[i]]

    def _texts(self, prompts, context: RewardContext, pairwise: bool) -> list[str]:
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
        return self._texts(prompts, context, pairwise)

    def _load_all(self, items: list, label: str) -> list:
        return [
            load_image(x, name=f"{label}[{k}]" if not isinstance(x, (str, os.PathLike)) else None)
            for k, x in enumerate(items)
        ]

    def _check_length(self, lengths, what: str = "prompt") -> None:
        if self.max_length is None:
            return
        for i, n in enumerate(lengths):
            if n > self.max_length:
                raise PromptTooLongError(
                    f"item {i}: the rendered {what} is {n} tokens, longer than the model's context of "
                    f"{self.max_length}; shorten the prompt or criteria, use fewer examples or smaller images"
                )

    def _process(self, texts: list[str], image_lists: list[list]):
        inputs = self.processor(text=texts, images=image_lists, padding=True, return_tensors="pt")
        self._check_length(inputs["attention_mask"].sum(dim=1).tolist())
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
        return self._process(self._texts(prompts, context, pairwise), lists)

    # ----------------------------------------------------------------------------------------------- reading
    def _answer_ids(self, context: RewardContext):
        key = (context.answer_tokens,) if context.answer_tokens is not None else (None,)
        if key not in self._ids_cache:
            self._ids_cache[key] = answer_ids(self.tokenizer, context.answer_tokens)
        return self._ids_cache[key]

    def _read(self, hidden: torch.Tensor, context: RewardContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states ``[N, H]`` -> (p_yes, margin), each float32 ``[N]``."""
        yes, no = self._answer_ids(context)
        # the judge is frozen: detach the head so a backward through the reward builds no dense [V, H] weight gradient
        bias = self._head_bias.detach() if self._head_bias is not None else None
        return yes_prob(hidden, self._head_weight.detach(), yes, no, bias=bias, normalize=context.normalize)

    def _to_model(self, inputs: dict) -> dict:
        out = {}
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device)
                if torch.is_floating_point(v):
                    v = v.to(self.dtype)
            out[k] = v
        return out

    def _last_hidden(self, inputs: dict) -> torch.Tensor:
        """One forward pass of the base model; hidden state at the last (left-padded) position, ``[B, H]``."""
        out = self._base(**self._to_model(inputs), use_cache=False)
        return out.last_hidden_state[:, -1]

    # ----------------------------------------------------------------------------------------------- shared prefix
    def _probe_text(self) -> str:
        if not hasattr(self, "_probe"):
            msg = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "."}]}]
            self._probe = self.processor.apply_chat_template(msg, add_generation_prompt=True, tokenize=False)
        return self._probe

    def _image_inputs(self, img) -> dict:
        """The processor's image inputs for one image alone (one sample holding one image)."""
        out = self.processor(text=[self._probe_text()], images=[[img]], return_tensors="pt")
        return {k: out[k] for k in self.family.image_keys if k in out}

    def _join(self, per_image: list[dict]) -> dict:
        """Image inputs of several images that sit in one sample."""
        if len(per_image) == 1:
            return per_image[0]
        if self.family.name in ("idefics3", "smolvlm"):
            return {k: torch.cat([d[k] for d in per_image], dim=1) for k in per_image[0]}
        out = self.family.stack_image_inputs(per_image)
        if "batch_num_images" in out:
            out["batch_num_images"] = out["batch_num_images"].sum().reshape(1)
        return out

    def _rope_positions(self, ids: torch.Tensor, image_inputs: dict, mm_types: torch.Tensor) -> torch.Tensor:
        """M-RoPE position ids ``[3, 1, L]`` of one full sequence (Qwen families)."""
        pos, _ = self._base.get_rope_index(
            ids[None].to(self.device),
            mm_token_type_ids=mm_types[None].to(self.device),
            image_grid_thw=image_inputs["image_grid_thw"].to(self.device),
            attention_mask=torch.ones_like(ids)[None].to(self.device),
        )
        return pos

    def _score_shared(self, texts, image_lists, n_shared: int, context, batch_size: int):
        """Score items whose texts and first ``n_shared`` images are identical but for the last image.

        Returns (p_yes, margin) or None when the prefix cannot be split cleanly (then the caller runs the plain path).
        """
        full = [self.processor(text=[t], images=[imgs], return_tensors="pt") for t, imgs in zip(texts, image_lists)]
        ids = [f["input_ids"][0] for f in full]
        self._check_length([len(x) for x in ids])
        P = self._prefix_length(texts[0], image_lists[0], ids[0])
        if P is None or any(len(x) <= P or not torch.equal(x[:P], ids[0][:P]) for x in ids):
            logger.debug("no clean shared prefix; scoring without the cache")
            return None
        prefix_ids = ids[0][:P]
        shared_imgs = image_lists[0][:n_shared]
        per_image = {}
        for imgs in image_lists:
            for img in imgs:
                if id(img) not in per_image and not self.family.images_depend_on_sample:
                    per_image[id(img)] = self._image_inputs(img)
        if self.family.images_depend_on_sample:
            # the processor lays out an image differently inside a multi-image sample: cut it out of the sample
            for i, imgs in enumerate(image_lists):
                for k, img in enumerate(imgs):
                    per_image.setdefault(
                        id(img), {key: full[i][key][k : k + 1] for key in ("pixel_values", "image_sizes")}
                    )
        shared_inputs = self._join([per_image[id(x)] for x in shared_imgs]) if shared_imgs else {}
        n_images = torch.tensor([len(image_lists[0])])
        if "batch_num_images" in self.family.image_keys and shared_inputs:
            # LLaVA-OneVision lays out an image differently when its sample holds several: say how many there are
            shared_inputs["batch_num_images"] = n_images
        rope = None
        if self.family.mrope:
            rope = [
                self._rope_positions(
                    ids[i], self._join([per_image[id(x)] for x in image_lists[i]]), full[i]["mm_token_type_ids"][0]
                )
                for i in range(len(ids))
            ]
        # 1. the prefix, once, with only the shared images
        prefix_inputs = {"input_ids": prefix_ids[None], "attention_mask": torch.ones(1, P, dtype=torch.long)}
        prefix_inputs.update(shared_inputs)
        if rope is not None:
            prefix_inputs["position_ids"] = rope[0][:, :, :P]
            prefix_inputs["mm_token_type_ids"] = full[0]["mm_token_type_ids"][:, :P]
        with torch.no_grad():
            prefix_out = self._base(**self._to_model(prefix_inputs), use_cache=True)
        prefix_cache = getattr(prefix_out, "cache", None) or getattr(prefix_out, "past_key_values", None)
        kv = [(layer.keys, layer.values) for layer in prefix_cache.layers]
        # 2. the candidates' suffixes, batch by batch, attending to the prefix through expanded cache views
        p_all, m_all = [], []
        for start in range(0, len(ids), batch_size):
            idx = list(range(start, min(start + batch_size, len(ids))))
            B = len(idx)
            S = max(len(ids[i]) - P for i in idx)  # longest suffix in this batch
            suffix = torch.full((B, S), self.tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros(B, P + S, dtype=torch.long)
            mask[:, :P] = 1
            last = torch.empty(B, dtype=torch.long)
            for r, i in enumerate(idx):
                n = len(ids[i]) - P
                suffix[r, :n] = ids[i][P:]
                mask[r, P : P + n] = 1
                last[r] = n - 1
            inputs = {"input_ids": suffix, "attention_mask": mask}
            inputs.update(self.family.stack_image_inputs([per_image[id(image_lists[i][-1])] for i in idx]))
            if "batch_num_images" in self.family.image_keys:
                inputs["batch_num_images"] = n_images.expand(B)
            if rope is not None:
                pos = torch.zeros(3, B, S, dtype=torch.long)
                types = torch.zeros(B, S, dtype=full[0]["mm_token_type_ids"].dtype)
                for r, i in enumerate(idx):
                    n = len(ids[i]) - P
                    pos[:, r, :n] = rope[i][:, 0, P:].cpu()
                    pos[:, r, n:] = pos[:, r, n - 1 : n] + 1 + torch.arange(S - n)
                    types[r, :n] = full[i]["mm_token_type_ids"][0, P:]
                inputs["position_ids"] = pos
                inputs["mm_token_type_ids"] = types
            cache = self._expanded_cache(kv, B)
            with torch.no_grad():
                out = self._base(**self._to_model(inputs), use_cache=True, **{self._cache_arg: cache})
            hidden = out.last_hidden_state[torch.arange(B, device=self.device), last.to(self.device)]
            p, m = self._read(hidden, context)
            p_all.append(p.cpu())
            m_all.append(m.cpu())
        return torch.cat(p_all), torch.cat(m_all)

    def _prefix_length(self, text: str, images: list, ids: torch.Tensor) -> int | None:
        """Tokens before the last image's block in ``ids`` (the full tokenisation of ``text`` with ``images``).

        A special token is inserted just before the last image placeholder and the text processed again; the
        position where the two token sequences part is the split, valid only if removing the marker gives back
        exactly ``ids`` (so the prefix is never tokenised on its own).
        """
        cut = text.rfind(self._image_token) if self._image_token else -1
        marker = self.tokenizer.eos_token or self.tokenizer.pad_token
        if cut < 0 or marker is None:
            return None
        marked = self.processor(text=[text[:cut] + marker + text[cut:]], images=[images], return_tensors="pt")
        m = marked["input_ids"][0]
        if len(m) != len(ids) + 1:
            return None
        differ = (m[:-1] != ids).nonzero()
        k = int(differ[0]) if len(differ) else len(ids)
        if m[k] != self.tokenizer.convert_tokens_to_ids(marker) or not torch.equal(m[k + 1 :], ids[k:]):
            return None
        return k

    def _expanded_cache(self, kv, B: int):
        from transformers import DynamicCache

        cache = DynamicCache()
        for layer, (k, v) in enumerate(kv):
            # [1, heads, P, head_dim] -> [B, heads, P, head_dim] as views; the update below concatenates into new
            # tensors, so the shared prefix is never written.
            cache.update(k.expand(B, *k.shape[1:]), v.expand(B, *v.shape[1:]), layer)
        return cache

    # ----------------------------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def _score_items(self, cands, prompts, refs, context: RewardContext, pairwise: bool, batch_size: int | None):
        cands = self._load_all(cands, "images")
        refs = self._load_all(refs, "references") if pairwise else None
        ctx_imgs = [load_image(x, name=f"examples[{k}]") for k, x in enumerate(context.example_images(pairwise))]
        texts = self._texts(prompts, context, pairwise)
        lists = [ctx_imgs + ([refs[i]] if pairwise else []) + [cands[i]] for i in range(len(cands))]
        B = len(cands)
        # on the CPU small batches run faster per item (measured 27.3 s vs 31.5 s for 16 candidates of a 256M VLM at
        # 512 px: benchmarks/RESULTS.md); a GPU wants the whole batch
        batch_size = batch_size or (B if self.device.type == "cuda" else min(B, CPU_BATCH))
        p_yes = torch.empty(B)
        margin = torch.empty(B)
        reasons: list[str] | None = [""] * B if context.wants_reasons else None
        done = torch.zeros(B, dtype=torch.bool)
        if self.prefix_cache and not context.wants_reasons and B > 1:
            # group by everything but the candidate: same text and same shared images
            groups: dict[tuple, list[int]] = {}
            for i in range(B):
                key = (texts[i], *(id(x) for x in lists[i][:-1]))
                groups.setdefault(key, []).append(i)
            for idx in groups.values():
                if len(idx) < 2:
                    continue
                res = self._score_shared(
                    [texts[i] for i in idx], [lists[i] for i in idx], len(lists[idx[0]]) - 1, context, batch_size
                )
                if res is not None:
                    p_yes[idx], margin[idx] = res
                    done[idx] = True
                    self.stats["prefix_cached_items"] += len(idx)
        todo = [i for i in range(B) if not done[i]]
        self.stats["plain_items"] += len(todo)
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            inputs = self._process([texts[i] for i in idx], [lists[i] for i in idx])
            if context.wants_reasons:
                p, m, why = self._score_with_reasons(inputs, [texts[i] for i in idx], [lists[i] for i in idx], context)
                for r, i in enumerate(idx):
                    reasons[i] = why[r]
            else:
                with torch.no_grad():
                    p, m = self._read(self._last_hidden(inputs), context)
            p_yes[idx], margin[idx] = p.float().cpu(), m.float().cpu()
        return RewardOutput(p_yes=p_yes, margin=margin, reasons=reasons)

    def _score_with_reasons(self, inputs, texts, lists, context: RewardContext):
        """Decode the chain of thought; the verdict is read at the first answer token (judgment first) or after
        the decoded reasoning (reasoning first)."""
        L = inputs["input_ids"].shape[1]
        with torch.no_grad():
            gen = self.model.generate(
                **self._to_model(inputs), max_new_tokens=context.max_reason_tokens, do_sample=False
            )
            reasons = [r.strip() for r in self.tokenizer.batch_decode(gen[:, L:], skip_special_tokens=True)]
            if context.cot == "reasoning_first":
                # a judge trained by train-rm writes "<reason>\nFinal answer (yes or no): ..."; keep the reason only
                reasons = [r.split("Final answer")[0].strip() for r in reasons]
            if context.cot == "judgment_first":
                p, m = self._read(self._last_hidden(inputs), context)
            else:
                follow = [t + r + "\nFinal answer (yes or no):" for t, r in zip(texts, reasons)]
                p, m = self._read(self._last_hidden(self._process(follow, lists)), context)
        return p, m, reasons

    def score(
        self, images, prompts, context: RewardContext | None = None, batch_size: int | None = None, references=None
    ) -> RewardOutput:
        """Pointwise reward: P("yes" | image, prompt, context) for each image.

        ``images``: paths, PIL images, or a ``[B, 3, H, W]`` tensor in [0, 1]; ``prompts``: one string or one per
        image. With ``references`` this is the same as :meth:`compare`.
        """
        context = context or RewardContext()
        if references is not None:
            return self.compare(images, references, prompts, context=context, batch_size=batch_size)
        cands, prompts, _ = self._items(images, prompts, None, context, False)
        return self._score_items(cands, prompts, None, context, False, batch_size)

    def compare(
        self, images, references, prompts, context: RewardContext | None = None, batch_size: int | None = None
    ) -> RewardOutput:
        """Pairwise reward: P("yes") to "Is image 2 better than image 1?" with image 1 = ``references[i]`` and
        image 2 = ``images[i]``. ``context.average_orders`` also asks the swapped question and averages
        ``p`` with ``1 - p_swapped`` (margins: ``(m - m_swapped) / 2``)."""
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

    # ----------------------------------------------------------------------------------------------- gradients
    def _differentiable_image_inputs(self, images: list[torch.Tensor]) -> dict:
        """Image inputs of one sample from ``[3, H, W]`` tensors in [0, 1], keeping the autograd graph.

        :func:`rewarddance.preprocess.image_inputs` redoes the family's image processing in torch with the
        checkpoint's own settings; it differs from the stock processor only where that rounds to uint8 after a
        resize (measured: at most ~1.1 uint8 levels, ~1.75 for Idefics3 / SmolVLM, even on noise images).
        """
        return image_inputs(self.processor, [t.float() for t in images], self.family.name)

    def _differentiable_read(self, texts: list[str], tensors: list[list[torch.Tensor]], context: RewardContext):
        """(p_yes, margin) of items whose images are ``[3, H, W]`` tensors, with gradients to those tensors."""
        pil = [[load_image(t.detach(), name="pixels") for t in lst] for lst in tensors]
        inputs = dict(self._process(texts, pil))
        inputs.update(self.family.stack_image_inputs([self._differentiable_image_inputs(lst) for lst in tensors]))
        return self._read(self._last_hidden(inputs), context)

    def reward(
        self,
        pixels: torch.Tensor,
        prompts,
        references=None,
        context: RewardContext | None = None,
        output: str = "p_yes",
    ) -> torch.Tensor:
        """Differentiable reward for generated pixels ``[B, 3, H, W]`` in [0, 1]: float32 ``[B]``.

        Preprocessing (resize, normalise, patchify) runs in torch so gradients reach ``pixels``. ``output`` is
        ``"p_yes"`` (default), ``"margin"`` or ``"log_p"`` (log P(yes)). ``references`` make it pairwise; then
        ``context.average_orders`` also asks the swapped question and averages as :meth:`compare` does (``log_p``
        is the log of the averaged ``p_yes``). ``cot="reasoning_first"`` needs decoding and is refused here.
        """
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
        check_pixels(pixels, "pixels")
        pairwise = references is not None
        cands, prompts, refs = self._items(pixels, prompts, references, context, pairwise)
        texts = self._texts(prompts, context, pairwise)
        ctx_t = [
            to_tensor(load_image(x, name=f"examples[{k}]")) for k, x in enumerate(context.example_images(pairwise))
        ]
        ref_t = None
        if pairwise:
            ref_t = [
                r if isinstance(r, torch.Tensor) else to_tensor(load_image(r, name=f"references[{k}]"))
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
