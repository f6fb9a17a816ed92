"""Collating records into one processor call, and mapping image patch rows back to prompts.

Qwen2.5-VL takes the images of a whole batch as one flat tensor: `pixel_values` holds the patch
rows of every image, image after image in prompt order, and `image_grid_thw[k] = (t, h, w)` says
image k has t*h*w rows. The language model then has t*h*w / merge_size**2 `<|image_pad|>` tokens
for it, filled in order. So each prompt's pixels are kept ONCE here (B prompts, not B*G samples);
`patches_per_prompt` finds a prompt's rows (a prompt may have several images), and
`pixels_for_prompts` copies rows only for a forward that really runs one
sequence per sample (log-probs of B*G completions each behind its prompt's image tokens).

Native InternVL instead takes `pixel_values [num_tiles, 3, H, W]`: each image is cut into 1 or more
tiles (dynamic tiling plus a thumbnail), tiles image after image, and the language model has
`image_seq_length` `<IMG_CONTEXT>` tokens per tile. There is no `image_grid_thw`; `tiles_per_image`
says how many `pixel_values` rows each image has. `image_layout` is whichever of the two the family
uses, and the row bookkeeping below works on either (rows of an image = t*h*w, or its tile count).

transformers 5 needs `mm_token_type_ids` (1 at image tokens) to build Qwen's 3-D M-RoPE positions;
without it the model silently falls back to 1-D positions. `model_inputs()` passes it when the
processor made it (the training forward passes explicit positions instead, `mixedr1.positions`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch

from mixedr1.data.dataset import Record
from mixedr1.data.prompt import build_sft_target, render_prompt
from mixedr1.data.frame import resized_image_size


@dataclass
class PromptBatch:
    """B prompts, tokenised with their images processed: the input of `generate` and of the
    prompt part of every log-prob forward."""

    input_ids: torch.Tensor  # [B, P] LEFT-padded, so every prompt ends at column P-1 and completions start at P
    attention_mask: torch.Tensor  # [B, P] 0 on padding
    pixel_values: torch.Tensor  # [sum_patches, C*temporal_patch*patch*patch] all images' rows, prompt-major
    image_grid_thw: torch.Tensor  # [num_images, 3] (t, h, w) patches per image, same order as pixel rows
    images_per_prompt: torch.Tensor  # [B] how many images each prompt has (>= 1 in docs/method.md §1 data)
    mm_token_type_ids: Optional[torch.Tensor]  # [B, P] 1 at image tokens, 0 elsewhere (None if not produced)
    records: list[Record]  # [B]
    prompt_texts: list[str]  # [B] the rendered chat prompts
    image_sizes: list[list[tuple[int, int]]]  # [B][images] original (height, width): grounding GT's frame
    model_image_sizes: list[list[tuple[int, int]]]  # [B][images] (height, width) after the processor's resize
    # InternVL only (None for Qwen): pixel_values rows (tiles) of each image; then pixel_values is
    # [num_tiles, 3, H, W] and image_grid_thw is empty.
    tiles_per_image: Optional[torch.Tensor] = None  # [num_images]

    @property
    def image_layout(self) -> torch.Tensor:
        """What says which pixel rows belong to which image: `image_grid_thw` [num_images, 3] (Qwen)
        or `tiles_per_image` [num_images] (InternVL). `features_per_prompt` and `pixels_for_prompts` take it."""
        return self.image_grid_thw if self.tiles_per_image is None else self.tiles_per_image

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for `model(...)` / `model.generate(...)` on the B prompts."""
        if self.tiles_per_image is not None:  # InternVL: no grid; no pixel_values at all without images
            inputs = dict(input_ids=self.input_ids, attention_mask=self.attention_mask)
            if self.pixel_values.numel():
                inputs["pixel_values"] = self.pixel_values
            return inputs
        inputs = dict(
            input_ids=self.input_ids,
            attention_mask=self.attention_mask,
            pixel_values=self.pixel_values,
            image_grid_thw=self.image_grid_thw,
        )
        if self.mm_token_type_ids is not None:
            inputs["mm_token_type_ids"] = self.mm_token_type_ids
        return inputs

    def to(self, device: torch.device | str) -> "PromptBatch":
        """Tensors moved to `device` (pixel_values keep their float32; the model casts to its dtype)."""
        move = lambda t: t.to(device) if t is not None else None  # noqa: E731
        return replace(
            self,
            input_ids=move(self.input_ids),
            attention_mask=move(self.attention_mask),
            pixel_values=move(self.pixel_values),
            image_grid_thw=move(self.image_grid_thw),
            images_per_prompt=move(self.images_per_prompt),
            mm_token_type_ids=move(self.mm_token_type_ids),
            tiles_per_image=move(self.tiles_per_image),
        )


