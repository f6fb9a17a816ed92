"""The forward that training runs: log-probs of completion tokens after their prompt and images.

`PolicyModel` wraps a Hugging Face vision-language model. Its `forward` is the update's forward —
embed `[prompt | completion]` rows, put the image features in place of the image tokens, run the
language model, and score only the completion tokens with the chunked log-prob function (the
`[N, T, V]` logits never exist). Being the FSDP2 root, its forward gathers the parameters that live
outside the decoder layers and vision blocks (embeddings, final norm, LM head).

The vision tower runs once per prompt, not once per sample: `image_features` encodes each prompt's
images and the rows of a group reuse them (indexing, no copy of pixel data). With the vision tower
frozen (the default), features are computed once per step under no_grad and shared by the policy's
micro-batches, every update epoch and the reference model.

DeepStack (Qwen3-VL, `Family.deepstack`): the vision tower also returns S more feature levels
`[K, D]` (one per `vision_config.deepstack_visual_indexes`), which the model's own forward adds to the
image tokens' hidden states after decoder layers 0..S-1. `image_features` returns them concatenated
along the feature axis, `[K, (1+S)*D]` (merged tokens first, then the levels in order), so every
function that selects image tokens by prompt or row carries them unchanged; `PolicyModel.forward`
splits them again and passes the levels to the language model as the model's forward does
(`deepstack_visual_embeds`, `visual_pos_masks`). Other families have S = 0: `[K, D]` as before.

Positions: the Qwen-VL families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) use 3-D mRoPE (`mixedr1.positions`;
Qwen3-VL interleaves the three components over the rotary frequencies inside the model, from the
same position ids); other families (native InternVL) use plain 1-D positions, counted over real
tokens so left padding does not shift them.

Micro-batches (`SequenceBatch.micro_batches`): padded rows (each cut to its own longest row when
trimmed), or packed (`PackedBatch`, `train.packing`): the real tokens of several sequences back to
back in one row, positions restarting at each sequence, attention restricted to each (a 4-D block
mask on sdpa/eager, flash-attn varlen boundaries on flash_attention_2). The forward asks the batch for
its attention arguments and the states that predict completion tokens, and returns log-probs in the
per-sequence layout `[n, T]` either way, so the loss and the reference's log-probs do not change.

Image layout: Qwen's `image_grid_thw [I, 3]` (patch rows of image i = t*h*w, its tokens = that /
merge**2), or InternVL's `tiles_per_image [I]` (its tokens = tiles * image_seq_length). The functions
below take whichever the family uses (`PromptBatch.image_layout`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from .logprobs import completion_logprobs
from .families import family_of, vision_tower
from .data.batch import pixels_for_prompts
from .positions import append_text_positions, mrope_position_ids


def image_token_id(hf_model: nn.Module) -> int:
    config = hf_model.config
    for name in ("image_token_id", "image_token_index"):
        if getattr(config, name, None) is not None:
            return int(getattr(config, name))
    raise ValueError(f"{type(hf_model).__name__}: config has no image_token_id")


def deepstack_levels(hf_model: nn.Module) -> int:
    """S: the DeepStack feature levels the model adds to its first decoder layers (Qwen3-VL), else 0."""
    if not family_of(hf_model).deepstack:
        return 0
    return len(hf_model.config.vision_config.deepstack_visual_indexes)


def image_features(
    hf_model: nn.Module,
    pixel_values: torch.Tensor,  # [sum_patches, C] Qwen patches of all images (or [num_tiles, 3, H, W] for InternVL)
    image_layout: torch.Tensor | None,  # [I, 3] Qwen's image_grid_thw (InternVL's tiles_per_image: unused)
) -> torch.Tensor:  # [K, (1+S)*D] the image tokens' embeddings, then S DeepStack levels (S = 0: [K, D]), images in order
    """Run the vision tower (with its merger/projector) on a batch of images."""
    if family_of(hf_model).image_layout == "grid":
        tower = vision_tower(hf_model)
        out = tower(pixel_values.to(next(tower.parameters()).dtype), grid_thw=image_layout)
        # transformers 5 returns an output object whose pooler_output is the merged tokens; 4.x a tensor.
        if not hasattr(out, "pooler_output"):
            return out
        if deepstack_levels(hf_model):
            # The vision tower's own output is unsplit in 5.17 and 5.23 (the model's get_image_features
            # splits it per image in 5.23 only); levels in the order of deepstack_visual_indexes.
            return torch.cat([out.pooler_output, *out.deepstack_features], dim=-1)  # [K, (1+S)*D]
        return out.pooler_output
    # Native InternVL: vision tower, pixel shuffle and projector; [num_tiles, image_seq_length, D].
    # The layer and strategy are passed as the model's forward passes them (5.17 needs them explicit).
    config = hf_model.config
    feats = hf_model.model.get_image_features(
        pixel_values=pixel_values,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    )
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    return feats.reshape(-1, feats.shape[-1])  # [num_tiles * image_seq_length, D], tiles in order


def split_per_image(features: torch.Tensor, tokens_per_image: list[int]) -> list[torch.Tensor]:
    return list(torch.split(features, tokens_per_image))


def tokens_per_image(hf_model: nn.Module, image_layout: torch.Tensor) -> list[int]:
    """Image tokens of each image: t*h*w / merge**2 from Qwen's `image_grid_thw [I, 3]`, or
    tiles * image_seq_length from InternVL's `tiles_per_image [I]`."""
    if family_of(hf_model).image_layout == "tiles":
        return (image_layout * hf_model.config.image_seq_length).tolist()
    merge = hf_model.config.vision_config.spatial_merge_size
    return (image_layout.prod(-1) // merge**2).tolist()


@dataclass
class SequenceBatch:
    """`[prompt | completion]` rows of one step, with what the forward needs. N = B*G rows."""

    input_ids: torch.Tensor  # [N, L] prompt (left-padded, P) then completion (right-padded, T)
    attention_mask: torch.Tensor  # [N, L]
    position_ids: torch.Tensor  # [3, N, L] mRoPE, or [N, L] for 1-D families
    completion_mask: torch.Tensor  # [N, T] 1 for completion tokens up to and including EOS
    prompt_index: torch.Tensor  # [N] row -> prompt (rows of a group contiguous)
    num_completion_tokens: int  # T

    def rows(self, index: torch.Tensor, trim: bool = False) -> "SequenceBatch":
        """A micro-batch: the rows `index` ([n]) of every field. With `trim`, only the columns some of
        these rows use: the leading prompt columns that are padding in all of them and the completion
        columns past their longest completion are dropped (its `num_completion_tokens` is then that
        longest length; log-probs of the dropped columns would be masked out anyway)."""
        input_ids, attention_mask, completion_mask = self.input_ids[index], self.attention_mask[index], self.completion_mask[index]
        position_ids = self.position_ids[:, index] if self.position_ids.dim() == 3 else self.position_ids[index]
        T, L = self.num_completion_tokens, input_ids.shape[1]
        first, last = 0, L
        if trim:
            used = attention_mask[:, : L - T].any(0)  # [P] prompt columns some row uses
            first = int(used.int().argmax()) if bool(used.any()) else L - T
            T = max(1, int(completion_mask.sum(1).max()))
            last = L - self.num_completion_tokens + T
        return SequenceBatch(
            input_ids[:, first:last], attention_mask[:, first:last], position_ids[..., first:last],
            completion_mask[:, :T], self.prompt_index[index], T,
        )

    def micro_batches(self, size: int, trim: bool = True, packing: bool = False,
                      max_tokens: int = 0) -> list[tuple[torch.Tensor, "SequenceBatch | PackedBatch"]]:
        """`(row index [n], micro-batch)` pairs of at most `size` rows covering every row once. With
        `trim`, rows are ordered by length first, so each micro-batch holds rows of similar length and
        is cut to its own longest one (`rows(trim=True)`): little compute goes to padding. With
        `packing`, `packed_micro_batches` of at most `max_tokens` token positions each (0: `size`
        times the longest sequence, the memory of `size` untrimmed rows)."""
        if packing:
            return self.packed_micro_batches(max_tokens or size * int(self.attention_mask.sum(1).max()))
        order = torch.arange(self.input_ids.shape[0], device=self.input_ids.device)  # [N]
        if trim:
            # Completion length first, prompt length second: completions spread far more than prompts
            # (16 to T tokens against a few percent), so this leaves the least padding of the orders
            # we measured (by total length, prompt first, completion first).
            completion = self.completion_mask.sum(1)  # [N]
            prompt = self.attention_mask.sum(1) - completion  # [N]
            order = torch.argsort(completion * (self.input_ids.shape[1] + 1) + prompt, descending=True, stable=True)
        return [(idx, self.rows(idx, trim=trim)) for idx in order.split(size)]

    def packed_micro_batches(self, max_tokens: int = 0, row_tokens: int = 0) -> list[tuple[torch.Tensor, "PackedBatch"]]:
        """`(sequence index [n], packed micro-batch)` pairs covering every row once: each row's real tokens
        (prompt without its left padding, completion without its right padding) laid back to back in
        rows of at most `row_tokens` columns (0: the longest sequence), first-fit in order of decreasing
        length, and consecutive rows grouped so that a micro-batch holds at most `max_tokens` columns
        (0: one row each). A sequence is never split; a micro-batch takes at least one row. Rows of the
        longest sequence keep attention no wider than in the padded layout (sdpa and eager compute the
        whole masked [W, W] block): one row per micro-batch padded nothing but ran 4x slower on CPU, and
        rows of twice the longest padded more (0.069 against 0.048 in experiments/bench_step.py)."""
        real = self.attention_mask.bool()  # [N, L]
        lengths = real.sum(1).tolist()  # [N] one host sync per step; the micro-batches serve every forward
        completions = self.completion_mask.sum(1).tolist()  # [N]
        row_tokens = max(row_tokens, max(lengths))
        rows: list[list[int]] = []  # sequence indices per row
        free: list[int] = []  # columns left in each row
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # first-fit decreasing
            j = next((j for j, room in enumerate(free) if room >= lengths[i]), len(rows))
            if j == len(rows):
                rows.append([])
                free.append(row_tokens)
            rows[j].append(i)
            free[j] -= lengths[i]
        groups: list[list[list[int]]] = []
        width = 0  # the current group's widest row
        for row, room in zip(rows, free):
            fill = row_tokens - room
            if groups and (len(groups[-1]) + 1) * max(width, fill) <= max_tokens:
                groups[-1].append(row)
                width = max(width, fill)
            else:
                groups.append([row])
                width = fill
        flat_ids = self.input_ids[real]  # [R] the real tokens, sequence after sequence
        flat_positions = self.position_ids[:, real] if self.position_ids.dim() == 3 else self.position_ids[real]  # [3, R] | [R]
        starts = [0] + list(itertools.accumulate(lengths))[:-1]  # [N] first real token of each sequence in flat_ids
        return [pack_rows(group, lengths, completions, starts, flat_ids, flat_positions, self) for group in groups]

    def padded_tokens(self, micro_batches: list[tuple[torch.Tensor, "SequenceBatch | PackedBatch"]]) -> tuple[int, int]:
        """(token positions the forwards over `micro_batches` process, real tokens): the padding cost."""
        processed = sum(mb.input_ids.numel() for _, mb in micro_batches)
        return processed, int(self.attention_mask.sum())

    # The forward's hooks, which `PackedBatch` answers for its own layout.
    def attention_kwargs(self, attn_implementation: str, dtype: torch.dtype) -> dict:
        return {"attention_mask": self.attention_mask}

    def completion_states(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [n, T, D], [n, T]
        """The states that predict the completion tokens, and those tokens."""
        T, L = self.num_completion_tokens, self.input_ids.shape[1]
        return hidden[:, L - T - 1 : L - 1], self.input_ids[:, L - T :]

    def per_sequence(self, values: torch.Tensor | None) -> torch.Tensor | None:  # [n, T]
        return values


@dataclass
class PackedBatch:
    """A padding-free micro-batch: the real tokens of n `[prompt | completion]` sequences laid back to
    back in r rows of W columns (only each row's tail is padding). Positions restart at each sequence
    (they are the sequence's own, mRoPE included); attention stays inside each sequence. Log-probs
    come back in `SequenceBatch`'s per-sequence layout `[n, T]` (`per_sequence`)."""

    input_ids: torch.Tensor  # [r, W] sequences back to back, then 0 to the row's end
    attention_mask: torch.Tensor  # [r, W] 1 for real tokens, 0 for the tail
    position_ids: torch.Tensor  # [3, r, W] mRoPE, or [r, W] for 1-D families (0 on the tail)
    segment_ids: torch.Tensor  # [r, W] which of the n sequences a column holds; the tail counts as its row's last
    state_index: torch.Tensor  # [C] flat index into r*W of the state that predicts each completion token (C = completion_mask.sum())
    completion_mask: torch.Tensor  # [n, T] as SequenceBatch's, rows in packed order
    prompt_index: torch.Tensor  # [n] sequence -> prompt, in packed (row-major) order: the order image features are consumed
    num_completion_tokens: int  # T
    cu_seq_lens: torch.Tensor  # [S+1] int32 boundaries of the segments over the flattened r*W columns (flash-attn varlen)
    max_length: int  # the longest segment

    def attention_kwargs(self, attn_implementation: str, dtype: torch.dtype) -> dict:
        """Attention restricted to each sequence. flash_attention_2: varlen boundaries (transformers'
        FlashAttentionKwargs) and no mask. sdpa / eager: a 4-D block-diagonal causal mask, which
        transformers' `create_causal_mask` passes through as given (5.17 and 5.23); boolean for sdpa,
        additive for eager (which adds the mask to the scores)."""
        if attn_implementation.startswith("flash_attention"):  # untested here: needs CUDA and flash-attn
            return dict(attention_mask=None, cu_seq_lens_q=self.cu_seq_lens, cu_seq_lens_k=self.cu_seq_lens,
                        max_length_q=self.max_length, max_length_k=self.max_length)
        if attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"train.packing supports sdpa, eager and flash_attention_2 attention, not {attn_implementation!r}")
        W = self.input_ids.shape[1]
        causal = torch.ones(W, W, dtype=torch.bool, device=self.input_ids.device).tril()  # [W, W]
        mask = (self.segment_ids[:, :, None] == self.segment_ids[:, None, :]) & causal  # [r, W, W] query, key
        mask = mask[:, None]  # [r, 1, W, W]
        if attn_implementation == "eager":
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        return {"attention_mask": mask}

    def completion_states(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [1, C, D], [1, C]
        """Only the states of real completion tokens: the LM head spends nothing on padding either."""
        states = hidden.flatten(0, 1)[self.state_index]  # [C, D]
        targets = self.input_ids.flatten()[self.state_index + 1]  # [C]
        return states[None], targets[None]

    def per_sequence(self, values: torch.Tensor | None) -> torch.Tensor | None:  # [1, C] -> [n, T], 0 off the mask
        if values is None:
            return None
        out = values.new_zeros(self.completion_mask.shape)
        return out.masked_scatter(self.completion_mask.bool(), values[0])


def pack_rows(
    rows: list[list[int]],  # sequence indices (of the SequenceBatch) of each packed row
    lengths: list[int],  # [N] real tokens per sequence
    completions: list[int],  # [N] completion tokens per sequence
    starts: list[int],  # [N] each sequence's first token in flat_ids
    flat_ids: torch.Tensor,  # [R] the real tokens of all sequences, back to back
    flat_positions: torch.Tensor,  # [3, R] | [R]
    seq: SequenceBatch,
) -> tuple[torch.Tensor, PackedBatch]:
    """One packed micro-batch from `rows`; the sequence order is row-major, so image tokens (consumed by
    masked_scatter in row-major order) meet their prompts' features in `row_image_embeds` order."""
    order = [i for row in rows for i in row]  # [n]
    W = max(sum(lengths[i] for i in row) for row in rows)
    source, segments, state_index, bounds = [], [], [], [0]
    for r, row in enumerate(rows):
        column = 0
        for i in row:
            k = len(bounds) - 1  # this sequence's place in the micro-batch
            source.extend(range(starts[i], starts[i] + lengths[i]))
            segments.extend([k] * lengths[i])
            first = r * W + column + lengths[i] - completions[i]  # the first completion token's column
            state_index.extend(range(first - 1, first - 1 + completions[i]))
            column += lengths[i]
            bounds.append(r * W + column)
        tail = W - column
        source.extend([-1] * tail)
        segments.extend([segments[-1]] * tail)
        bounds[-1] = (r + 1) * W  # the tail belongs to the row's last sequence
    device = flat_ids.device
    source = torch.tensor(source, device=device).view(len(rows), W)  # [r, W] index into flat_ids; -1 on tails
    real = source >= 0
    input_ids = flat_ids[source.clamp(min=0)].masked_fill(~real, 0)
    position_ids = flat_positions[..., source.clamp(min=0)].masked_fill(~real, 0)
    index = torch.tensor(order, device=device)
    T = max(1, max(completions[i] for i in order))
    bounds_t = torch.tensor(bounds, dtype=torch.int32, device=device)
    return index, PackedBatch(
        input_ids, real.to(seq.attention_mask.dtype), position_ids, torch.tensor(segments, device=device).view(len(rows), W),
        torch.tensor(state_index, device=device), seq.completion_mask[index, :T], seq.prompt_index[index], T,
        bounds_t, max(b - a for a, b in zip(bounds, bounds[1:])),
    )


def build_sequences(
    hf_model: nn.Module,
    prompt_ids: torch.Tensor,  # [B, P] left-padded
    prompt_mask: torch.Tensor,  # [B, P]
    image_layout: torch.Tensor | None,  # [I, 3] Qwen's image_grid_thw (1-D families: unused)
    completion_ids: torch.Tensor,  # [N, T] right-padded (pad is a valid id)
    completion_mask: torch.Tensor,  # [N, T]
    prompt_index: torch.Tensor,  # [N]
) -> SequenceBatch:
    """Concatenate each row's prompt and completion, with positions computed once per prompt."""
    T = completion_ids.shape[1]
    input_ids = torch.cat([prompt_ids[prompt_index], completion_ids], dim=1)  # [N, P+T]
    attention_mask = torch.cat([prompt_mask[prompt_index], completion_mask.to(prompt_mask.dtype)], dim=1)
    if family_of(hf_model).mrope:
        merge = hf_model.config.vision_config.spatial_merge_size
        prompt_pos, next_pos = mrope_position_ids(prompt_ids, prompt_mask, image_layout, image_token_id(hf_model), merge)
        position_ids = append_text_positions(prompt_pos[:, prompt_index], next_pos[prompt_index], T)  # [3, N, P+T]
    else:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [N, P+T]
    return SequenceBatch(input_ids, attention_mask, position_ids, completion_mask, prompt_index, T)


def row_image_embeds(
    features_per_prompt: list[torch.Tensor],  # B entries of [k_b, (1+S)*D]
    prompt_index: torch.Tensor,  # [n]
) -> torch.Tensor | None:  # [sum k, (1+S)*D]
    """The image features of each row's prompt, in row order (what masked_scatter consumes)."""
    parts = [features_per_prompt[i] for i in prompt_index.tolist() if features_per_prompt[i].numel()]
    return torch.cat(parts) if parts else None


def image_embeds_for(policy: "PolicyModel", batch, mb: "SequenceBatch", frozen_features: list[torch.Tensor] | None) -> torch.Tensor | None:
    """The image features `[K, (1+S)*D]` of a micro-batch's rows (of `batch`, a `PromptBatch`): the shared
    frozen ones, or encoded now with grad (each prompt's images once, however many rows share it)."""
    if frozen_features is not None:
        return row_image_embeds(frozen_features, mb.prompt_index)
    prompts = torch.unique(mb.prompt_index)
    pixels, grid = pixels_for_prompts(batch, prompts)
    feats = features_per_prompt(policy.hf, pixels, grid, batch.images_per_prompt[prompts].tolist())
    lookup = {int(p): f for p, f in zip(prompts, feats)}
    return torch.cat([lookup[int(p)] for p in mb.prompt_index]) if feats else None


def features_per_prompt(
    hf_model: nn.Module,
    pixel_values: torch.Tensor | None,
    image_layout: torch.Tensor | None,  # [I, 3] Qwen's image_grid_thw, or InternVL's tiles_per_image [I]
    images_per_prompt: list[int],  # [B]
) -> list[torch.Tensor]:
    """Encode every image once and group the features by prompt: B entries of `[k_b, (1+S)*D]` (the
    image tokens' embeddings, then S DeepStack levels; S = 0 but for Qwen3-VL)."""
    width = hf_model.config.get_text_config().hidden_size * (1 + deepstack_levels(hf_model))
    if pixel_values is None or image_layout is None or sum(images_per_prompt) == 0:
        return [torch.zeros(0, width) for _ in images_per_prompt]
    per_image = split_per_image(image_features(hf_model, pixel_values, image_layout), tokens_per_image(hf_model, image_layout))
    out, start = [], 0
    for count in images_per_prompt:
        chunk = per_image[start : start + count]
        out.append(torch.cat(chunk) if chunk else per_image[0].new_zeros(0, per_image[0].shape[-1]))
        start += count
    return out


class PolicyModel(nn.Module):
    """A VLM whose forward returns completion log-probs (and entropy): the FSDP2 root for training."""

    def __init__(self, hf_model: nn.Module, chunk_size: int | None = None):
        super().__init__()
        self.hf = hf_model
        self.chunk_size = chunk_size

    def forward(
        self,
        batch: SequenceBatch | PackedBatch,
        image_embeds: torch.Tensor | None,  # [K, (1+S)*D] features for the image tokens of these rows, in order
        *,
        temperature: float = 1.0,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # logprobs [n, T], entropy [n, T] | None
        hf = self.hf
        embeds = hf.get_input_embeddings()(batch.input_ids)  # [n, L, D] (packed: [r, W, D])
        deepstack = {}
        if image_embeds is not None:
            mask = ((batch.input_ids == image_token_id(hf)) & batch.attention_mask.bool()).unsqueeze(-1)  # [n, L, 1]
            D, S = embeds.shape[-1], deepstack_levels(hf)
            if tuple(image_embeds.shape) != (int(mask.sum()), (1 + S) * D):
                raise ValueError(f"{int(mask.sum())} image tokens in the rows (hidden size {D}, {S} DeepStack levels) "
                                 f"but image features of shape {tuple(image_embeds.shape)}")
            tokens, *levels = image_embeds.split(D, dim=-1)  # [K, D], S x [K, D]
            embeds = embeds.masked_scatter(mask, tokens.to(embeds.dtype))
            if levels:  # Qwen3-VL: as its model forward passes them, image tokens in row-major order
                deepstack = dict(visual_pos_masks=mask[..., 0], deepstack_visual_embeds=list(levels))
        language_model = hf.model.language_model
        attention = batch.attention_kwargs(language_model.config._attn_implementation, embeds.dtype)
        out = language_model(inputs_embeds=embeds, position_ids=batch.position_ids, use_cache=False, **attention, **deepstack)
        # [n, T, D] states that predict the completion tokens and [n, T] those tokens (packed: [1, C, D], [1, C])
        hidden, targets = batch.completion_states(out.last_hidden_state)
        kwargs = {"chunk_size": self.chunk_size} if self.chunk_size else {}
        head = hf.get_output_embeddings()
        # Under autocast (single-GPU bf16 compute over fp32 weights) the states come out in bf16: give
        # the log-prob function one dtype, so its hand-written backward multiplies matching tensors.
        hidden = hidden.to(head.weight.dtype)
        result = completion_logprobs(
            hidden, head.weight, targets, temperature=temperature, with_entropy=with_entropy,
            lm_head_bias=getattr(head, "bias", None), **kwargs,
        )
        logprobs, entropy = result if with_entropy else (result, None)
        return batch.per_sequence(logprobs), batch.per_sequence(entropy)
