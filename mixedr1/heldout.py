"""Greedy evaluation on held-out training-format records (`data.eval_file`): the demo's before/after."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import torch

from mixedr1 import distributed
from mixedr1.config import Config
from mixedr1.data.batch import collate
from mixedr1.data.dataset import Record
from mixedr1.rewards.context import score_groups, with_embedding_table
from mixedr1.rollout import decode_completions, eos_token_ids, generate_rollout, sampling_params_from_config


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


def format_eval(result: dict) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in result.items())


def eval_table(before: dict, after: dict) -> str:
    types = sorted({k.split("/")[1] for k in before if k.startswith("reward/")})
    lines = ["", "held-out, greedy     reward before -> after    accuracy before -> after",
             "-" * 70]
    for t in types:
        lines.append(f"{t:<18}  {before[f'reward/{t}']:7.3f} -> {after[f'reward/{t}']:7.3f}      "
                     f"{before[f'accuracy/{t}']:7.3f} -> {after[f'accuracy/{t}']:7.3f}")
    return "\n".join(lines)
