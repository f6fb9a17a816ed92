"""GRPO as two pure functions: group-relative advantages and the clipped policy loss (docs/method.md §4).

`group_advantages` turns the `[B*G]` rewards of B groups of G completions into advantages;
`grpo_policy_loss` is the per-token DeepSeekMath objective, negated (we minimise), with the k3 KL
to a frozen reference policy.

Design point: exactness under gradient accumulation and data parallelism. The loss of one
micro-batch is returned as its CONTRIBUTION to the optimizer step's loss: a sum over its own
sequences / tokens divided by normalisers of the WHOLE step (`num_sequences`, `num_tokens`, from
`loss_normalizers`). Contributions summed over micro-batches and ranks equal the whole-batch loss,
and so do their gradients, whatever the split and whatever `loss_agg`. Averaging per micro-batch
means instead would weight a token by the size of the micro-batch it happened to land in.

Departures from / readings of the paper, all docs/method.md §4 Decisions or options:
- std is the unbiased one by default (`std="population"` as an option); `scale="none"` is Dr.GRPO.
- `loss_agg` offers the paper's sequence-mean of token-means (default), a global token mean, and
  Dr.GRPO's per-sequence token sum over a constant `max_completion_length`.
- clip range `[1 - eps_low, 1 + eps_high]` (the paper's symmetric ε = 0.2 is the default; unequal
  values give DAPO's clip-higher).
- a completion with zero tokens (fully masked row) contributes nothing and is not counted as a
  sequence in `num_sequences`, in every `loss_agg`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

LOSS_AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")


def group_advantages(
    rewards: torch.Tensor,  # [B*G] rows of one group contiguous
    group_size: int,
    *,
    eps: float = 1e-4,
    scale: Literal["group", "none"] = "group",
    std: Literal["unbiased", "population"] = "unbiased",
) -> tuple[torch.Tensor, torch.Tensor]:  # advantages [B*G], zero_variance [B] bool
    """Group-relative advantage `Â_i = (R_i − mean_G(R)) / (std_G(R) + eps)` (docs/method.md §4).

    `scale="none"` drops the division (Dr.GRPO: `Â_i = R_i − mean_G(R)`). `std="unbiased"` divides
    the squared deviations by G − 1 (TRL, verl), `"population"` by G. A group whose rewards are all
    equal gets advantage exactly 0.0, and is flagged in the returned `zero_variance [B]` mask (it
    carries no learning signal; docs/method.md §5 filters such items out of the data).

    The worked example of docs/method.md §4: rewards [0,0,1,0,1,0,0,1] (one group of 8) give the third response
    (1 − 0.375) / (0.518 + 1e-4) ≈ 1.207 unbiased, (1 − 0.375) / (0.484 + 1e-4) ≈ 1.29 population.
    Returns fp32 advantages (fp64 if the rewards are fp64).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be a flat [B*G] tensor, got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards has {rewards.numel()} entries, not a multiple of group_size={group_size}: "
            "expected B*G rewards with the G completions of each prompt contiguous"
        )
    if scale not in ("group", "none"):
        raise ValueError(f"scale must be 'group' or 'none', got {scale!r}")
    if std not in ("unbiased", "population"):
        raise ValueError(f"std must be 'unbiased' or 'population', got {std!r}")

    dtype = torch.promote_types(rewards.dtype, torch.float32)
    grouped = rewards.detach().to(dtype).view(-1, group_size)  # [B, G]
    # Exact equality, not a variance threshold: the mean of equal floats need not equal them.
    zero_variance = (grouped == grouped[:, :1]).all(dim=1)  # [B]
    advantages = grouped - grouped.mean(dim=1, keepdim=True)  # [B, G]
    if scale == "group" and group_size > 1:  # a group of 1 is zero-variance anyway
        spread = grouped.std(dim=1, correction=1 if std == "unbiased" else 0, keepdim=True)  # [B, 1]
        advantages = advantages / (spread + eps)
    advantages = advantages.masked_fill(zero_variance[:, None], 0.0)  # [B, G]
    return advantages.reshape(-1), zero_variance  # [B*G], [B]


class LossNormalizers(NamedTuple):
    """Global denominators of one optimizer step's loss; both are counts, so they add over ranks."""

    num_sequences: int  # completions with at least one completion token
    num_tokens: int  # completion tokens (completion_mask entries that are set)


