"""What the trainer, the data engine and eval pass to the rewards besides the response text.

`score_groups` scores a batch's groups (one group of G responses per prompt); `reward_target` turns a batch's record into the ground truth a group is scored against (grounding
boxes need the original and the resized image size); `make_reward_context` loads an external judge
once when the config asks for one; `with_embedding_table` attaches the policy's CURRENT input
embedding table for BMAS (docs/method.md §3: the policy's own embeddings), read while the model is gathered.
"""

from __future__ import annotations

import dataclasses

from ..config import JUDGE_NAMES, Config, RewardConfig
from . import RewardBreakdown, RewardContext, RewardTarget, score_group


def reward_target(batch, b: int) -> RewardTarget:
    """The ground truth of prompt `b` of a `mixedr1.data.batch.PromptBatch`."""
    record = batch.records[b]
    return RewardTarget(
        problem_type=record.problem_type, answer=record.answer, options=record.options,
        orig_hw=tuple(batch.image_sizes[b][0]) if batch.image_sizes[b] else None,
        model_hw=tuple(batch.model_image_sizes[b][0]) if batch.model_image_sizes[b] else None,
    )


def make_reward_context(cfg: Config, processor, device) -> RewardContext:
    """The tokenizer, and the external judge of `reward.open_ended` when it is one (loaded once)."""
    judge = None
    if cfg.reward.open_ended in JUDGE_NAMES:
        from .judges import make_judge

        judge = make_judge(cfg.reward, device)
    return RewardContext(tokenizer=processor.tokenizer, judge=judge)


def with_embedding_table(ctx: RewardContext, hf_model) -> RewardContext:
    """BMAS uses the policy's current input embedding table `[V, D]`; call while it is gathered."""
    return dataclasses.replace(ctx, embedding_table=hf_model.get_input_embeddings().weight.detach())


def score_groups(batch, texts: list[str], group_size: int, reward_cfg: RewardConfig,
                 ctx: RewardContext) -> list[list[RewardBreakdown]]:
    """`[B][G]` breakdowns (R = R_acc + λ·R_fmt) of `texts [B*G]`, row b*G + g answering prompt b of `batch`."""
    G = group_size
    return [score_group(texts[b * G : (b + 1) * G], reward_target(batch, b), reward_cfg, ctx)
            for b in range(len(batch.records))]
