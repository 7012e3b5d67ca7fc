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
    media: str = "image"  # what the task judges: "image" or "video"
    # image-to-video (a context with ``first_frame``): (pointwise, pairwise) questions replacing the two above
    first_frame_questions: tuple[str, str] | None = None


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
# Video tasks: the axes video judges report (VideoAlign: text alignment, visual and motion quality; VideoScore2 adds
# physical and common-sense consistency), asked as yes / no questions about a whole clip.
VIDEO_TASKS: dict[str, TaskPreset] = {
    "video_alignment": TaskPreset(
        instruction="You judge whether generated videos follow their text prompts: the subjects and their "
        "attributes and counts, what they do, which way they move and in what order events happen must all agree "
        "with the prompt.",
        pointwise_question='Does this video follow the prompt "{prompt}"?',
        pairwise_question='Is video 2 better than video 1 at following the prompt "{prompt}"?',
        media="video",
        first_frame_questions=(
            'Does this video start from the given image and follow the prompt "{prompt}"?',
            'Is video 2 better than video 1 at starting from the given image and following the prompt "{prompt}"?',
        ),
    ),
    "video_quality": TaskPreset(
        instruction="You judge the visual quality of generated videos, frame by frame: sharpness, detail, colour "
        "and lighting, with no blur, noise, flicker, warped objects or other artifacts in any frame.",
        pointwise_question='Is this video of high visual quality? (Prompt: "{prompt}")',
        pairwise_question='Is video 2 of higher visual quality than video 1? (Prompt: "{prompt}")',
        media="video",
    ),
    "video_motion": TaskPreset(
        instruction="You judge the motion in generated videos: movement is smooth and stable, things keep their "
        "shape and identity from frame to frame, motion looks natural, and there is as much of it as the scene "
        "calls for, neither frozen nor chaotic.",
        pointwise_question='Is the motion in this video smooth, natural and stable? (Prompt: "{prompt}")',
        pairwise_question='Is the motion in video 2 better than in video 1? (Prompt: "{prompt}")',
        media="video",
    ),
    "video_physics": TaskPreset(
        instruction="You judge whether generated videos obey physics and common sense over time: solid things do "
        "not pass through each other or appear and vanish without cause, and gravity, contact, collisions, "
        "liquids, light and shadows behave as they do in the real world.",
        pointwise_question='Is this video physically plausible? (Prompt: "{prompt}")',
        pairwise_question='Is video 2 more physically plausible than video 1? (Prompt: "{prompt}")',
        media="video",
    ),
}
TASKS.update(VIDEO_TASKS)
VIDEO_TASK_NAMES = tuple(VIDEO_TASKS)
VQASCORE_QUESTION = 'Does this figure show "{prompt}"? Please answer yes or no.'
TASK_NAMES = (*TASKS, "vqascore")
FIRST_FRAME_NOTE = " Each video was generated from the image shown as its first frame and should start from it."

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
    first_frame: Any = field(
        default=None,
        compare=False,
        metadata={"help": "image-to-video: the conditioning image (one, or one per video) shown before the video"},
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
        if self.first_frame is not None and not self.for_video:
            raise ValueError(
                f"first_frame: image-to-video context needs a video task ({', '.join(VIDEO_TASK_NAMES)}), "
                f"not {self.task!r}"
            )
        self.examples = tuple(self.examples)

    @property
    def for_video(self) -> bool:
        """Whether the task is a video preset (asked with ``videos=`` only)."""
        return self.task in VIDEO_TASKS

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

    def messages(self, prompt: str, pairwise: bool, video: bool = False) -> list[dict]:
        """Chat messages for one item; images appear as ``{"type": "image"}`` parts.

        Pointwise: examples..., candidate. Pairwise: examples..., image 1 = reference, image 2 = candidate.
        ``video``: the reference and the candidate are ``{"type": "video"}`` parts labelled "Video", after the
        first-frame image when the context has one (image-to-video); the examples stay images.
        """
        if self.for_video and not video:
            raise ValueError(f"task {self.task!r} judges videos: give them as videos=, not as images")
        slot = "video" if video else "image"
        if self.task == "vqascore":
            # VQAScore (Lin et al. 2024; t2v_metrics): the image first, then the fixed question; nothing else.
            if pairwise:
                raise ValueError("task 'vqascore' is pointwise only; use score(), not compare()")
            question = (self.question or VQASCORE_QUESTION).format(prompt=prompt)
            return [{"role": "user", "content": [{"type": slot}, {"type": "text", "text": question}]}]
        preset = TASKS[self.task]
        questions = (preset.pointwise_question, preset.pairwise_question)
        lead = preset.instruction
        if self.first_frame is not None:
            questions = preset.first_frame_questions or questions
            lead += FIRST_FRAME_NOTE
        template = self.question or questions[pairwise]
        lead += f" Criteria: {self.criteria.strip()}" if self.criteria else ""
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
        if self.first_frame is not None:  # shared by every candidate: before them, in the prefix
            parts += [{"type": "text", "text": "First frame: "}, {"type": "image"}, {"type": "text", "text": "\n"}]
        noun = slot.capitalize()
        if pairwise:
            parts += [
                {"type": "text", "text": f"{noun} 1: "},
                {"type": slot},
                {"type": "text", "text": f"\n{noun} 2: "},
                {"type": slot},
            ]
        else:
            parts += [{"type": "text", "text": f"{noun}: "}, {"type": slot}]
        parts.append({"type": "text", "text": "\n" + template.format(prompt=prompt) + _ANSWER[self.cot]})
        messages = [{"role": "user", "content": parts}]
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system}]})
        return messages
