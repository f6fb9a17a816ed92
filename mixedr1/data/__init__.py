"""Data: the canonical JSONL schema (SPEC §1), prompts (SPEC §2), synthetic data, batching."""

from mixedr1.data.batch import (
    PromptBatch,
    collate,
    mm_token_type_ids_from_ids,
    patches_per_prompt,
    pixels_for_prompts,
    prompt_of_pixel_row,
    repeat_pixels_for_group,
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
from mixedr1.data.synth import SynthPaths, write_synthetic_dataset

__all__ = [
    "ANSWER_HINTS", "INSTRUCTION", "DataError", "LoadReport", "PromptBatch", "Record", "SynthPaths",
    "build_messages", "build_sft_target", "collate", "load_records", "load_training_records",
    "mm_token_type_ids_from_ids", "model_frame_box", "patches_per_prompt", "pixels_for_prompts",
    "prompt_of_pixel_row", "prompt_text", "reference_answer", "render_prompt", "repeat_pixels_for_group",
    "resolve_data_path", "scale_by_category", "select_problem_types", "write_synthetic_dataset",
]
