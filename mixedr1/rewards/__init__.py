"""The Mixed-R1 reward (SPEC §3): R = R_acc + λ·R_fmt, with R_acc chosen by the item's problem type.

    problem_type   accuracy reward        range
    yorn, mcq      matching               {0, 1}
    chart          chart (numeric/text)   {0, 1}
    grounding      iou                    [0, 1]
    open_ended     bmas (default) | bipartite (Table 4 ablation)   [-2, 2] (combine=sum) or [-1, 1]

Every accuracy reward is registered in `REWARDS` as a function over a whole group of G responses to
one item, `fn(answers, target, cfg, embedder) -> [G] floats`, where `answers[i]` is the text inside
response i's last `<answer>` tag or None (no tag: accuracy 0, SPEC §3). Group-level functions let
BMAS score the group in one fused computation; the text rewards simply map over the group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from ..config import RewardConfig
from .answer import extract_answer, format_reward
from .chart import chart_reward
from .iou import iou_reward
from .matching import mcq_reward, yorn_reward


@dataclass(frozen=True)
class RewardTarget:
    """What a group of responses is scored against: one item's ground truth."""

    problem_type: str  # yorn | mcq | chart | grounding | open_ended
    answer: Any  # str, or 4 numbers (x1, y1, x2, y2) in ORIGINAL pixels for grounding
    options: Optional[Sequence[str]] = None  # mcq options in order A, B, ...
    orig_hw: Optional[tuple[int, int]] = None  # grounding: (H, W) of the original image
    model_hw: Optional[tuple[int, int]] = None  # grounding: (H, W) of the image the model saw


@dataclass(frozen=True)
class TokenEmbedder:
    """The policy's tokenizer and input embedding table `[V, D]`, for BMAS (SPEC §3)."""

    tokenizer: Any
    embedding_table: Any  # torch.Tensor [V, D]


@dataclass(frozen=True)
class RewardBreakdown:
    accuracy: float  # R_acc
    format: float  # R_fmt ∈ {0, 1}
    total: float  # R_acc + λ·R_fmt
    reward_name: str  # which accuracy reward scored it (a key of REWARDS)


GroupReward = Callable[[list[Optional[str]], RewardTarget, RewardConfig, Optional[TokenEmbedder]], list[float]]


def _per_answer(score: Callable[[str, RewardTarget, RewardConfig], float]) -> GroupReward:
    def group_fn(answers, target, cfg, embedder=None):
        return [0.0 if a is None else score(a, target, cfg) for a in answers]

    return group_fn


def _matching(answer: str, target: RewardTarget, cfg: RewardConfig) -> float:
    if target.problem_type == "mcq":
        return mcq_reward(answer, str(target.answer), list(target.options or []))
    return yorn_reward(answer, str(target.answer))


def _chart(answer: str, target: RewardTarget, cfg: RewardConfig) -> float:
    return chart_reward(answer, str(target.answer), cfg.chart_tolerance, cfg.chart_tolerance_mode)


def _iou(answer: str, target: RewardTarget, cfg: RewardConfig) -> float:
    return iou_reward(answer, target.answer, target.orig_hw, target.model_hw)


def _embedding_similarity(method: str) -> GroupReward:
    def group_fn(answers, target, cfg, embedder=None):
        if embedder is None:
            raise ValueError(f"the {method} reward needs the policy's tokenizer and embedding table (embedder=None)")
        from .bmas import bmas_reward  # torch is imported only when an open-ended reward is used

        scored = [i for i, a in enumerate(answers) if a is not None]
        rewards = [0.0] * len(answers)
        if scored:
            values = bmas_reward(
                [answers[i] for i in scored], str(target.answer), embedder.tokenizer,
                embedder.embedding_table, combine=cfg.bmas_combine, method=method,
            )
            for i, v in zip(scored, values):
                rewards[i] = float(v)
        return rewards

    return group_fn


REWARDS: dict[str, GroupReward] = {
    "matching": _per_answer(_matching),
    "chart": _per_answer(_chart),
    "iou": _per_answer(_iou),
    "bmas": _embedding_similarity("bmas"),
    "bipartite": _embedding_similarity("bipartite"),
}

_REWARD_FOR_TYPE = {"yorn": "matching", "mcq": "matching", "chart": "chart", "grounding": "iou"}


def reward_name_for(problem_type: str, cfg: RewardConfig) -> str:
    """The key of REWARDS that scores `problem_type` under this config."""
    if problem_type == "open_ended":
        return cfg.open_ended
    if problem_type not in _REWARD_FOR_TYPE:
        raise ValueError(f"unknown problem_type {problem_type!r}; expected one of {[*_REWARD_FOR_TYPE, 'open_ended']}")
    return _REWARD_FOR_TYPE[problem_type]


def score_group(
    responses: Sequence[str],
    target: RewardTarget,
    cfg: RewardConfig,
    embedder: Optional[TokenEmbedder] = None,
) -> list[RewardBreakdown]:
    """Score G responses to one item: `[G]` breakdowns with R = R_acc + λ·R_fmt (SPEC §3)."""
    name = reward_name_for(target.problem_type, cfg)
    if name not in REWARDS:
        raise ValueError(f"reward.open_ended={name!r} is not registered here; known: {sorted(REWARDS)}")
    answers = [extract_answer(r) for r in responses]
    accuracies = REWARDS[name](answers, target, cfg, embedder)
    formats = [format_reward(r) for r in responses]
    return [
        RewardBreakdown(accuracy=a, format=f, total=a + cfg.format_weight * f, reward_name=name)
        for a, f in zip(accuracies, formats)
    ]


__all__ = [
    "REWARDS", "RewardBreakdown", "RewardTarget", "TokenEmbedder", "extract_answer", "format_reward",
    "reward_name_for", "score_group",
]
