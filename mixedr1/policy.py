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

Image layout: Qwen's `image_grid_thw [I, 3]` (patch rows of image i = t*h*w, its tokens = that /
merge**2), or InternVL's `tiles_per_image [I]` (its tokens = tiles * image_seq_length). The functions
below take whichever the family uses (`PromptBatch.image_layout`).
"""

from __future__ import annotations

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

    def micro_batches(self, size: int, trim: bool = True) -> list[tuple[torch.Tensor, "SequenceBatch"]]:
        """`(row index [n], micro-batch)` pairs of at most `size` rows covering every row once. With
        `trim`, rows are ordered by length first, so each micro-batch holds rows of similar length and
        is cut to its own longest one (`rows(trim=True)`): little compute goes to padding."""
        order = torch.arange(self.input_ids.shape[0], device=self.input_ids.device)  # [N]
        if trim:
            # Completion length first, prompt length second: completions spread far more than prompts
            # (16 to T tokens against a few percent), so this leaves the least padding of the orders
            # we measured (by total length, prompt first, completion first).
            completion = self.completion_mask.sum(1)  # [N]
            prompt = self.attention_mask.sum(1) - completion  # [N]
            order = torch.argsort(completion * (self.input_ids.shape[1] + 1) + prompt, descending=True, stable=True)
        return [(idx, self.rows(idx, trim=trim)) for idx in order.split(size)]

    def padded_tokens(self, micro_batches: list[tuple[torch.Tensor, "SequenceBatch"]]) -> tuple[int, int]:
        """(token positions the forwards over `micro_batches` process, real tokens): the padding cost."""
        processed = sum(mb.input_ids.numel() for _, mb in micro_batches)
        return processed, int(self.attention_mask.sum())


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
        batch: SequenceBatch,
        image_embeds: torch.Tensor | None,  # [K, (1+S)*D] features for the image tokens of these rows, in order
        *,
        temperature: float = 1.0,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # logprobs [n, T], entropy [n, T] | None
        hf = self.hf
        embeds = hf.get_input_embeddings()(batch.input_ids)  # [n, L, D]
        deepstack = {}
        if image_embeds is not None:
            mask = (batch.input_ids == image_token_id(hf)).unsqueeze(-1)  # [n, L, 1]
            D, S = embeds.shape[-1], deepstack_levels(hf)
            if tuple(image_embeds.shape) != (int(mask.sum()), (1 + S) * D):
                raise ValueError(f"{int(mask.sum())} image tokens in the rows (hidden size {D}, {S} DeepStack levels) "
                                 f"but image features of shape {tuple(image_embeds.shape)}")
            tokens, *levels = image_embeds.split(D, dim=-1)  # [K, D], S x [K, D]
            embeds = embeds.masked_scatter(mask, tokens.to(embeds.dtype))
            if levels:  # Qwen3-VL: as its model forward passes them, image tokens in row-major order
                deepstack = dict(visual_pos_masks=mask[..., 0], deepstack_visual_embeds=list(levels))
        out = hf.model.language_model(
            inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False,
            **deepstack,
        )
        hidden = out.last_hidden_state  # [n, L, D]
        T, L = batch.num_completion_tokens, batch.input_ids.shape[1]
        hidden = hidden[:, L - T - 1 : L - 1]  # [n, T, D] states that predict the completion tokens
        targets = batch.input_ids[:, L - T :]  # [n, T]
        kwargs = {"chunk_size": self.chunk_size} if self.chunk_size else {}
        head = hf.get_output_embeddings()
        # Under autocast (single-GPU bf16 compute over fp32 weights) the states come out in bf16: give
        # the log-prob function one dtype, so its hand-written backward multiplies matching tensors.
        hidden = hidden.to(head.weight.dtype)
        result = completion_logprobs(
            hidden, head.weight, targets, temperature=temperature, with_entropy=with_entropy,
            lm_head_bias=getattr(head, "bias", None), **kwargs,
        )
        return result if with_entropy else (result, None)
