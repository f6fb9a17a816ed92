"""Helpers the sampler tests of every family share: prompts through a family's own processor, and
the teacher-forced reference forward of transformers' model."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mixedr1.rollout import Rollout, repeat_prompts


def prompts_and_images(processor, prompts: list[tuple[str, list[tuple[int, int]]]], seed: int = 0):
    """Chat-template texts and random images for prompts given as (text, [(height, width) of each image])."""
    rng = np.random.default_rng(seed)
    texts, images = [], []
    for text, sizes in prompts:
        content = [{"type": "image"} for _ in sizes] + [{"type": "text", "text": text}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False))
        images += [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    return texts, images


def make_batch(processor, prompts, seed: int = 0):
    """Left-padded processor output."""
    texts, images = prompts_and_images(processor, prompts, seed)
    return dict(processor(text=texts, images=images or None, return_tensors="pt", padding=True))


def eos_ids(processor) -> list[int]:
    return [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]


def teacher_forced_logprobs(model, batch, rollout: Rollout, group_size: int, temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) of each completion token from ONE plain transformers forward over
    prompt + completion (positions from the model's own `get_rope_index` via mm_token_type_ids, its
    own DeepStack where it has one), no cache."""
    rows = repeat_prompts(batch, group_size, model.config)
    prompt_len = rows["input_ids"].shape[1]
    input_ids = torch.cat([rows["input_ids"], rollout.completion_ids], dim=1)  # [B*G, P+T]
    attention_mask = torch.cat([rows["attention_mask"], rollout.completion_mask], dim=1)  # [B*G, P+T]
    with torch.no_grad():
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=rows.get("pixel_values"),
            image_grid_thw=rows.get("image_grid_thw"),
            mm_token_type_ids=(input_ids == model.config.image_token_id).long(),
        ).logits  # [B*G, P+T, V]
    logprobs = torch.log_softmax(logits[:, prompt_len - 1 : -1].float() / temperature, dim=-1)
    return logprobs.gather(2, rollout.completion_ids.unsqueeze(2)).squeeze(2) * rollout.completion_mask