def collate(records: Sequence[Record], processor, max_prompt_tokens: Optional[int] = None) -> PromptBatch:
    """One processor call for B records: prompts from `render_prompt`, images read now, left padding.

    `max_prompt_tokens` (text + image tokens) raises an error naming the record, since a truncated
    prompt would cut image tokens and break the model's image-token count check.
    """
    if not records:
        raise ValueError("collate: expected at least one record")
    texts = [render_prompt(r, processor) for r in records]
    images_by_prompt = [r.load_images() for r in records]
    images = [image for per_prompt in images_by_prompt for image in per_prompt]
    inputs = processor(
        text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt"
    )
    attention_mask = inputs["attention_mask"]  # [B, P]
    if not bool(attention_mask[:, -1].all()):
        raise RuntimeError("collate: the processor did not left-pad the prompts (generation needs left padding)")
    if max_prompt_tokens is not None:
        lengths = attention_mask.sum(-1)  # [B]
        for record, length in zip(records, lengths.tolist()):
            if length > max_prompt_tokens:
                raise ValueError(
                    f"record {record.id!r}: prompt is {length} tokens (text + image), over data.max_prompt_tokens="
                    f"{max_prompt_tokens}; raise it or lower model.max_pixels to give images fewer tokens"
                )
    sizes = [[(image.height, image.width) for image in per_prompt] for per_prompt in images_by_prompt]
    tiles_per_image = None
    image_seq_length = getattr(processor, "image_seq_length", None)  # InternVL: tokens per tile
    if image_seq_length is not None:
        runs = image_token_runs(inputs["input_ids"], processor.image_token_id)  # [num_images] tokens of each image
        tiles_per_image = torch.tensor([run // image_seq_length for run in runs], dtype=torch.long)
        if len(runs) != len(images) or any(run % image_seq_length for run in runs):
            raise RuntimeError(f"collate: {len(images)} images but image-token runs {runs} (image_seq_length={image_seq_length})")
    empty_pixels = torch.zeros(0, 0)
    return PromptBatch(
        input_ids=inputs["input_ids"],
        attention_mask=attention_mask,
        pixel_values=inputs.get("pixel_values", empty_pixels),
        image_grid_thw=inputs.get("image_grid_thw", torch.zeros(0, 3, dtype=torch.long)),
        images_per_prompt=torch.tensor([len(p) for p in images_by_prompt], dtype=torch.long),
        mm_token_type_ids=inputs.get("mm_token_type_ids"),
        records=list(records),
        prompt_texts=texts,
        image_sizes=sizes,
        model_image_sizes=[[resized_image_size(processor, h, w) for h, w in per_prompt] for per_prompt in sizes],
        tiles_per_image=tiles_per_image,
    )


def image_token_runs(input_ids: torch.Tensor, image_token_id: int) -> list[int]:
    """Lengths of the runs of image tokens in `input_ids` [B, P], row after row: one run per image
    (InternVL closes every image with `</img>`, so two images never form one run)."""
    lengths = []
    for row in (input_ids == image_token_id).tolist():
        run = 0
        for is_image in row + [False]:
            if is_image:
                run += 1
            elif run:
                lengths.append(run)
                run = 0
    return lengths


# ----------------------------------------------------------------------------------------------
# Pixel rows <-> prompts


def patches_per_prompt(image_grid_thw: torch.Tensor, images_per_prompt: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """[B] number of `pixel_values` rows of each prompt: the sum of t*h*w over its images.
    `image_grid_thw` may also be InternVL's `tiles_per_image` [num_images] (see `PromptBatch.image_layout`)."""
    rows_per_image = image_grid_thw.prod(-1) if image_grid_thw.dim() == 2 else image_grid_thw  # [num_images]
    counts = torch.as_tensor(images_per_prompt, dtype=torch.long)  # [B]
    if int(counts.sum()) != rows_per_image.shape[0]:
        raise ValueError(f"images_per_prompt sums to {int(counts.sum())}, but image_grid_thw has {rows_per_image.shape[0]} images")
    prompt_of_image = torch.repeat_interleave(torch.arange(counts.shape[0]), counts)  # [num_images]
    return torch.zeros(counts.shape[0], dtype=torch.long).index_add_(0, prompt_of_image, rows_per_image.long().cpu())


def select_image_rows(
    pixel_values: torch.Tensor,  # [S, ...] the pixel rows of every image, prompt-major
    image_layout: torch.Tensor,  # [I, 3] image_grid_thw (rows of an image = t*h*w) or [I] tiles per image
    images_per_prompt: torch.Tensor | Sequence[int],  # [B]
    prompt_index: torch.Tensor | Sequence[int],  # [N] prompts to take, repeats allowed, any order
) -> tuple[torch.Tensor, torch.Tensor]:  # pixel rows of those prompts in that order, and their layout rows
    """The pixel rows and layout entries of the prompts `prompt_index`, in that order (copied)."""
    prompt_index = torch.as_tensor(prompt_index, dtype=torch.long).cpu()  # [N]
    counts = torch.as_tensor(images_per_prompt, dtype=torch.long).cpu()  # [B]
    rows = patches_per_prompt(image_layout.cpu(), counts)  # [B]
    row_start = torch.cumsum(rows, 0) - rows  # [B]
    image_start = torch.cumsum(counts, 0) - counts  # [B]
    empty = torch.zeros(0, dtype=torch.long)
    row_index = torch.cat([empty] + [torch.arange(row_start[b], row_start[b] + rows[b]) for b in prompt_index.tolist()])
    image_index = torch.cat([empty] + [torch.arange(image_start[b], image_start[b] + counts[b]) for b in prompt_index.tolist()])
    return pixel_values[row_index.to(pixel_values.device)], image_layout[image_index.to(image_layout.device)]


def pixels_for_prompts(batch: PromptBatch, prompt_index: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(pixel_values, image_layout)` for a forward whose rows belong to prompts `prompt_index`
    (repeats allowed, any order): e.g. one micro-batch of completions. The layout is
    `image_grid_thw` for Qwen, `tiles_per_image` for InternVL (`PromptBatch.image_layout`). Rows are
    copied, so call it per micro-batch rather than for all B*G samples at once."""
    return select_image_rows(batch.pixel_values, batch.image_layout, batch.images_per_prompt, prompt_index)


def sft_completions(records: Sequence[Record], processor, eos_token_id: int, think: str = "canned") -> tuple[torch.Tensor, torch.Tensor]:
    """The SFT targets `<think>…</think><answer>ground truth</answer><eos>` (`think="none"`: the answer
    alone) of `records` as completions: `completion_ids [B, T]` right-padded with the pad token,
    `completion_mask [B, T]`."""
    tokenizer = processor.tokenizer
    targets = [tokenizer(build_sft_target(r, processor, think), add_special_tokens=False).input_ids + [eos_token_id] for r in records]
    T = max(len(t) for t in targets)
    completion_ids = torch.full((len(targets), T), tokenizer.pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros(len(targets), T, dtype=torch.long)
    for i, target in enumerate(targets):
        completion_ids[i, : len(target)] = torch.tensor(target)
        completion_mask[i, : len(target)] = 1
    return completion_ids, completion_mask
