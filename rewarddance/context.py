"""Reward context: what the judge is asked, and how the question is laid out (paper Sec. 3.2, context scaling).

A :class:`RewardContext` holds the task (a preset or custom criteria), few-shot reference examples and the
chain-of-thought mode, and renders chat messages for one item. Parts shared by a batch come first (system text,
instructions, examples, the prompt, the reference image), the candidate image last but for the question, so that
N candidates share one prefix whose KV cache is computed once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COT_MODES = ("none", "judgment_first", "reasoning_first")


@dataclass(frozen=True)
class TaskPreset:
    """Wording of one judging task."""

    instruction: str
    pointwise_question: str
    pairwise_question: str
    uses_prompt: bool = True


TASKS: dict[str, TaskPreset] = {
    "alignment": TaskPreset(
        instruction="You judge whether generated images match their text prompts: objects, counts, colours, "
        "attributes, spatial relations and any text must agree with the prompt.",
        pointwise_question='Does this image match the prompt "{prompt}"?',
        pairwise_question='Is image 2 better than image 1 at matching the prompt "{prompt}"?',
    ),
    "quality": TaskPreset(
        instruction="You judge the overall quality of generated images: prompt faithfulness, visual quality, "
        "detail, and absence of artifacts or distortions.",
        pointwise_question='Is this a high-quality image for the prompt "{prompt}"?',
        pairwise_question='Is image 2 better than image 1 overall for the prompt "{prompt}"?',
    ),
    "aesthetics": TaskPreset(
        instruction="You judge the aesthetics of images: composition, lighting, colour harmony and style.",
        pointwise_question='Is this image aesthetically pleasing? (Prompt: "{prompt}")',
        pairwise_question='Is image 2 more aesthetically pleasing than image 1? (Prompt: "{prompt}")',
    ),
    "plausibility": TaskPreset(
        instruction="You judge physical plausibility: anatomy, object structure, lighting, shadows, reflections "
        "and physics must be consistent with the real world.",
        pointwise_question='Is this image physically plausible for the prompt "{prompt}"?',
        pairwise_question='Is image 2 more physically plausible than image 1 for the prompt "{prompt}"?',
    ),
    "text": TaskPreset(
        instruction="You judge text rendering: every word the prompt asks for must appear, spelled correctly and "
        "legibly, and nothing else garbled.",
        pointwise_question='Is the text in this image rendered correctly for the prompt "{prompt}"?',
        pairwise_question='Is the text in image 2 rendered better than in image 1 for the prompt "{prompt}"?',
    ),
}
VQASCORE_QUESTION = 'Does this figure show "{prompt}"? Please answer yes or no.'
TASK_NAMES = (*TASKS, "vqascore")

_ANSWER = {
    "none": " Answer yes or no.",
    "judgment_first": " Answer yes or no first, then give a short reason.",
    "reasoning_first": " Think step by step about the evidence first, then end with a final answer: yes or no.",
}


@dataclass(frozen=True)
class Example:
    """A few-shot reference example: an image, its prompt and the verdict a good judge gives."""

    image: Any
    prompt: str
    verdict: bool
    reason: str | None = None
    reference: Any = None  # for pairwise examples: the image 1 it was compared against


@dataclass
class RewardContext:
    """What the reward model is asked (task, criteria, examples, chain-of-thought mode) and how it is read."""

    task: str = field(default="alignment", metadata={"help": f"task preset: one of {', '.join(TASK_NAMES)}"})
    criteria: str | None = field(default=None, metadata={"help": "extra judging criteria appended to the task"})
    question: str | None = field(
        default=None, metadata={"help": "custom question template with {prompt}; overrides the task's question"}
    )
    system: str | None = field(default=None, metadata={"help": "system message; None keeps the family default"})
    examples: tuple[Example, ...] = field(default=(), metadata={"help": "few-shot reference examples"})
    cot: str = field(default="none", metadata={"help": "chain of thought: none, judgment_first, reasoning_first"})
    decode_reasons: bool = field(
        default=False, metadata={"help": "judgment_first: also decode the reason text (reward unchanged)"}
    )
    max_reason_tokens: int = field(default=128, metadata={"help": "token budget for decoded reasons"})
    normalize: str = field(default="vocab", metadata={"help": "P(yes) over the full vocabulary or yes+no only"})
    answer_tokens: tuple | None = field(
        default=None, metadata={"help": "explicit (yes, no) tokens, strings or ids; None resolves all spellings"}
    )
    average_orders: bool = field(
        default=False, metadata={"help": "pairwise: average both image orders to cancel position bias"}
    )

    def __post_init__(self):
        if self.task not in TASK_NAMES:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASK_NAMES)}")
        if self.cot not in COT_MODES:
            raise ValueError(f"unknown cot mode {self.cot!r}; choose one of {', '.join(COT_MODES)}")
        if self.normalize not in ("vocab", "yes_no"):
            raise ValueError(f"normalize must be 'vocab' or 'yes_no', got {self.normalize!r}")
        if self.task == "vqascore":
            if self.answer_tokens is None:
                self.answer_tokens = ("Yes", "No")
        self.examples = tuple(self.examples)

    @property
    def wants_reasons(self) -> bool:
        return self.cot == "reasoning_first" or (self.cot == "judgment_first" and self.decode_reasons)

    @property
    def uses_prompt(self) -> bool:
        template = self.question or (VQASCORE_QUESTION if self.task == "vqascore" else "{prompt}")
        return "{prompt}" in template

    def example_images(self, pairwise: bool) -> list:
        """Images of the few-shot examples, in the order they appear in the messages."""
        out = []
        for ex in self.examples:
            if pairwise and ex.reference is not None:
                out.append(ex.reference)
            out.append(ex.image)
        return out

    def messages(self, prompt: str, pairwise: bool) -> list[dict]:
        """Chat messages for one item; images appear as ``{"type": "image"}`` parts.

        Pointwise: examples..., candidate. Pairwise: examples..., image 1 = reference, image 2 = candidate.
        """
        if self.task == "vqascore":
            # VQAScore (Lin et al. 2024; t2v_metrics): the image first, then the fixed question; nothing else.
            if pairwise:
                raise ValueError("task 'vqascore' is pointwise only; use score(), not compare()")
            question = (self.question or VQASCORE_QUESTION).format(prompt=prompt)
            return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        preset = TASKS[self.task]
        template = self.question or (preset.pairwise_question if pairwise else preset.pointwise_question)
        lead = preset.instruction + (f" Criteria: {self.criteria.strip()}" if self.criteria else "")
        parts: list[dict] = [{"type": "text", "text": lead + "\n"}]
        for k, ex in enumerate(self.examples, 1):
            verdict = "yes" if ex.verdict else "no"
            reason = f" Reason: {ex.reason}" if ex.reason else ""
            parts.append({"type": "text", "text": f"Example {k}. "})
            if pairwise and ex.reference is not None:
                parts += [
                    {"type": "text", "text": "Image 1: "},
                    {"type": "image"},
                    {"type": "text", "text": " Image 2: "},
                ]
            parts.append({"type": "image"})
            ex_question = template.format(prompt=ex.prompt)
            parts.append({"type": "text", "text": f"\n{ex_question} Answer: {verdict}.{reason}\n"})
        if pairwise:
            parts += [
                {"type": "text", "text": "Image 1: "},
                {"type": "image"},
                {"type": "text", "text": "\nImage 2: "},
                {"type": "image"},
            ]
        else:
            parts += [{"type": "text", "text": "Image: "}, {"type": "image"}]
        parts.append({"type": "text", "text": "\n" + template.format(prompt=prompt) + _ANSWER[self.cot]})
        messages = [{"role": "user", "content": parts}]
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system}]})
        return messages
