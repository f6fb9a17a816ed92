"""Benchmark evaluation (EVAL.md): loaders, prompts, rule-based scorers, and one registry.

`BENCHMARKS[name]` says how to load a benchmark, score one item, aggregate the records, which
metric is its headline number, and the column it fills in the paper's Table 1. Adding a benchmark
is one loader in `benchmarks.py`, one scorer in `scoring.py`, one direct prompt in `prompts.py` and
one entry here.
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


BENCHMARKS: dict[str, Benchmark] = {
    "mathvista": Benchmark(benchmarks.load_mathvista, scoring.score_mathvista, scoring.aggregate_mathvista, "mathvista_rule_based", "MathVista"),
    "mathvision": Benchmark(benchmarks.load_mathvision, scoring.score_mathvision, scoring.aggregate_accuracy, "accuracy", "MathVision"),
    "mathvision_testmini": Benchmark(
        lambda root: benchmarks.load_mathvision(root, "mathvision_testmini"),
        scoring.score_mathvision, scoring.aggregate_accuracy, "accuracy", "MathVision",
    ),
    "mmbench": Benchmark(benchmarks.load_mmbench, scoring.score_mmbench, scoring.aggregate_mmbench, "circular_accuracy", "MMBench"),
    "mmmu": Benchmark(benchmarks.load_mmmu, scoring.score_mmmu, scoring.aggregate_mmmu, "accuracy", "MMMU"),
    "mmstar": Benchmark(benchmarks.load_mmstar, scoring.score_mmstar, scoring.aggregate_mmstar, "category_average", "MMStar"),
    "ai2d": Benchmark(benchmarks.load_ai2d, scoring.score_ai2d, scoring.aggregate_accuracy, "accuracy", "AI2D"),
    # Optional (EVAL.md); rule-based where the usual protocol uses a GPT judge (MathVerse).
    "mathverse": Benchmark(benchmarks.load_mathverse, scoring.score_mathverse, scoring.aggregate_mathverse, "mathverse_rule_based", "MathVerse"),
    "mmmu_pro": Benchmark(benchmarks.load_mmmu_pro, scoring.score_mmmu_pro, scoring.aggregate_mmmu_pro, "mean_standard_vision", "MMMU-Pro"),
    "mmiq": Benchmark(benchmarks.load_mmiq, scoring.score_mmiq, scoring.aggregate_by_category("category"), "accuracy", "MM-IQ"),
    "m3cot": Benchmark(benchmarks.load_m3cot, scoring.score_m3cot, scoring.aggregate_by_category("domain"), "accuracy", "M3CoT"),
}

# The paper's Table 1 columns, in its order (docs/method.md §6); Avg is their mean.
TABLE1 = ("mathvista", "mathvision", "mmbench", "mmmu", "mmstar", "ai2d")

__all__ = ["BENCHMARKS", "TABLE1", "Benchmark", "BenchmarkDataError", "EvalItem", "limit_items"]