def loss_normalizers(completion_mask: torch.Tensor) -> LossNormalizers:  # completion_mask [N, T]
    """Count the sequences (with ≥ 1 token) and tokens of a batch, for `grpo_policy_loss`.

    Call it on the completion mask of the whole optimizer step on this rank (all its micro-batches;
    the rows may be padded to different T per micro-batch: call it per micro-batch and add). Under
    data parallelism, all-reduce the two counts with SUM across ranks. Synchronises with the device
    once (it returns Python ints).
    """
    mask = _as_bool_mask(completion_mask)  # [N, T]
    tokens_per_sequence = mask.sum(dim=1)  # [N]
    return LossNormalizers(int((tokens_per_sequence > 0).sum()), int(tokens_per_sequence.sum()))


def grpo_policy_loss(
    logprobs: torch.Tensor,  # [N, T] log π_θ of the completion tokens, with grad; N = micro-batch rows of B*G
    old_logprobs: torch.Tensor | None,  # [N, T] log π_old (sampling policy); None = π_θ detached (μ = 1)
    ref_logprobs: torch.Tensor | None,  # [N, T] log π_ref; None = no KL term
    advantages: torch.Tensor,  # [N] one advantage per completion
    completion_mask: torch.Tensor,  # [N, T] bool or 0/1: real completion tokens
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.04,
    loss_agg: Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"] = "seq_mean_token_mean",
    num_sequences: int | float | torch.Tensor | None = None,
    num_tokens: int | float | torch.Tensor | None = None,
    max_completion_length: int | None = None,
    entropy: torch.Tensor | None = None,  # [N, T] optional, for the stats only
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # loss [] (scalar), stats of detached scalars
    """Negated GRPO objective of docs/method.md §4 (DeepSeekMath form), as this micro-batch's contribution.

    Per token (docs/method.md §4): `ρ = exp(log π_θ − log π_old)`,
    `ℓ_{i,t} = −min(ρ Â_i, clip(ρ, 1 − eps_low, 1 + eps_high) Â_i) + β KL_{i,t}`, with the k3
    estimator `KL = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1` (≥ 0). The KL term is
    left out entirely when `ref_logprobs` is None or `beta == 0`.

    Aggregation (`loss_agg`), with S = `num_sequences`, K = `num_tokens`, L = `max_completion_length`:
    - `"seq_mean_token_mean"` (paper): `Σ_i (Σ_t ℓ_{i,t} / |o_i|) / S`
    - `"token_mean"`: `Σ_{i,t} ℓ_{i,t} / K`
    - `"seq_mean_token_sum_norm"` (Dr.GRPO): `Σ_i (Σ_t ℓ_{i,t} / L) / S`; L is required.

    How the trainer uses it (micro-batches and ranks). Compute `LossNormalizers` once per optimizer
    step from the completion masks of the whole step (`loss_normalizers`, counts summed over ranks
    with an all-reduce SUM) and pass the SAME `num_sequences` / `num_tokens` to every micro-batch.
    Each call returns the micro-batch's contribution; call `.backward()` on each and the
    accumulated gradient is that of the whole step's loss, with no further division by the number
    of micro-batches. Across ranks the gradients must be SUMMED: DDP and FSDP average them over the
    world size, so backpropagate `loss * world_size` (or set FSDP's gradient divide factor to 1).
    With the normalisers omitted, the micro-batch's own counts are used: right for a single batch.

    A fully masked row contributes 0 (no NaN, whatever its log-probs hold) and is not counted in S.

    Stats (detached scalars, cheap): `clip_frac_low` (tokens with ρ < 1 − eps_low and Â < 0: the
    lower clip is the active branch), `clip_frac_high` (ρ > 1 + eps_high and Â > 0), `ratio` (mean ρ),
    `kl` (mean k3 KL; only when `ref_logprobs` is given) and `entropy` (only when given). Each is a
    token mean CONTRIBUTION, `Σ over this micro-batch's tokens / num_tokens`, so summing a stat over
    micro-batches (and all-reducing it with SUM over ranks) gives the step's token mean.
    """
    mask = _as_bool_mask(completion_mask)  # [N, T]
    _check_shapes(logprobs, old_logprobs, ref_logprobs, advantages, mask, entropy)
    if loss_agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"loss_agg must be one of {LOSS_AGGREGATIONS}, got {loss_agg!r}")
    if loss_agg == "seq_mean_token_sum_norm" and (max_completion_length is None or max_completion_length <= 0):
        raise ValueError("loss_agg='seq_mean_token_sum_norm' (Dr.GRPO) needs max_completion_length > 0, the constant divisor")
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"eps_low and eps_high must be >= 0, got {eps_low}, {eps_high}")

    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    # Padding positions may hold anything (even -inf): zero them BEFORE exp so neither the loss nor
    # its gradient can become NaN; their per-token loss is then dropped by the mask below.
    logp = logprobs.to(dtype).masked_fill(~mask, 0.0)  # [N, T]
    if old_logprobs is None:
        old_logp = logp.detach()  # [N, T] ρ = 1 with gradient ρ·Â: the single-update (μ = 1) case
    else:
        old_logp = old_logprobs.detach().to(dtype).masked_fill(~mask, 0.0)  # [N, T]
    adv = advantages.detach().to(dtype)[:, None]  # [N, 1]

    ratio = torch.exp(logp - old_logp)  # [N, T] ρ
    clipped_ratio = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)  # [N, T]
    per_token_loss = -torch.minimum(ratio * adv, clipped_ratio * adv)  # [N, T]
    kl = None
    if ref_logprobs is not None:
        ref_minus_logp = ref_logprobs.detach().to(dtype).masked_fill(~mask, 0.0) - logp  # [N, T]
        kl = torch.exp(ref_minus_logp) - ref_minus_logp - 1.0  # [N, T] k3 estimator
        if beta != 0:
            per_token_loss = per_token_loss + beta * kl
    per_token_loss = torch.where(mask, per_token_loss, torch.zeros((), dtype=dtype, device=logp.device))  # [N, T]

    tokens_per_sequence = mask.sum(dim=1)  # [N]
    if num_sequences is None:
        num_sequences = tokens_per_sequence.gt(0).sum()
    if num_tokens is None:
        num_tokens = tokens_per_sequence.sum()
    # max(., 1): a step with no tokens at all has a zero numerator; avoid 0/0.
    sequences_norm = _as_normalizer(num_sequences, dtype, logp.device)
    tokens_norm = _as_normalizer(num_tokens, dtype, logp.device)

    sequence_sums = per_token_loss.sum(dim=1)  # [N]
    if loss_agg == "seq_mean_token_mean":
        loss = (sequence_sums / tokens_per_sequence.clamp(min=1).to(dtype)).sum() / sequences_norm
    elif loss_agg == "token_mean":
        loss = sequence_sums.sum() / tokens_norm
    else:  # seq_mean_token_sum_norm
        loss = sequence_sums.sum() / (float(max_completion_length) * sequences_norm)

    with torch.no_grad():
        zero = torch.zeros((), dtype=dtype, device=logp.device)
        stats = {
            "clip_frac_low": ((ratio < 1.0 - eps_low) & (adv < 0) & mask).sum() / tokens_norm,
            "clip_frac_high": ((ratio > 1.0 + eps_high) & (adv > 0) & mask).sum() / tokens_norm,
            "ratio": torch.where(mask, ratio, zero).sum() / tokens_norm,
        }
        if kl is not None:
            stats["kl"] = torch.where(mask, kl, zero).sum() / tokens_norm
        if entropy is not None:
            stats["entropy"] = torch.where(mask, entropy.to(dtype), zero).sum() / tokens_norm
    return loss, stats


