"""Data: the canonical JSONL schema (docs/method.md §1), prompts (docs/method.md §2), synthetic data, batching."""

from mixedr1.data.batch import (
    PromptBatch,
    collate,
    patches_per_prompt,
    pixels_for_prompts,
    select_image_rows,
)
from mixedr1.data.dataset import (
    DataError,
    LoadReport,
    Record,
    load_records,
    load_training_records,
    resolve_data_path,
    scale_by_category,
    select_problem_types,
)
from mixedr1.data.prompt import (
    ANSWER_HINTS,
    INSTRUCTION,
    build_messages,
    build_sft_target,
    model_frame_box,
    prompt_text,
    reference_answer,
    render_prompt,
)

__all__ = [
    "ANSWER_HINTS", "INSTRUCTION", "DataError", "LoadReport", "PromptBatch", "Record",
    "build_messages", "build_sft_target", "collate", "load_records", "load_training_records",
    "model_frame_box", "patches_per_prompt", "pixels_for_prompts",
    "prompt_text", "reference_answer", "render_prompt", "select_image_rows",
    "resolve_data_path", "scale_by_category", "select_problem_types",
]
