"""What one GRPO step logs about its rollout: reward per type and per reward function, format rate,
completion lengths, zero-variance groups. Sums with counts (`"#key"`), so that
`distributed.mean_over_ranks` averages them over every rank's completions."""

from __future__ import annotations

from collections import defaultdict

import torch


def rollout_sums(
    problem_types: list[str],  # [B] problem type of each prompt
    breakdowns: list,  # [B*G] rewards.RewardBreakdown, row b*G + g
    completion_lengths: torch.Tensor,  # [B*G]
    finish_reason: list[str],  # [B*G] "eos" | "length"
    zero_variance: torch.Tensor,  # [B] 1 where the group's rewards are all equal
    group_size: int,
) -> dict[str, float]:
    sums: dict[str, float] = defaultdict(float)
    for i, r in enumerate(breakdowns):
        ptype = problem_types[i // group_size]
        for key, value in (("reward/total", r.total), ("reward/accuracy", r.accuracy), ("reward/format_rate", r.format),
                           (f"reward/type/{ptype}", r.total), (f"accuracy/{ptype}", r.accuracy),
                           (f"reward/fn/{r.reward_name}", r.accuracy)):
            sums[key] += value
            sums["#" + key] += 1
    lengths = completion_lengths.float()
    sums["completion/length_mean"] += float(lengths.sum())
    sums["#completion/length_mean"] += len(lengths)
    sums["completion/clipped_ratio"] += sum(reason == "length" for reason in finish_reason)
    sums["#completion/clipped_ratio"] += len(lengths)
    sums["grpo/zero_variance_frac"] += float(zero_variance.sum())
    sums["#grpo/zero_variance_frac"] += len(zero_variance)
    return sums