def _as_bool_mask(completion_mask: torch.Tensor) -> torch.Tensor:  # [N, T] -> [N, T] bool
    if completion_mask.dim() != 2:
        raise ValueError(f"completion_mask must be [N, T], got shape {tuple(completion_mask.shape)}")
    return completion_mask if completion_mask.dtype == torch.bool else completion_mask != 0


def _as_normalizer(value: int | float | torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(value, dtype=dtype, device=device).detach().clamp(min=1.0)


def _check_shapes(
    logprobs: torch.Tensor,  # [N, T]
    old_logprobs: torch.Tensor | None,  # [N, T]
    ref_logprobs: torch.Tensor | None,  # [N, T]
    advantages: torch.Tensor,  # [N]
    mask: torch.Tensor,  # [N, T]
    entropy: torch.Tensor | None,  # [N, T]
) -> None:
    expected = tuple(mask.shape)
    for name, tensor in (("logprobs", logprobs), ("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs), ("entropy", entropy)):
        if tensor is not None and tuple(tensor.shape) != expected:
            raise ValueError(f"{name} must be [N, T] = {expected} like completion_mask, got {tuple(tensor.shape)}")
    if tuple(advantages.shape) != expected[:1]:
        raise ValueError(f"advantages must be [N] = ({expected[0]},), one per completion, got {tuple(advantages.shape)}")
