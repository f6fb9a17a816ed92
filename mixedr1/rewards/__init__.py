"""The Mixed-R1 reward (docs/method.md §3): R = R_acc + λ·R_fmt, with R_acc chosen by the item's problem type.

    problem_type   accuracy reward        range
    yorn, mcq      matching               {0, 1}
    chart          chart (numeric/text)   {0, 1}
    grounding      iou                    [0, 1]
    open_ended     bmas (default) | bipartite (Table 4 ablation)   [-2, 2] (combine=sum) or [-1, 1]
                   modernbert | sbert (Table 4, judges.py)        [-1, 1]
                   llm_judge (Table 4, judges.py)                  [0, 1]

Every accuracy reward is registered in `REWARDS` as a function over a whole group of G responses to
one item, `fn(answers, target, cfg, embedder) -> [G] floats`, where `answers[i]` is the text inside
response i's last `<answer>` tag or None (no tag: accuracy 0, docs/method.md §3). Group-level functions let
BMAS score the group in one fused computation; the text rewards simply map over the group.

The fourth argument is a `RewardContext` the trainer builds once: the policy's tokenizer and input
embedding table for bmas / bipartite, or `judge=judges.make_judge(cfg.reward, device)` for the
external-model rewards (whose `judge.cost.take()` is the judge's time, logged as time/reward_judge).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from ..config import RewardConfig
from .answer import extract_answer, format_reward, valid_text
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
class RewardContext:
    """What the open-ended rewards read besides text, built once by the trainer (docs/method.md §3, Table 4).

    bmas / bipartite: the policy's tokenizer and input embedding table `[V, D]`.
    modernbert / sbert / llm_judge: `judge`, from `judges.make_judge(cfg.reward, device)`.
    """

    tokenizer: Any = None
    embedding_table: Any = None  # torch.Tensor [V, D]
    judge: Any = None  # judges.EncoderJudge | judges.LLMJudge


TokenEmbedder = RewardContext  # its earlier name; TokenEmbedder(tokenizer, table) still works


@dataclass(frozen=True)
class RewardBreakdown:
    accuracy: float  # R_acc
    format: float  # R_fmt ∈ {0, 1}
    total: float  # R_acc + λ·R_fmt
    reward_name: str  # which accuracy reward scored it (a key of REWARDS)


GroupReward = Callable[[list[Optional[str]], RewardTarget, RewardConfig, Optional[RewardContext]], list[float]]


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
        if embedder is None or embedder.embedding_table is None:
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


# Characters kept per judge token before tokenising: natural text averages about 4 characters per
# token, so the judge sees the same first judge_max_tokens tokens unless a text is pathological.
_JUDGE_CHARS_PER_TOKEN = 64


def _judged(name: str) -> GroupReward:
    """An external-model reward (Table 4): the context's judge scores the whole group (judges.py)."""

    def group_fn(answers, target, cfg, embedder=None):
        judge = getattr(embedder, "judge", None)
        if judge is None or judge.name != name:
            raise ValueError(
                f"the {name} reward needs its judge model: pass RewardContext(judge=make_judge(cfg.reward, device)) "
                f"from mixedr1.rewards.judges (got {'no judge' if judge is None else repr(judge.name)})"
            )
        # Judges truncate to judge_max_tokens tokens; a runaway text is cut to a character prefix
        # first, so that its cost stays bounded (and lone surrogates, which tokenizers reject, become '?').
        keep = _JUDGE_CHARS_PER_TOKEN * cfg.judge_max_tokens
        answers = [None if a is None else valid_text(a[:keep]) for a in answers]
        return judge.score(answers, valid_text(str(target.answer)[:keep]))

    return group_fn


REWARDS: dict[str, GroupReward] = {
    "matching": _per_answer(_matching),
    "chart": _per_answer(_chart),
    "iou": _per_answer(_iou),
    "bmas": _embedding_similarity("bmas"),
    "bipartite": _embedding_similarity("bipartite"),
    "modernbert": _judged("modernbert"),
    "sbert": _judged("sbert"),
    "llm_judge": _judged("llm_judge"),
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
    embedder: Optional[RewardContext] = None,
) -> list[RewardBreakdown]:
    """Score G responses to one item: `[G]` breakdowns with R = R_acc + λ·R_fmt (docs/method.md §3).

    `embedder` is the RewardContext of the open-ended rewards (unused by the others).
    """
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
    "REWARDS", "RewardBreakdown", "RewardContext", "RewardTarget", "TokenEmbedder", "extract_answer", "format_reward",
    "reward_name_for", "score_group",
]
