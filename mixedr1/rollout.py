"""The one KV-cached sampler shared by training (docs/method.md §4 rollouts), the data engine (docs/method.md §5) and eval.

`generate_rollout(model, batch, params)` samples `G` completions for each of `B` prompts:

1. **Prefill once per prompt** (prefix sharing). The vision tower and the prompt tokens run once for
   the `B` prompts with `use_cache=True`; the KV cache is then repeated `G` times along the batch
   (the dynamic decode: `Cache.batch_repeat_interleave`, present in transformers 5.17 and 5.23; the
   static decode: copied into its preallocated cache, step 3), and so is the last prompt position's
   logits. `model.generate(num_return_sequences=G)` instead prefills all `B*G`
   rows (transformers 5.23 shares the vision encoder but not the language-model prefill; 5.17 shares
   neither). `share_prefix=False` does that too (the prompts repeated before the prefill); it exists
   for the tests and the benchmark.
2. **Positions are explicit.** Qwen2-VL / Qwen2.5-VL / Qwen3-VL use 3-D M-RoPE: text tokens advance
   all three components together, an image's tokens get (t, h, w) grid coordinates, and the next
   text token starts at `start + max(h, w) / merge`. `mixedr1.positions.mrope_position_ids` computes this (the rule of
   transformers 5.x `get_rope_index` for images, checked against it in the tests), and every forward
   gets `position_ids [3, N, L]`. For a decode step all three components equal
   `max(prompt positions) + 1 + t` (= HF's `cache_len + rope_delta` for left-padded rows). Passing
   them explicitly means the model never reads or writes its stateful `model.model.rope_deltas`
   and never needs `mm_token_type_ids`, so the path is the same in 5.17 and 5.23.
   Qwen3-VL takes the same `[3, N, L]` positions (its `get_rope_index` has the same rule for
   images; the interleaving of its mRoPE is inside the rotary embedding). Its text model also
   accepts `[4, N, L]` with 1-D text positions first, which `generate` passes; those only reach
   the attention mask builder and the attention kernel, which get the attention mask here, so the
   3-row form computes the same. Its DeepStack features are added by the model itself in the
   prefill (the only forward with `pixel_values`); decode steps have no image tokens.
   Native InternVL (model_type "internvl") uses 1-D positions: the prompt's real tokens get
   0, 1, ... (left padding skipped, as `generate` does) and decode step t gets
   `position_ids [A, 1] = number of real prompt tokens + t`. Its images come as
   `pixel_values [num_tiles, 3, H, W]` with `image_seq_length` `<IMG_CONTEXT>` tokens per tile,
   and the model merges them in the prefill.
3. **Decode** one token per step, one of two ways (`SamplingParams.decode`, config `rollout.decode`).
   Both draw the same tokens for a seed (below) and stop when every row has finished or after
   `max_new_tokens`; no forward is run for the last sampled token.

   `static` (the default): **fixed shapes** for the whole decode.
   - A KV cache of transformers `StaticLayer`s (the same class in 5.17 and 5.23) is preallocated
     for all `N = B*G` rows and `P + max_new_tokens - 1` columns; the prefill's KV is copied into it
     once per rollout (row `b*G + g` gets prompt `b`, a broadcast copy, nothing repeated in between).
     A token fed at step `t` is written at column `P + t` (each layer's `cumulative_length`).
   - Finished rows are **masked, not dropped**: they keep feeding the pad token and their samples are
     not recorded. The attention mask `key_valid [N, C]` (the prompt mask, then one column set in
     place per step) goes to the model as a 4-D boolean `[N, 1, 1, C]`, which transformers'
     `create_causal_mask` returns as it is (5.17 and 5.23; Qwen3-VL's text model takes no dict of
     per-layer masks, so not a dict): no mask is built per step. Positions, the step counter and the
     finish flags are updated in place on the device; the host reads the device only once every
     `sync_every` steps ("has every row finished?"), so a decode may run up to `sync_every - 1` steps
     on masked rows past its last EOS; the completions are trimmed to the longest one.
   - Attention: for the decode steps the language model's `_attn_implementation` is a registered
     function (`STATIC_DECODE_ATTENTION`): sdpa over the whole cache, the query heads of each
     key/value head entered as that head's queries (GQA without copying the cache: transformers'
     sdpa repeats the cache per query head under torch.compile, and flash_attention_2 cannot take
     the 4-D mask). The prefill keeps the model's own kernel.
   - `compile` (`rollout.compile`; "auto" = on for CUDA only): the decode step
     (`_static_decode_step`: forward, sampling, in-place updates) runs under
     `torch.compile(fullgraph=True)`, with `mode="reduce-overhead"` (CUDA graphs) on CUDA. Nothing in
     the step depends on the step number, and the rows, cache columns and completion width are marked
     dynamic, so one graph serves the whole decode, every prompt length and every group size. The
     buffers are marked as static addresses and, when compiled, kept per model between calls (a
     workspace that only grows: rows, prompt columns rounded up to `PROMPT_BUCKET`, new tokens;
     prompts are right-aligned at its prompt columns and spare rows are finished from the start), so
     CUDA graphs replay on the same addresses. The cost: a compiled decode keeps that KV cache
     allocated between rollouts. Compiled functions are shared by every model (dynamo keeps graphs
     per code object, guarded on the model); a model the compiler rejects under "auto" decodes
     eagerly, with a warning. A language model with sliding-window (or other non-full-attention)
     cache layers decodes `dynamic`, with a warning.

   `dynamic`: finished rows are **dropped from the work**: the DynamicCache
   (`Cache.batch_select_indices`), attention mask and positions keep only active rows, so a finished
   row costs nothing afterwards. The cache is compacted on every step where a row finishes;
   `DynamicCache` already copies its tensors every step (`torch.cat`), so this at most doubles that
   step's cache traffic. Shapes change every step and the host reads the device every step.

Sampling (`sample_next_tokens`), and its departures from `model.generate`:

- `sampling_logprobs` is `log_softmax(logits / temperature)` of the FULL vocabulary, gathered at the
  sampled token: what the trainer's teacher-forced forward computes for `log π_old` (docs/method.md §4 ρ).
  Top-k / top-p truncation and the vision-token ban below change which token is drawn, not the
  recorded log-prob (as in TRL / verl): with the paper's settings (temperature 1, no truncation)
  the two coincide up to the banned tokens' mass.
- Vision placeholders are banned: `image_token_id`, `video_token_id`, `vision_start_token_id`,
  `vision_end_token_id` get logit −inf before sampling (and before greedy argmax). A sampled image
  pad would make the teacher-forced forward fail with "image features and image tokens do not
  match"; `generate` does this only when given `suppress_tokens`.
- Randomness: one uniform number per row per step, drawn for ALL `B*G` rows from a seeded
  `torch.Generator` (`params.seed`), and inverse-CDF sampling (`cumsum` + `searchsorted`, fp32).
  Row `r` at step `t` always uses the same number, whatever other rows did, so a seeded rollout is
  reproducible and `share_prefix` on / off and the static / dynamic decodes draw identically.
  (`torch.multinomial` would tie each row's draw to the current batch composition.) The static
  decode may leave the generator further along (up to `sync_every - 1` more steps drawn).
- `greedy=True` (eval) takes the argmax; `top_k=1` is the same thing.

FSDP2: `generate_rollout` runs the model inside `distributed.gathered_for_generation`, which
all-gathers every unit once and turns reshard-after-forward off until the end, so no collective
runs inside the decode loop and a rank whose rows finish early leaves the loop without waiting.
A model the caller already gathered (no DTensor parameters left) is used as it is and left gathered.
A sharded model does not compile: FSDP2's forward hooks (installed while gathered too) stop
`fullgraph` tracing, so `compile="auto"` leaves it to the eager static step and `compile=True`
raises.

Everything runs under `torch.no_grad()` (not `inference_mode`: the returned tensors may later meet
autograd in the trainer) and in eval mode (restored after), on the model's device; the model
computes in its own dtype and sampling math is fp32.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer, StaticLayer

from mixedr1.data.batch import PromptBatch, pixels_for_prompts, select_image_rows
from mixedr1.distributed import fsdp_units, gathered_for_generation
from mixedr1.families import UnknownFamily, family_of
from mixedr1.positions import mrope_position_ids


@dataclass
class SamplingParams:
    """How to sample; `RolloutConfig` plus the tokenizer's ids (see `sampling_params_from_config`)."""

    group_size: int = 8  # G: completions per prompt (docs/method.md §4)
    max_new_tokens: int = 1024  # T cap
    temperature: float = 1.0  # logits / temperature; also the temperature of `sampling_logprobs`
    top_p: float = 1.0  # nucleus sampling; 1.0 = off
    top_k: int = 0  # 0 = off
    greedy: bool = False  # argmax (eval); temperature still sets the recorded log-probs
    eos_token_ids: tuple[int, ...] = ()  # any of these ends a completion (kept, mask 1); () = never stop
    pad_token_id: int = 0  # fills completion_ids after the end
    seed: int = 0  # seeds the torch.Generator when none is passed
    decode: str = "static"  # "static" (fixed shapes, finished rows masked) | "dynamic" (finished rows dropped)
    compile: str | bool = "auto"  # static decode step under torch.compile: True | False | "auto" (CUDA only)
    sync_every: int = 16  # static decode: steps between the host's checks that every row has finished

    def __post_init__(self) -> None:
        self.eos_token_ids = tuple(int(t) for t in self.eos_token_ids)
        checks = [
            (self.group_size >= 1, f"group_size must be >= 1, got {self.group_size}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}"),
            (self.decode in ("static", "dynamic"), f"decode must be 'static' or 'dynamic', got {self.decode!r}"),
            (self.compile in ("auto", True, False), f"compile must be 'auto', True or False, got {self.compile!r}"),
            (self.sync_every >= 1, f"sync_every must be >= 1, got {self.sync_every}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SamplingParams: {message}")


def sampling_params_from_config(
    rollout_cfg, *, eos_token_ids: Sequence[int], pad_token_id: int, seed: int = 0, greedy: bool = False
) -> SamplingParams:
    """`SamplingParams` from `config.RolloutConfig` and the tokenizer's / generation config's ids."""
    return SamplingParams(
        group_size=rollout_cfg.group_size,
        max_new_tokens=rollout_cfg.max_new_tokens,
        temperature=rollout_cfg.temperature,
        top_p=rollout_cfg.top_p,
        top_k=rollout_cfg.top_k,
        greedy=greedy,
        eos_token_ids=tuple(eos_token_ids),
        pad_token_id=pad_token_id,
        seed=seed,
        decode=rollout_cfg.decode,
        compile=rollout_cfg.compile,
        sync_every=rollout_cfg.sync_every,
    )


@dataclass
class Rollout:
    """`G` completions of each of `B` prompts; rows of one group are contiguous (row = b*G + g)."""

    completion_ids: torch.Tensor  # [B*G, T] long, right-padded with pad_token_id; T = longest completion
    completion_mask: torch.Tensor  # [B*G, T] long, 1 up to and including the EOS token
    sampling_logprobs: torch.Tensor  # [B*G, T] fp32, log_softmax(logits / temperature)[token]; 0 at padding
    prompt_index: torch.Tensor  # [B*G] long, the prompt (0..B-1) each row answers
    finish_reason: list[str] = field(default_factory=list)  # [B*G] "eos" | "length"

    @property
    def completion_lengths(self) -> torch.Tensor:  # [B*G]
        return self.completion_mask.sum(dim=1)


def eos_token_ids(hf, tokenizer) -> list[int]:
    """End-of-turn tokens: the generation config's, else the tokenizer's EOS (Qwen: <|im_end|>)."""
    eos = getattr(getattr(hf, "generation_config", None), "eos_token_id", None)
    ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids = [tokenizer.eos_token_id] + ids
    if not ids:
        raise ValueError("no EOS token: neither the generation config nor the tokenizer defines one")
    return ids


def decode_completions(rollout: Rollout, tokenizer) -> list[str]:
    """One string per row: the completion's tokens (EOS included, padding excluded), special tokens skipped."""
    lengths = rollout.completion_lengths.tolist()
    rows = rollout.completion_ids.tolist()
    return [tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in zip(rows, lengths)]


# ----------------------------------------------------------------------------------------------
# Positions and prompt expansion


def _images_per_prompt(
    input_ids: torch.Tensor,  # [B, P]
    image_grid_thw: torch.Tensor | None,  # [num_images, 3]
    image_token_id: int,
    spatial_merge_size: int,
) -> list[int]:
    """[B] how many images of `image_grid_thw` each prompt has (images are in row order)."""
    tokens_per_image = [] if image_grid_thw is None else (image_grid_thw.prod(-1) // spatial_merge_size**2).tolist()
    counts: list[int] = []
    image = 0
    for b, count in enumerate((input_ids == image_token_id).sum(dim=1).tolist()):
        first = image
        while count > 0:
            if image >= len(tokens_per_image):
                raise ValueError(f"prompt {b} has image tokens beyond the images of image_grid_thw")
            count -= tokens_per_image[image]
            image += 1
        if count != 0:
            raise ValueError(f"prompt {b}: its image tokens do not add up to whole images of image_grid_thw")
        counts.append(image - first)
    return counts


def repeat_prompts(batch: Mapping[str, Any], group_size: int, model_config) -> dict[str, torch.Tensor]:
    """The prompt batch with each prompt repeated `group_size` times (row b*G + g), images included:
    the no-sharing prefill of `share_prefix=False`.

    `pixel_values` are flat over the batch, so each prompt's rows are found first: from its image
    tokens and `image_grid_thw [num_images, 3]` (Qwen), or from its tile count = image tokens /
    `image_seq_length` (InternVL, `pixel_values [num_tiles, 3, H, W]`).
    """
    input_ids = batch["input_ids"]  # [B, P]
    out = {
        "input_ids": input_ids.repeat_interleave(group_size, dim=0),  # [B*G, P]
        "attention_mask": batch["attention_mask"].repeat_interleave(group_size, dim=0),  # [B*G, P]
    }
    pixel_values = batch.get("pixel_values")
    if pixel_values is None:
        return out
    rows = torch.arange(input_ids.shape[0]).repeat_interleave(group_size)  # [B*G]
    if family_of(model_config).image_layout == "tiles":
        tiles = ((input_ids == model_config.image_token_id).sum(dim=1) // model_config.image_seq_length).cpu()  # [B]
        # A prompt's tiles taken as one layout entry: only rows per prompt matter here.
        out["pixel_values"], _ = select_image_rows(pixel_values, tiles[tiles > 0], (tiles > 0).long(), rows)
        return out
    grid = batch["image_grid_thw"]
    counts = _images_per_prompt(input_ids, grid, model_config.image_token_id, model_config.vision_config.spatial_merge_size)
    out["pixel_values"], out["image_grid_thw"] = select_image_rows(pixel_values, grid, counts, rows)
    return out


# ----------------------------------------------------------------------------------------------
# Sampling


def banned_token_ids(model_config) -> list[int]:
    """Vision placeholder ids that must never be sampled (see the module docstring)."""
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    ids = {getattr(model_config, name, None) for name in names}
    return sorted(i for i in ids if i is not None)


def sample_next_tokens(
    logits: torch.Tensor,  # [N, V], any float dtype
    uniforms: torch.Tensor,  # [N] in [0, 1), one per row
    params: SamplingParams,
    banned_ids: torch.Tensor | None = None,  # [K] long
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens `[N]` and their log-probs `[N]` under `log_softmax(logits / temperature)` (full vocab).

    Draw: banned ids → −inf; greedy → argmax; else top-k, then top-p (keep the smallest prefix of
    tokens, by descending probability, whose mass reaches `top_p`; the first token always stays),
    then inverse-CDF with the given uniforms.
    """
    scaled = logits.float() / params.temperature  # [N, V] fp32
    logprobs_full = torch.log_softmax(scaled, dim=-1)  # [N, V]
    if banned_ids is not None and banned_ids.numel() > 0:
        scaled = scaled.index_fill(1, banned_ids, float("-inf"))
    if params.greedy:
        tokens = scaled.argmax(dim=-1)  # [N]
    else:
        vocab = scaled.shape[-1]
        if 0 < params.top_k < vocab:
            kth = torch.topk(scaled, params.top_k, dim=-1).values[:, -1:]  # [N, 1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)  # [N, V]
        if params.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)  # [N, V]
            mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # [N, V]
            sorted_probs = sorted_probs.masked_fill(mass_before >= params.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter_(1, order, sorted_probs)
        cdf = probs.cumsum(dim=-1)  # [N, V], unnormalised after truncation
        total = cdf[:, -1:]  # [N, 1]
        target = uniforms.to(cdf.device, cdf.dtype).unsqueeze(1) * total  # [N, 1]
        # Kept strictly below the total mass (u * total can round up to it), so some token's cdf
        # exceeds it; no host sync needed.
        target = torch.minimum(target, torch.nextafter(total, torch.zeros_like(total)))
        # right=True: the first token whose cdf exceeds the target, so zero-probability tokens
        # (banned, truncated) are never chosen.
        tokens = torch.searchsorted(cdf, target, right=True).squeeze(1)  # [N]
    logprobs = logprobs_full.gather(1, tokens.unsqueeze(1)).squeeze(1)  # [N]
    return tokens, logprobs


# ----------------------------------------------------------------------------------------------
# The sampler


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _has_sharded_parameters(model: nn.Module) -> bool:
    """True for an FSDP2 model that is not gathered: its sharded parameters are DTensors, and FSDP2
    swaps in plain tensors while a unit is unsharded. A type check, no communication."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return any(isinstance(p, DTensor) for p in model.parameters())


def generate_rollout(
    model: nn.Module,
    batch: Mapping[str, Any],
    params: SamplingParams,
    *,
    generator: torch.Generator | None = None,
    share_prefix: bool = True,
) -> Rollout:
    """Sample `params.group_size` completions for each prompt of `batch` (see the module docstring).

    `batch`: `input_ids [B, P]` LEFT-padded, `attention_mask [B, P]`, and for prompts with images
    `pixel_values [sum_patches, C]` and `image_grid_thw [num_images, 3]` (the Qwen processor's
    output), or InternVL's `pixel_values [num_tiles, 3, H, W]`; other keys are ignored. `model`: a
    Qwen2-VL / Qwen2.5-VL / Qwen3-VL `ForConditionalGeneration` or a native
    `InternVLForConditionalGeneration`, plain or FSDP2-sharded. `generator`: a `torch.Generator`
    (any device; default: one on the model's device seeded with `params.seed`); the same generator
    state gives the same rollout.
    """
    config = model.config
    try:
        family_of(config)
    except UnknownFamily as e:
        raise NotImplementedError(f"generate_rollout: {e}") from None
    if batch.get("pixel_values_videos") is not None:
        raise NotImplementedError("generate_rollout: video inputs are not supported (Mixed-R1 trains on images)")
    input_ids = batch["input_ids"]
    video_token_id = getattr(config, "video_token_id", None)
    if video_token_id is not None and bool((input_ids == video_token_id).any()):
        raise ValueError("generate_rollout: the prompts contain video tokens; only images are supported")
    if "attention_mask" in batch and bool((batch["attention_mask"][:, -1] == 0).any()):
        raise ValueError("generate_rollout: input_ids must be LEFT-padded (a row's last attention_mask entry is 0)")
    # Eval mode for the rollout: in training mode with gradient checkpointing on, transformers turns
    # `use_cache` off (and drops the cache), and dropout would perturb the samples. Each module's
    # own flag is restored afterwards (a frozen vision tower may be kept in eval mode on purpose).
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        # A caller that already holds the model gathered (the trainer, around rollout + rewards) keeps
        # it so: gathering again here would reshard everything on the way out.
        gathering = gathered_for_generation(model) if _has_sharded_parameters(model) else contextlib.nullcontext()
        with gathering, torch.no_grad():
            device = _model_device(model)
            if generator is None:
                generator = torch.Generator(device=device).manual_seed(params.seed)
            return _sample(model, batch, params, generator, share_prefix, device)
    finally:
        for module, training in modes:
            module.training = training


def _sample(
    model: nn.Module,
    batch: Mapping[str, Any],
    params: SamplingParams,
    generator: torch.Generator,
    share_prefix: bool,
    device: torch.device,
) -> Rollout:
    config = model.config
    mrope = family_of(config).mrope
    group = params.group_size
    input_ids = batch["input_ids"].to(device)  # [B, P]
    attention_mask = batch.get("attention_mask")
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)  # [B, P]
    prompts = {"input_ids": input_ids, "attention_mask": attention_mask}
    for key in ("pixel_values", "image_grid_thw") if mrope else ("pixel_values",):
        # Text-only prompts may come with empty image tensors (`rollout_in_chunks`); the Qwen vision
        # towers fail on zero images, so those prompts take none, as the processor gives them.
        if batch.get(key) is not None and batch[key].numel():
            prompts[key] = batch[key].to(device)
    num_prompts = input_ids.shape[0]
    if not share_prefix:
        prompts = repeat_prompts(prompts, group, config)  # every tensor now has B*G rows / their images

    # Prefill: vision tower + prompt tokens, once per prompt (or once per row without sharing).
    if mrope:
        position_ids, next_position = mrope_position_ids(
            prompts["input_ids"],
            prompts["attention_mask"],
            prompts.get("image_grid_thw"),
            image_token_id=config.image_token_id,
            spatial_merge_size=config.vision_config.spatial_merge_size,
        )  # [3, B, P], [B]
        vision_inputs = dict(pixel_values=prompts.get("pixel_values"), image_grid_thw=prompts.get("image_grid_thw"))
    else:
        position_ids = (prompts["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)  # [B, P] real tokens 0, 1, ...
        next_position = prompts["attention_mask"].long().sum(-1)  # [B]
        pixel_values = prompts.get("pixel_values")
        vision_inputs = dict(pixel_values=pixel_values if pixel_values is not None and pixel_values.numel() else None)
    out = model(
        input_ids=prompts["input_ids"],
        attention_mask=prompts["attention_mask"],
        position_ids=position_ids,
        **vision_inputs,
        use_cache=True,
        logits_to_keep=1,
    )
    prefill = _Prefill(
        logits=out.logits[:, -1],
        cache=out.past_key_values,
        attention_mask=prompts["attention_mask"],
        next_position=next_position,
        repeats=group if share_prefix else 1,
    )
    del out

    banned = torch.tensor(banned_token_ids(config), dtype=torch.long, device=device)  # [K]
    banned = banned[banned < prefill.logits.shape[-1]]
    eos = torch.tensor(params.eos_token_ids, dtype=torch.long, device=device)  # [E]
    decode = _decode_static if params.decode == "static" else _decode_dynamic
    completion_ids, completion_mask, sampling_logprobs, ended_by_eos = decode(
        model, prefill, params, generator, banned, eos, mrope
    )
    return Rollout(
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        sampling_logprobs=sampling_logprobs,
        prompt_index=torch.arange(num_prompts, device=device).repeat_interleave(group),
        finish_reason=["eos" if e else "length" for e in ended_by_eos.tolist()],
    )


@dataclass
class _Prefill:
    """The prompts after the prefill. B' = B with prefix sharing (row b*G + g continues prompt b), B*G without."""

    logits: torch.Tensor  # [B', V] at the last prompt position
    cache: Any  # transformers DynamicCache, keys / values [B', H_kv, P, D] per layer
    attention_mask: torch.Tensor  # [B', P] 1 = real prompt token
    next_position: torch.Tensor  # [B'] position of the first completion token
    repeats: int  # G with prefix sharing, else 1


DECODE_RANGE = "rollout.decode"  # profiler range around a decode loop (experiments/bench_rollout.py counts syncs in it)


def _decode_dynamic(model, prefill: _Prefill, params: SamplingParams, generator, banned, eos, mrope: bool):
    """Decode with a growing DynamicCache that keeps only the rows still running (docstring, step 3 dynamic)."""
    group = prefill.repeats
    cache, logits, mask, next_position = prefill.cache, prefill.logits, prefill.attention_mask, prefill.next_position
    if group > 1:
        cache.batch_repeat_interleave(group)
        logits = logits.repeat_interleave(group, dim=0)  # [B*G, V]
        next_position = next_position.repeat_interleave(group)  # [B*G]
        mask = mask.repeat_interleave(group, dim=0)  # [B*G, P]
    prefill.cache = prefill.logits = None
    device = logits.device
    rows = logits.shape[0]
    max_new = params.max_new_tokens
    completion_ids = torch.full((rows, max_new), params.pad_token_id, dtype=torch.long, device=device)  # [B*G, T]
    completion_mask = torch.zeros(rows, max_new, dtype=torch.long, device=device)  # [B*G, T]
    sampling_logprobs = torch.zeros(rows, max_new, dtype=torch.float32, device=device)  # [B*G, T]
    ended_by_eos = torch.zeros(rows, dtype=torch.bool, device=device)  # [B*G]
    active = torch.arange(rows, device=device)  # [A] rows still running; the cache holds exactly these
    steps = 0
    with torch.profiler.record_function(DECODE_RANGE):
        for step in range(max_new):
            # One uniform per row of the whole rollout, so a row's draw does not depend on the others.
            uniforms = torch.rand(rows, generator=generator, device=generator.device).to(device)[active]  # [A]
            tokens, logprobs = sample_next_tokens(logits, uniforms, params, banned)  # [A], [A]
            completion_ids[active, step] = tokens
            completion_mask[active, step] = 1
            sampling_logprobs[active, step] = logprobs
            steps = step + 1
            finished = torch.isin(tokens, eos) if eos.numel() else torch.zeros_like(tokens, dtype=torch.bool)  # [A]
            ended_by_eos[active[finished]] = True
            if step == max_new - 1:
                break
            if bool(finished.any()):
                keep = (~finished).nonzero().squeeze(1)  # [A']
                if keep.numel() == 0:
                    break
                active, tokens = active[keep], tokens[keep]
                cache.batch_select_indices(keep)
                mask, next_position = mask[keep], next_position[keep]
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)  # [A, P + step + 1]
            if mrope:
                positions = next_position.view(1, -1, 1).expand(3, -1, 1)  # [3, A, 1]: text token, components equal
            else:
                positions = next_position.view(-1, 1)  # [A, 1]
            out = model(
                input_ids=tokens.unsqueeze(1),  # [A, 1]
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1]  # [A, V]
            cache = out.past_key_values
            next_position = next_position + 1
    del cache
    return (completion_ids[:, :steps].contiguous(), completion_mask[:, :steps].contiguous(),
            sampling_logprobs[:, :steps].contiguous(), ended_by_eos)


# ----------------------------------------------------------------------------------------------
# The static decode


PROMPT_BUCKET = 64  # compiled static decode: the cache's prompt columns are a multiple of this (fewer shapes)


@dataclass
class _StaticDecode:
    """Everything a static decode step reads and updates in place. N >= B*G rows (a held workspace may have
    spare rows, finished from the start); C = prompt_columns + T_max - 1 cache columns."""

    cache: Any  # transformers Cache of StaticLayer: keys / values [N, H_kv, C, D]; cumulative_length [] = next column
    key_valid: torch.Tensor  # [N, C] bool: the columns a row attends to (its real prompt tokens, the decoded ones)
    next_position: torch.Tensor  # [N] long: position of the token fed next
    tokens: torch.Tensor  # [N] long: the token fed next (pad once the row has finished)
    finished: torch.Tensor  # [N] bool: the row has sampled an EOS (spare rows: always)
    uniforms: torch.Tensor  # [N] fp32: this step's random numbers
    step: torch.Tensor  # [] long: the completion column the next sample is written to
    completion_ids: torch.Tensor  # [N, T_max] long
    completion_mask: torch.Tensor  # [N, T_max] long
    sampling_logprobs: torch.Tensor  # [N, T_max] fp32
    prompt_columns: int  # P_max: a prompt ends at this column, decode step t writes column P_max + t


# The compiled decode's state, one per model: CUDA graphs replay fixed addresses, so the buffers are
# reused from call to call (and only ever grow).
_WORKSPACES: "weakref.WeakKeyDictionary[nn.Module, _StaticDecode]" = weakref.WeakKeyDictionary()
_COMPILED_STEPS: dict[str, Callable] = {}  # torch.compile of `_static_decode_step`, by compile mode
_COMPILE_FAILED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # compile="auto" models that decode eagerly


def _compile_enabled(params: SamplingParams, device: torch.device, model: nn.Module) -> bool:
    """compile="auto": on CUDA, for a model that is not FSDP2-sharded (its hooks stop fullgraph tracing)."""
    if params.compile == "auto":
        return device.type == "cuda" and not fsdp_units(model)
    return bool(params.compile)


def _fits(state: _StaticDecode, layers, rows: int, prompt_columns: int, max_new: int) -> bool:
    buffers = state.cache.layers
    return (
        len(buffers) == len(layers)
        and state.finished.shape[0] >= rows
        and state.prompt_columns >= prompt_columns
        and state.completion_ids.shape[1] >= max_new
        and all(
            dst.keys.dtype == src.keys.dtype and dst.keys.device == src.keys.device
            and dst.keys.shape[1] == src.keys.shape[1] and dst.keys.shape[3] == src.keys.shape[3]
            and dst.values.shape[1] == src.values.shape[1] and dst.values.shape[3] == src.values.shape[3]
            for src, dst in zip(layers, buffers)
        )
    )


def _allocate_static(layers, rows: int, prompt_columns: int, max_new: int, device: torch.device) -> _StaticDecode:
    """Zeroed buffers for `rows` rows, `prompt_columns` prompt columns and `max_new` new tokens. The cache has no
    column for the last new token, which is sampled but never fed."""
    length = prompt_columns + max_new - 1  # C
    static_layers = []
    for src in layers:
        layer = StaticLayer(max_cache_len=length)
        # Allocates keys / values [rows, H_kv, C, D] in the prefill's dtype and device (the shapes are all it reads).
        layer.lazy_initialization(src.keys[:1].expand(rows, -1, -1, -1), src.values[:1].expand(rows, -1, -1, -1))
        static_layers.append(layer)
    state = _StaticDecode(
        cache=Cache(layers=static_layers),
        key_valid=torch.zeros(rows, length, dtype=torch.bool, device=device),
        next_position=torch.zeros(rows, dtype=torch.long, device=device),
        tokens=torch.zeros(rows, dtype=torch.long, device=device),
        finished=torch.ones(rows, dtype=torch.bool, device=device),
        uniforms=torch.zeros(rows, dtype=torch.float32, device=device),
        step=torch.zeros((), dtype=torch.long, device=device),
        completion_ids=torch.zeros(rows, max_new, dtype=torch.long, device=device),
        completion_mask=torch.zeros(rows, max_new, dtype=torch.long, device=device),
        sampling_logprobs=torch.zeros(rows, max_new, dtype=torch.float32, device=device),
        prompt_columns=prompt_columns,
    )
    # The compiled step sees rows, cache columns and completion width as symbols (one graph for every prompt
    # length and group size) and the buffers as fixed addresses (CUDA graphs read and write them in place;
    # unguarded: a new workspace re-records the graphs instead of recompiling).
    for layer in static_layers:
        for buffer in (layer.keys, layer.values):
            torch._dynamo.maybe_mark_dynamic(buffer, 0)
            torch._dynamo.maybe_mark_dynamic(buffer, 2)
            torch._dynamo.mark_static_address(buffer, guard=False)
        torch._dynamo.mark_static_address(layer.cumulative_length, guard=False)
    for buffer in (state.key_valid, state.completion_ids, state.completion_mask, state.sampling_logprobs):
        torch._dynamo.maybe_mark_dynamic(buffer, 0)
        torch._dynamo.maybe_mark_dynamic(buffer, 1)
    for buffer in (state.next_position, state.tokens, state.finished, state.uniforms):
        torch._dynamo.maybe_mark_dynamic(buffer, 0)
    for name in ("key_valid", "next_position", "tokens", "finished", "uniforms", "step",
                 "completion_ids", "completion_mask", "sampling_logprobs"):
        torch._dynamo.mark_static_address(getattr(state, name), guard=False)
    return state


def _static_state(model: nn.Module, prefill: _Prefill, params: SamplingParams, held: bool) -> _StaticDecode:
    """The static decode's buffers, filled for this call: the prompts' KV copied into their rows (once per
    rollout), the prompts right-aligned at column `prompt_columns`, every row running, step 0."""
    layers = prefill.cache.layers
    group, (prefill_rows, prompt_len) = prefill.repeats, prefill.attention_mask.shape
    rows, max_new, device = prefill_rows * group, params.max_new_tokens, prefill.logits.device
    if not held:
        state = _allocate_static(layers, rows, prompt_len, max_new, device)
    else:
        size = (rows, -(-prompt_len // PROMPT_BUCKET) * PROMPT_BUCKET, max_new)  # rows, prompt columns, new tokens
        state = _WORKSPACES.get(model)
        if state is None or not _fits(state, layers, *size):
            if state is not None and len(state.cache.layers) == len(layers):  # grow: no size smaller than before
                held_size = (state.finished.shape[0], state.prompt_columns, state.completion_ids.shape[1])
                size = tuple(map(max, size, held_size))
            _WORKSPACES.pop(model, None)  # the old buffers go before the new ones are allocated
            state = _WORKSPACES[model] = _allocate_static(layers, *size, device)

    end = state.prompt_columns
    start = end - prompt_len
    for src, dst in zip(layers, state.cache.layers):
        # Row b*G + g gets prompt b's keys and values: [B', H_kv, P, D] broadcast into [B', G, H_kv, P, D].
        dst.keys[:rows, :, start:end].unflatten(0, (prefill_rows, group)).copy_(src.keys.unsqueeze(1))
        dst.values[:rows, :, start:end].unflatten(0, (prefill_rows, group)).copy_(src.values.unsqueeze(1))
        dst.cumulative_length.fill_(end)
    state.key_valid.zero_()
    prompt_valid = state.key_valid[:rows, start:end].unflatten(0, (prefill_rows, group))  # [B', G, P]
    prompt_valid.copy_(prefill.attention_mask.bool().unsqueeze(1))
    state.key_valid[rows:, 0] = True  # spare rows attend to one column, so their softmax has something to normalise
    state.next_position.zero_()
    state.next_position[:rows].unflatten(0, (prefill_rows, group)).copy_(prefill.next_position.unsqueeze(1))
    state.tokens.fill_(params.pad_token_id)
    state.finished.fill_(True)
    state.finished[:rows] = False
    state.uniforms.zero_()
    state.step.zero_()
    state.completion_ids.fill_(params.pad_token_id)
    state.completion_mask.zero_()
    state.sampling_logprobs.zero_()
    return state


def _record_sample(state: _StaticDecode, logits: torch.Tensor, params: SamplingParams, banned, eos) -> None:
    """Sample every row from `logits [N, V]` and write the running rows' tokens at completion column `step`."""
    tokens, logprobs = sample_next_tokens(logits, state.uniforms, params, banned)  # [N], [N]
    running = ~state.finished  # [N]
    # scatter_, not index_copy_: inductor writes a scatter element by element, whereas it turns index_copy_ into
    # a pass over the whole [N, T_max] buffer that recomputes the vocabulary reductions for every element.
    column = state.step.expand(running.shape[0], 1)  # [N, 1]
    state.completion_ids.scatter_(1, column, tokens.masked_fill(state.finished, params.pad_token_id).unsqueeze(1))
    state.completion_mask.scatter_(1, column, running.long().unsqueeze(1))
    state.sampling_logprobs.scatter_(1, column, logprobs.masked_fill(state.finished, 0.0).unsqueeze(1))
    state.finished.logical_or_(torch.isin(tokens, eos))
    state.tokens.copy_(tokens.masked_fill(state.finished, params.pad_token_id))  # finished rows feed pad from here
    state.step.add_(1)


def _static_decode_step(model: nn.Module, state: _StaticDecode, params: SamplingParams, banned, eos, mrope) -> None:
    """One decode step at fixed shapes: feed `state.tokens`, sample the next ones. No host sync and nothing whose
    shape depends on the step: the unit `torch.compile` compiles."""
    column = state.cache.layers[0].cumulative_length  # [] the cache column the fed token is written to
    state.key_valid.index_fill_(1, column.view(1), True)
    if mrope:
        positions = state.next_position.view(1, -1, 1).expand(3, -1, 1)  # [3, N, 1]: text token, components equal
    else:
        positions = state.next_position.view(-1, 1)  # [N, 1]
    out = model(
        input_ids=state.tokens.view(-1, 1),  # [N, 1]
        attention_mask=state.key_valid[:, None, None, :],  # [N, 1, 1, C] True = attend; 4-D: transformers uses it as is
        position_ids=positions,
        past_key_values=state.cache,
        use_cache=True,
    )
    state.next_position.add_(1)
    _record_sample(state, out.logits[:, -1], params, banned, eos)


STATIC_DECODE_ATTENTION = "mixedr1_static_decode"  # the language model's attention during a static decode


def _static_decode_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """One new token per row against the whole static cache: `query [N, H, 1, D]`, `key` / `value
    [N, H_kv, C, D]` (the cache buffers themselves), `attention_mask [N, 1, 1, C]` bool. The H / H_kv query heads
    of a key/value head enter sdpa as that head's H / H_kv queries, so the cache is read in place: transformers'
    sdpa repeats it per query head under torch.compile (`repeat_kv`, a copy of the cache per layer and step)."""
    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    query = query.reshape(rows, kv_heads, heads // kv_heads, dim)  # [N, H_kv, H/H_kv, D]
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(rows, 1, heads, out.shape[-1]), None  # [N, 1, H, D]: position before heads, as modules expect


AttentionInterface.register(STATIC_DECODE_ATTENTION, _static_decode_attention)


@contextlib.contextmanager
def _static_attention(model: nn.Module):
    """The language model attends with `_static_decode_attention` for the decode steps (whatever kernel it uses
    otherwise, flash_attention_2 included: the prefill keeps it); restored afterwards."""
    text_config = model.config.get_text_config(decoder=True)
    kernel = text_config._attn_implementation
    text_config._attn_implementation = STATIC_DECODE_ATTENTION
    try:
        yield
    finally:
        text_config._attn_implementation = kernel


def _decode_static(model, prefill: _Prefill, params: SamplingParams, generator, banned, eos, mrope: bool):
    """Decode with a preallocated cache and a fixed batch of B*G rows (docstring, step 3 static)."""
    if any(type(layer) is not DynamicLayer for layer in prefill.cache.layers):  # sliding-window or other layers
        warnings.warn("rollout: decode='static' supports full-attention language models only; "
                      f"this one has {type(prefill.cache.layers[-1]).__name__} cache layers: decoding with 'dynamic'",
                      stacklevel=3)
        return _decode_dynamic(model, prefill, params, generator, banned, eos, mrope)
    device = prefill.logits.device
    compiled = _compile_enabled(params, device, model) and model not in _COMPILE_FAILED
    state = _static_state(model, prefill, params, held=compiled)
    rows, group = prefill.logits.shape[0] * prefill.repeats, prefill.repeats
    spare = state.finished.shape[0] - rows
    logits = prefill.logits.repeat_interleave(group, dim=0)  # [B*G, V]
    if spare:
        logits = torch.cat([logits, logits.new_zeros(spare, logits.shape[1])])  # [N, V]
    prefill.cache = prefill.logits = None  # the prompts' KV lives on in the static cache only
    step_fn = _static_decode_step
    if compiled:
        mode = "reduce-overhead" if device.type == "cuda" else None  # CUDA graphs on CUDA
        if mode not in _COMPILED_STEPS:
            _COMPILED_STEPS[mode] = torch.compile(_static_decode_step, fullgraph=True, mode=mode)
        step_fn = _COMPILED_STEPS[mode]

    def draw():  # one uniform per row of the rollout, the same stream as the dynamic decode
        state.uniforms[:rows].copy_(torch.rand(rows, generator=generator, device=generator.device))

    with _static_attention(model), torch.profiler.record_function(DECODE_RANGE):
        draw()
        _record_sample(state, logits, params, banned, eos)
        del logits
        for step in range(1, params.max_new_tokens):
            # The only host sync of the loop: once every `sync_every` steps, stop if every row has finished.
            if step % params.sync_every == 0 and bool(state.finished.all()):
                break
            draw()
            try:
                step_fn(model, state, params, banned, eos, mrope)
            except torch._dynamo.exc.TorchDynamoException as e:
                if step_fn is _static_decode_step or params.compile is True:
                    raise
                # compile="auto": a model the compiler cannot take decodes eagerly (before any of the step ran).
                warnings.warn(f"rollout: torch.compile of the decode step failed, decoding eagerly: {e}", stacklevel=2)
                _COMPILE_FAILED.add(model)
                _WORKSPACES.pop(model, None)  # an eager decode allocates per call: nothing held after this one
                step_fn = _static_decode_step
                step_fn(model, state, params, banned, eos, mrope)

    steps = int(state.completion_mask[:rows].sum(dim=1).max())  # the longest completion
    # Copies: a held workspace is overwritten by the next call.
    return (state.completion_ids[:rows, :steps].clone(), state.completion_mask[:rows, :steps].clone(),
            state.sampling_logprobs[:rows, :steps].clone(), state.finished[:rows].clone())


# ----------------------------------------------------------------------------------------------
# Rollouts of many prompts


def rollout_in_chunks(hf, batch: PromptBatch, params: SamplingParams, seed_of_call, prompts_per_call: int) -> Rollout:
    """Sample in calls of `prompts_per_call` prompts (bounds the KV cache), then stitch the rows.

    Each call's generator is seeded from the global index of its first prompt, so the samples do not
    depend on how prompts are spread over ranks (when prompts_per_call divides each rank's share).
    """
    B = batch.input_ids.shape[0]
    parts = []
    for start in range(0, B, prompts_per_call):
        prompts = torch.arange(start, min(B, start + prompts_per_call), device=batch.input_ids.device)
        pixels, layout = pixels_for_prompts(batch, prompts)
        keep = batch.attention_mask[prompts].any(0)  # drop columns that are padding in every prompt of the call
        inputs = {"input_ids": batch.input_ids[prompts][:, keep], "attention_mask": batch.attention_mask[prompts][:, keep],
                  "pixel_values": pixels}
        if batch.tiles_per_image is None:  # Qwen's grid; InternVL's tiles need no extra input
            inputs["image_grid_thw"] = layout
        elif not pixels.numel():  # InternVL: text-only prompts take no pixel_values at all
            del inputs["pixel_values"]
        generator = torch.Generator(device=batch.input_ids.device).manual_seed(seed_of_call(start))
        parts.append(generate_rollout(hf, inputs, params, generator=generator))
    if len(parts) == 1:
        return parts[0]
    return concat_rollouts(parts, params.pad_token_id)


def concat_rollouts(parts: list[Rollout], pad_token_id: int) -> Rollout:
    """One Rollout from consecutive calls: completions right-padded to the longest, prompt indices offset."""
    T = max(p.completion_ids.shape[1] for p in parts)
    pad = lambda t, value: torch.nn.functional.pad(t, (0, T - t.shape[1]), value=value)  # noqa: E731
    prompt_offset, prompt_index = 0, []
    for p in parts:
        prompt_index.append(p.prompt_index + prompt_offset)
        prompt_offset += int(p.prompt_index.max()) + 1
    return Rollout(
        completion_ids=torch.cat([pad(p.completion_ids, pad_token_id) for p in parts]),
        completion_mask=torch.cat([pad(p.completion_mask, 0) for p in parts]),
        sampling_logprobs=torch.cat([pad(p.sampling_logprobs, 0.0) for p in parts]),
        prompt_index=torch.cat(prompt_index),
        finish_reason=[r for p in parts for r in p.finish_reason],
    )


def derive_seed(*parts: int) -> int:
    """A generator seed from a run's seed and positions (step, prompt index...): p0·1000003^(n-1) + ...
    + p(n-1), wrapped into [0, 2^63) so that any 64-bit `train.seed` gives a valid torch seed. Below the
    wrap it is the plain polynomial, so small seeds draw what they always drew."""
    value = 0
    for part in parts:
        value = value * 1_000_003 + int(part)
    return value % (1 << 63)
