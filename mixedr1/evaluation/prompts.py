"""The two evaluation prompts.

- `thinking`: the training prompt of docs/method.md §2 (the paper's Mixed-R1 rows, "thinking ✓" in Table 1):
  the question, the options lettered `A. …` one per line, then the instruction of
  `mixedr1.data.prompt` (reasoning in `<think> </think>`, answer in `<answer> </answer>`) with the
  mcq hint for multiple choice and the chart hint ("a number or short text") otherwise. Using the
  training module's constants keeps the evaluated prompt identical to the trained one.
- `direct`: each benchmark's own default prompt in lmms-eval (the paper's baseline rows): "Answer with
  the option's letter from the given choices directly." / "Answer the question using a single word
  or phrase." and MathVista's per-type hints. MathVision's lmms-eval default asks for a `\\boxed{}`
  answer after step-by-step solving; it is kept (with a line break after that sentence, where
  lmms-eval glues it to the question). MMMU-Pro's vision setting sends the screenshot and only
  "Answer with the option letter from the given choices directly." (the question and options are in
  the image; the item has no option texts to show). MM-Math is not in lmms-eval: its direct prompt
  asks for a step-by-step solution with the answer in `\\boxed{}`, which the authors' scorer reads.

The images come before the text in one user turn (`messages`), as in training.
"""

from __future__ import annotations

from mixedr1.data.prompt import ANSWER_HINTS, INSTRUCTION
from mixedr1.evaluation.benchmarks import EvalItem

PROMPT_MODES = ("thinking", "direct")

MCQ_DIRECT = "Answer with the option's letter from the given choices directly."
MMMU_PRO_DIRECT = "Answer with the option letter from the given choices directly."  # lmms-eval's mmmu_pro wording
BOXED_DIRECT = 'Please solve the problem step by step and put your answer in one "\\boxed{}".'
OPEN_DIRECT = "Answer the question using a single word or phrase."


def lettered_options(options: list[str]) -> list[str]:
    return [f"{chr(ord('A') + i)}. {option.strip()}" for i, option in enumerate(options)]


def thinking_prompt(item: EvalItem) -> str:
    """docs/method.md §2: question, `A. …` options, the fixed think/answer instruction with the type's hint."""
    hint = ANSWER_HINTS["mcq"] if item.multiple_choice else ANSWER_HINTS["chart"]
    return "\n".join([item.question.strip(), *lettered_options(item.options), INSTRUCTION.format(answer_hint=hint)])


def _mathvista_direct(item: EvalItem) -> str:
    """lmms-eval's `format-prompt` shot type: question (with unit), `A. …` choices, a per-type hint."""
    meta = item.meta
    if item.multiple_choice:
        hint = MCQ_DIRECT
    elif meta.get("answer_type") == "integer":
        hint = "Answer the question using a single integer number."
    elif meta.get("answer_type") == "float" and meta.get("precision") == 1:
        hint = "Answer the question using a single floating-point number with one decimal place."
    elif meta.get("answer_type") == "float" and meta.get("precision") == 2:
        hint = "Answer the question using a single floating-point number with two decimal places."
    elif meta.get("answer_type") == "float":
        hint = "Answer the question using a single floating-point number."
    elif meta.get("answer_type") == "list":
        hint = "Answer the question using a Python list."
    else:
        hint = OPEN_DIRECT
    return "\n".join([item.question, *lettered_options(item.options), hint])


def _mathvision_direct(item: EvalItem) -> str:
    text = BOXED_DIRECT + "\n" + item.question
    if item.options:
        text += "\nChoices: " + "\n".join(lettered_options(item.options))
        text += "\nAnswer the question with the option's letter from the given choices directly."
    return text


def _mmbench_direct(item: EvalItem) -> str:
    # lmms-eval: "{hint} {question} {options}" with its evaluator's option header.
    options = "There are several options:\n" + "\n".join(lettered_options(item.options))
    return f"{item.question} {options}\n{MCQ_DIRECT}"


def _mmmu_direct(item: EvalItem) -> str:
    if item.multiple_choice:
        return item.question + "\n" + "\n".join(lettered_options(item.options)) + "\n\n" + MCQ_DIRECT
    return item.question + "\n\n" + OPEN_DIRECT


def _mmstar_direct(item: EvalItem) -> str:
    # lmms-eval's post prompt, without the final period.
    return item.question + "\nAnswer with the option's letter from the given choices directly"


def _ai2d_direct(item: EvalItem) -> str:
    return "\n".join([item.question, *lettered_options(item.options), MCQ_DIRECT])


def _mathverse_direct(item: EvalItem) -> str:
    """lmms-eval's MathVerse prompt is the dataset's own `query_wo` (question + answer-format hint)."""
    return item.meta["query_wo"]


def _mmmu_pro_direct(item: EvalItem) -> str:
    """Standard: question, `A. …` options, the letter instruction; vision: the instruction alone (the
    question and its options are in the screenshot)."""
    if item.meta.get("setting") == "vision":
        return MMMU_PRO_DIRECT
    return item.question + "\n" + "\n".join(lettered_options(item.options)) + "\n\n" + MMMU_PRO_DIRECT


def _mm_math_direct(item: EvalItem) -> str:
    return BOXED_DIRECT + "\n" + item.question


def _mmiq_direct(item: EvalItem) -> str:
    return item.question + "\n" + MCQ_DIRECT


DIRECT_PROMPTS = {
    "mathvista": _mathvista_direct,
    "mathvision": _mathvision_direct,
    "mathvision_testmini": _mathvision_direct,
    "mmbench": _mmbench_direct,
    "mmmu": _mmmu_direct,
    "mmstar": _mmstar_direct,
    "ai2d": _ai2d_direct,
    "mathverse": _mathverse_direct,
    "mmmu_pro": _mmmu_pro_direct,
    "mmiq": _mmiq_direct,
    "m3cot": _ai2d_direct,  # question (+ context), lettered choices, the letter instruction
    "mm_math": _mm_math_direct,
}


def prompt_text(item: EvalItem, mode: str) -> str:
    """The user text of `item` under prompt `mode` ("thinking" or "direct")."""
    if mode == "thinking":
        return thinking_prompt(item)
    if mode == "direct":
        return DIRECT_PROMPTS[item.benchmark](item)
    raise ValueError(f"--prompt must be one of {PROMPT_MODES}, got {mode!r}")


def build_messages(item: EvalItem, mode: str) -> list[dict]:
    """One user turn: an image entry per image, then the text (the layout training uses)."""
    content = [{"type": "image"} for _ in item.images]
    content.append({"type": "text", "text": prompt_text(item, mode)})
    return [{"role": "user", "content": content}]
