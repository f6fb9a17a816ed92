"""The prompt of docs/method.md §2 and the SFT target built from the ground truth.

A prompt is the question, the MCQ options lettered `A. ...` one per line, and one fixed instruction
asking for the reasoning in `<think> </think>` and the final answer in `<answer> </answer>`, with a
per-type hint saying what the answer is. It is a single user turn holding one image entry per
image, rendered by the processor's chat template (Qwen2.5-VL: one
`<|vision_start|><|image_pad|><|vision_end|>` per image, expanded to the image's tokens later).

Grounding boxes are asked for, and written in SFT targets, in absolute pixels of the image the
model sees, i.e. after the processor's resize (Qwen2.5-VL's native convention); the ground truth is
stored in original pixels (docs/method.md §1) and mapped with `mixedr1.data.frame.scale_box_to_model_frame`.
"""

from __future__ import annotations

from mixedr1.data.dataset import Record, option_letter
from mixedr1.data.frame import resized_image_size, scale_box_to_model_frame, uses_normalised_boxes

INSTRUCTION = (
    "First think about the question step by step inside <think> </think> tags, "
    "then give the final answer inside <answer> </answer> tags. The final answer is {answer_hint}."
)

ANSWER_HINTS = {
    "yorn": "yes or no",
    "mcq": "the option letter",
    "chart": "a number or short text",
    "grounding": "the box [x1, y1, x2, y2] in absolute pixel coordinates of the image",
    "open_ended": "a short free-form text",
}

# What the SFT baseline's `<think>` says: the ground truth has no reasoning, only the answer.
SFT_THOUGHTS = {
    "yorn": "I check the image for what the question asks about.",
    "mcq": "I compare the image with each option and pick the one that fits.",
    "chart": "I read the value from the chart.",
    "grounding": "I find the object in the image and read off its box.",
    "open_ended": "I describe what I see in the image.",
}


# InternVL reads and writes boxes normalised to [0, 1000] (mixedr1.families.NORMALISED_BOX_FRAME), not pixels.
NORMALISED_BOX_HINT = "the box [x1, y1, x2, y2] with coordinates normalised to 0-1000 of the image's width and height"


def prompt_text(record: Record, normalised_boxes: bool = False) -> str:
    """The user text: question, lettered options (mcq), instruction with the type's answer hint."""
    lines = [record.question.strip()]
    if record.options:
        lines += [f"{option_letter(i)}. {option.strip()}" for i, option in enumerate(record.options)]
    hint = NORMALISED_BOX_HINT if normalised_boxes and record.problem_type == "grounding" else ANSWER_HINTS[record.problem_type]
    lines.append(INSTRUCTION.format(answer_hint=hint))
    return "\n".join(lines)


def build_messages(record: Record, normalised_boxes: bool = False) -> list[dict]:
    """Chat messages: one user turn with the images first (as Qwen2.5-VL's examples do), then the text."""
    content = [{"type": "image"} for _ in record.images]
    content.append({"type": "text", "text": prompt_text(record, normalised_boxes)})
    return [{"role": "user", "content": content}]


def render_prompt(record: Record, processor) -> str:
    """The prompt string through the processor's chat template, ending where the assistant writes.
    The grounding hint follows the processor's box frame: pixels (Qwen) or 0-1000 (InternVL)."""
    normalised = uses_normalised_boxes(processor)
    return processor.apply_chat_template(build_messages(record, normalised), add_generation_prompt=True, tokenize=False)


def model_frame_box(record: Record, processor, orig_hw: tuple[int, int] | None = None) -> list[float]:
    """The grounding ground truth in the model's frame (the first image's resized pixels, docs/method.md §3).
    `orig_hw` = (height, width) of the first image; read from its file when not given."""
    if record.problem_type != "grounding":
        raise ValueError(f"record {record.id!r}: model_frame_box needs a grounding record, got {record.problem_type}")
    orig_hw = orig_hw or record.image_sizes()[0]
    return scale_box_to_model_frame(record.answer, orig_hw, resized_image_size(processor, *orig_hw))


def format_box(box) -> str:
    """`[x1, y1, x2, y2]` with integer pixels, as Qwen2.5-VL writes boxes."""
    return "[" + ", ".join(str(int(round(v))) for v in box) + "]"


def reference_answer(record: Record, processor=None) -> str:
    """The text a correct answer would have inside `<answer>`: the letter for mcq, the box in the
    model's frame for grounding (needs `processor`), the ground-truth text otherwise."""
    if record.problem_type == "grounding":
        if processor is None:
            raise ValueError(f"record {record.id!r}: a grounding answer needs the processor to map the box")
        return format_box(model_frame_box(record, processor))
    return str(record.answer)


def build_sft_target(record: Record, processor=None, think: str = "canned") -> str:
    """The SFT target from the ground truth (`train.sft_think`): `canned` gives
    `<think>SFT_THOUGHTS[type]</think><answer>…</answer>` (the warm-up: it teaches the format);
    `none` gives `<answer>…</answer>` alone (Table 1's "+SFT baseline" rows: the ground truth has no
    reasoning, and the paper evaluates those rows without thinking)."""
    answer = f"<answer>{reference_answer(record, processor)}</answer>"
    if think == "none":
        return answer
    if think != "canned":
        raise ValueError(f"train.sft_think: expected 'canned' or 'none', got {think!r}")
    return f"<think>{SFT_THOUGHTS[record.problem_type]}</think>{answer}"
