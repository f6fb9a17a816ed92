"""Benchmark evaluation (EVAL.md): loaders, prompts, rule-based scorers, and one registry.

`BENCHMARKS[name]` says how to load a benchmark, score one item, aggregate the records, which
metric is its headline number, the column it fills in the paper's Table 1, and how many new tokens
the direct prompt may generate. Adding a benchmark is one loader in `benchmarks.py`, one scorer in
`scoring.py`, one direct prompt in `prompts.py` and one entry here.

Generation caps (`max_new_tokens`): with the direct prompt, what lmms-eval's task sets (v0.3, the
version of the paper's time): 16 for MMMU and AI2D, 128 for MMStar (no task setting: lmms-eval's
Qwen2.5-VL default), 256 for MMMU-Pro, 1,024 for MathVista, MathVision and MMBench, 16,384 for
MathVerse; the benchmarks lmms-eval lacks get 128 (MM-IQ, M3CoT: a letter) or 1,024 (MM-Math: a
boxed solution). With the thinking prompt, `THINKING_MAX_NEW_TOKENS` everywhere, the training cap
of the paper's configs (`rollout.max_new_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mixedr1.evaluation import benchmarks, scoring
from mixedr1.evaluation.benchmarks import BenchmarkDataError, EvalItem, limit_items


@dataclass(frozen=True)
class Benchmark:
    load: Callable  # (data_root) -> list[EvalItem]
    score_item: Callable  # (item, response) -> (extracted, correct)
    aggregate: Callable  # (records) -> metrics dict, percentages
    metric: str  # the headline key of the aggregate
    column: str  # Table 1 column name
    direct_max_new_tokens: int  # generation cap with the direct prompt (lmms-eval's, see above)


BENCHMARKS: dict[str, Benchmark] = {
    "mathvista": Benchmark(benchmarks.load_mathvista, scoring.score_mathvista, scoring.aggregate_mathvista, "mathvista_rule_based", "MathVista", 1024),
    "mathvision": Benchmark(benchmarks.load_mathvision, scoring.score_mathvision, scoring.aggregate_accuracy, "accuracy", "MathVision", 1024),
    "mathvision_testmini": Benchmark(
        lambda root: benchmarks.load_mathvision(root, "mathvision_testmini"),
        scoring.score_mathvision, scoring.aggregate_accuracy, "accuracy", "MathVision", 1024,
    ),
    "mmbench": Benchmark(benchmarks.load_mmbench, scoring.score_mmbench, scoring.aggregate_mmbench, "circular_accuracy", "MMBench", 1024),
    "mmmu": Benchmark(benchmarks.load_mmmu, scoring.score_mmmu, scoring.aggregate_mmmu, "accuracy", "MMMU", 16),
    "mmstar": Benchmark(benchmarks.load_mmstar, scoring.score_mmstar, scoring.aggregate_mmstar, "l2_category_average", "MMStar", 128),
    "ai2d": Benchmark(benchmarks.load_ai2d, scoring.score_ai2d, scoring.aggregate_accuracy, "accuracy", "AI2D", 16),
    # Optional (EVAL.md); rule-based where the usual protocol uses a GPT judge (MathVerse).
    "mathverse": Benchmark(benchmarks.load_mathverse, scoring.score_mathverse, scoring.aggregate_mathverse, "mathverse_rule_based", "MathVerse", 16384),
    "mmmu_pro": Benchmark(benchmarks.load_mmmu_pro, scoring.score_mmmu_pro, scoring.aggregate_mmmu_pro, "mean_standard_vision", "MMMU-Pro", 256),
    "mmiq": Benchmark(benchmarks.load_mmiq, scoring.score_mmiq, scoring.aggregate_by_category("category"), "accuracy", "MM-IQ", 128),
    "m3cot": Benchmark(benchmarks.load_m3cot, scoring.score_m3cot, scoring.aggregate_by_category("domain"), "accuracy", "M3CoT", 128),
    "mm_math": Benchmark(benchmarks.load_mm_math, scoring.score_mm_math, scoring.aggregate_mm_math, "accuracy", "MM-Math", 1024),
}

# With the thinking prompt every benchmark may generate this many tokens (the paper's training cap).
THINKING_MAX_NEW_TOKENS = 1024


def max_new_tokens(name: str, prompt_mode: str) -> int:
    """The generation cap of benchmark `name` under `prompt_mode` (see the module docstring)."""
    return BENCHMARKS[name].direct_max_new_tokens if prompt_mode == "direct" else THINKING_MAX_NEW_TOKENS


# The paper's Table 1 columns, in its order (docs/method.md §6); Avg is their mean.
TABLE1 = ("mathvista", "mathvision", "mmbench", "mmmu", "mmstar", "ai2d")

__all__ = [
    "BENCHMARKS", "TABLE1", "THINKING_MAX_NEW_TOKENS", "Benchmark", "BenchmarkDataError", "EvalItem", "limit_items",
    "max_new_tokens",
]
