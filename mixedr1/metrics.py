"""What one GRPO step logs about its rollout and its update, and the sample completions it writes.

Names follow TRL's GRPOTrainer where the quantity is the same, so its users read them at once:
`reward_std` (within-group std of the total reward, unbiased as TRL's, averaged over groups),
`frac_reward_zero_std`, `rewards/<function>/mean`, `completions/{mean,min,max}_length`,
`completions/clipped_ratio`, `kl`, `entropy`, `clip_ratio/{low,high,region}_mean`. `loss/` holds
losses only. Every tag is listed in the README's metrics table.

`rollout_sums` returns sums with counts (`"#key"`) so that `distributed.mean_over_ranks` averages
them over every rank's completions; `rollout_metrics` does that and adds the extremes.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from mixedr1 import distributed

# grpo.grpo_policy_loss's statistics -> their tags (token-mean contributions: they add over
# micro-batches and ranks). clip_ratio/region_mean = low + high (the two events are disjoint).
LOSS_STAT_TAGS = {"kl": "kl", "entropy": "entropy", "clip_frac_low": "clip_ratio/low_mean",
                  "clip_frac_high": "clip_ratio/high_mean", "ratio": "grpo/ratio_mean"}


def add_loss_stats(stats: dict, loss_stats: dict) -> None:
    """Add one micro-batch's loss statistics to the step's `stats` under their tags."""
    for key, value in loss_stats.items():
        stats[LOSS_STAT_TAGS[key]] += float(value)
    if "clip_frac_low" in loss_stats:
        stats["clip_ratio/region_mean"] += float(loss_stats["clip_frac_low"]) + float(loss_stats["clip_frac_high"])


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
        for key, value in (("reward/total", r.total), ("reward/accuracy", r.accuracy), ("rewards/format/mean", r.format),
                           (f"reward/type/{ptype}", r.total), (f"accuracy/{ptype}", r.accuracy),
                           (f"rewards/{r.reward_name}/mean", r.accuracy)):
            sums[key] += value
            sums["#" + key] += 1
    totals = torch.tensor([r.total for r in breakdowns], dtype=torch.float64).view(-1, group_size)  # [B, G]
    sums["reward_std"] += float(totals.std(dim=1, correction=1).sum()) if group_size > 1 else 0.0
    sums["#reward_std"] += totals.shape[0]
    lengths = completion_lengths.float()
    sums["completions/mean_length"] += float(lengths.sum())
    sums["#completions/mean_length"] += len(lengths)
    sums["completions/clipped_ratio"] += sum(reason == "length" for reason in finish_reason)
    sums["#completions/clipped_ratio"] += len(lengths)
    sums["frac_reward_zero_std"] += float(zero_variance.sum())
    sums["#frac_reward_zero_std"] += len(zero_variance)
    return sums


def rollout_metrics(problem_types: list[str], breakdowns: list, completion_lengths: torch.Tensor,
                    finish_reason: list[str], zero_variance: torch.Tensor, group_size: int) -> dict[str, float]:
    """`rollout_sums` averaged over ranks, with the shortest and longest completion of the step."""
    metrics = distributed.mean_over_ranks(rollout_sums(problem_types, breakdowns, completion_lengths, finish_reason,
                                                       zero_variance, group_size))
    extremes = distributed.all_gather_objects((int(completion_lengths.min()), int(completion_lengths.max())))
    metrics["completions/min_length"] = float(min(lo for lo, _ in extremes))
    metrics["completions/max_length"] = float(max(hi for _, hi in extremes))
    return metrics


def sample_rows(records: list, texts: list[str], breakdowns: list, advantages: list[float], group_size: int) -> list[dict]:
    """One `samples.jsonl` row per prompt: its question and ground truth (as in the data file; boxes
    in original pixels) and each of its G completions with its reward breakdown and advantage."""
    rows = []
    for b, record in enumerate(records):
        completions = []
        for i in range(b * group_size, (b + 1) * group_size):
            r = breakdowns[i]
            completions.append({"completion": texts[i], "reward": r.total, "accuracy": r.accuracy, "format": r.format,
                                "advantage": advantages[i]})
        rows.append({"id": record.id, "problem_type": record.problem_type, "question": record.question,
                     **({"options": list(record.options)} if record.options else {}),
                     "answer": list(record.answer) if isinstance(record.answer, tuple) else record.answer,
                     "completions": completions})
    return rows
