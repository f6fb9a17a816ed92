"""Greedy evaluation on held-out training-format records (`data.eval_file`) during training.

`HeldoutEval` runs it before the first GRPO step, every `log.eval_every` GRPO steps and after the
last step, logs each result as metrics at its step (`heldout/accuracy/<type>`, `heldout/reward/<type>`,
`heldout/format`: metrics.jsonl and TensorBoard) and prints the before/after table with the
majority-class rate of each type that has one (the accuracy of always giving the most common answer).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict

import torch

from mixedr1 import distributed
from mixedr1.config import PROBLEM_TYPES, Config
from mixedr1.data.batch import collate
from mixedr1.data.dataset import Record
from mixedr1.rewards.context import score_groups, with_embedding_table
from mixedr1.rollout import decode_completions, eos_token_ids, generate_rollout, sampling_params_from_config

# The types whose answer is one of a few classes: their majority-class rate is a baseline.
CLASS_TYPES = ("yorn", "mcq", "chart")


def evaluate(policy, processor, records: list[Record], cfg: Config, reward_ctx, dist) -> dict:
    """Mean reward and accuracy per problem type on held-out records, greedy, one sample each."""
    hf, tokenizer = policy.hf, processor.tokenizer
    params = dataclasses.replace(
        sampling_params_from_config(cfg.rollout, eos_token_ids=eos_token_ids(hf, tokenizer),
                                    pad_token_id=tokenizer.pad_token_id, greedy=True), group_size=1)
    mine = records[dist.rank :: dist.world_size]
    sums: dict = defaultdict(float)
    with torch.no_grad(), distributed.bf16_autocast(cfg.model.dtype, dist.device), \
            distributed.gathered_for_generation(policy, cfg.distributed.reshard_after_forward):
        ctx = with_embedding_table(reward_ctx, hf)
        for start in range(0, len(mine), cfg.rollout.prompts_per_batch):
            batch = collate(mine[start : start + cfg.rollout.prompts_per_batch], processor).to(dist.device)
            texts = decode_completions(generate_rollout(hf, batch.model_inputs(), params), tokenizer)
            for record, (r,) in zip(batch.records, score_groups(batch, texts, 1, cfg.reward, ctx)):
                ptype = record.problem_type
                for key, value in ((f"reward/{ptype}", r.total), (f"accuracy/{ptype}", r.accuracy),
                                   ("reward/all", r.total), ("accuracy/all", r.accuracy), ("format/all", r.format)):
                    sums[key] += value
                    sums["#" + key] += 1
    return distributed.mean_over_ranks(sums)


def majority_rates(records: list[Record]) -> dict[str, float]:
    """Per type of CLASS_TYPES: the share of its most common ground truth (case-insensitive)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        if r.problem_type in CLASS_TYPES:
            counts[r.problem_type][str(r.answer).strip().lower()] += 1
    return {ptype: max(c.values()) / sum(c.values()) for ptype, c in counts.items()}


def heldout_metrics(result: dict) -> dict[str, float]:
    """`evaluate`'s result under the logged tags: heldout/accuracy/<type>, heldout/reward/<type>, heldout/format."""
    out = {f"heldout/{k}": v for k, v in result.items() if k.split("/")[1] in PROBLEM_TYPES}
    out["heldout/format"] = result["format/all"]
    return out


def format_eval(result: dict) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in result.items())


def class_mean(result: dict, types: list[str]) -> float:
    """Mean accuracy over `types` (the CLASS_TYPES present), the quick start's headline number."""
    return sum(result[f"accuracy/{t}"] for t in types) / len(types)


def eval_table(before: dict, after: dict, majority: dict[str, float], steps: tuple[int, int], items: Counter) -> str:
    """The before/after table: per type its items, majority-class rate, accuracy and reward; the mean
    accuracy over the class types; the format rate. Grounding accuracy is the mean IoU, open-ended
    the BMAS score in [-2, 2] (no majority class: '-')."""
    types = [t for t in PROBLEM_TYPES if f"reward/{t}" in before]
    lines = ["", f"held-out, greedy (step {steps[0]} -> {steps[1]})   items  majority   "
                 f"accuracy before -> after   reward before -> after", "-" * 96]
    for t in types:
        rate = f"{majority[t]:8.3f}" if t in majority else f"{'-':>8}"
        name = {"grounding": "grounding (IoU)", "open_ended": "open_ended (BMAS)"}.get(t, t)
        lines.append(f"{name:<35}{items[t]:>6}  {rate}      {before[f'accuracy/{t}']:7.3f} -> {after[f'accuracy/{t}']:6.3f}"
                     f"       {before[f'reward/{t}']:7.3f} -> {after[f'reward/{t}']:6.3f}")
    classes = [t for t in CLASS_TYPES if t in types and t in majority]
    if classes:
        mean_majority = sum(majority[t] for t in classes) / len(classes)
        lines.append(f"{'mean of ' + ', '.join(classes):<35}{'':>6}  {mean_majority:8.3f}      "
                     f"{class_mean(before, classes):7.3f} -> {class_mean(after, classes):6.3f}")
    lines.append(f"{'format rate':<35}{'':>6}  {'-':>8}      {before['format/all']:7.3f} -> {after['format/all']:6.3f}")
    return "\n".join(lines)


class HeldoutEval:
    """When to evaluate the held-out records and what to keep: loop iteration `step` (`step` steps
    done) evaluates when it is the first GRPO step or `log.eval_every` GRPO steps after it; the end
    of training always evaluates. Each result is logged as metrics at its step (steps numbered as in
    metrics.jsonl: the policy after `step` steps)."""

    def __init__(self, records: list[Record], cfg: Config, first_rl_step: int):
        self.records, self.cfg, self.first_rl_step = records, cfg, first_rl_step
        self.majority = majority_rates(records)
        self.results: dict[int, dict] = {}  # steps done -> evaluate's result

    def due(self, step: int) -> bool:
        every, since = self.cfg.log.eval_every, step - self.first_rl_step
        return bool(self.records) and since >= 0 and (since == 0 or (every > 0 and since % every == 0))

    def __call__(self, run, step: int) -> None:
        if not self.records or step in self.results:
            return
        result = evaluate(run.policy, run.processor, self.records, self.cfg, run.reward_ctx, run.dist)
        self.results[step] = result
        run.log.metrics(step, heldout_metrics(result))
        run.log.info(f"held-out at step {step}: " + format_eval(result))

    def summary(self) -> dict:
        """{"before": first result, "after": last result, "majority": rates}; before/after only if evaluated."""
        if not self.results:
            return {}
        steps = sorted(self.results)
        return {"before": self.results[steps[0]], "after": self.results[steps[-1]], "majority": self.majority,
                "steps": (steps[0], steps[-1])}

    def table(self) -> str:
        """The before/after table; empty when there is no "before" (a run resumed past the first GRPO step)."""
        if self.first_rl_step not in self.results or len(self.results) < 2:
            return ""
        summary = self.summary()
        return eval_table(summary["before"], summary["after"], self.majority, summary["steps"],
                          Counter(r.problem_type for r in self.records))
