"""The paper's reported numbers (docs/method.md §6), transcribed by hand: reference data, not our results.

`PAPER[experiment][row][column]` is the score the Mixed-R1 paper reports, in percent. Experiment and
row names are those of `experiments/launch.py`'s registry, columns are benchmark names of
`mixedr1.evaluation.BENCHMARKS` plus "avg" (the paper's own average, kept as printed so a
transcription slip shows up as a mismatch with the mean of the other columns; a test checks it).
The report (`experiments/report.py`) puts these beside our numbers; nothing here is ever written
by a run.
"""

from __future__ import annotations

# Table 1: Avg, MathVista, MathVision, MMBench, MMMU, MMStar, AI2D.
_T1 = ("avg", "mathvista", "mathvision", "mmbench", "mmmu", "mmstar", "ai2d")
# Tables 2 and 4: Avg, MathVista, MathVision, MMMU, MMStar.
_T2 = ("avg", "mathvista", "mathvision", "mmmu", "mmstar")
# Table 3: MathVista, MathVision, MMStar (no average in the paper).
_T3 = ("mathvista", "mathvision", "mmstar")


def _rows(columns: tuple[str, ...], rows: dict[str, tuple[float, ...]]) -> dict[str, dict[str, float]]:
    for name, values in rows.items():
        assert len(values) == len(columns), f"{name}: {len(values)} numbers for {len(columns)} columns"
    return {name: dict(zip(columns, values)) for name, values in rows.items()}


PAPER: dict[str, dict[str, dict[str, float]]] = {
    "table1": _rows(_T1, {
        "qwen25vl_3b_direct": (57.0, 61.8, 20.7, 78.3, 47.1, 55.7, 78.8),
        "qwen25vl_3b_thinking": (53.2, 55.6, 23.3, 71.5, 44.1, 52.7, 72.2),
        "qwen25vl_3b_sft": (57.9, 62.4, 20.3, 80.3, 47.5, 58.3, 78.7),
        "qwen25vl_3b_mixed_r1": (59.2, 66.2, 23.4, 78.8, 48.6, 59.2, 79.2),
        "qwen25vl_7b_direct": (62.4, 68.9, 25.9, 84.1, 50.6, 62.3, 82.7),
        "qwen25vl_7b_thinking": (60.6, 64.7, 25.0, 82.1, 50.3, 60.7, 80.5),
        "qwen25vl_7b_sft": (62.9, 68.9, 24.3, 83.9, 52.3, 64.7, 83.3),
        "qwen25vl_7b_mixed_r1": (64.8, 70.6, 30.3, 84.5, 55.7, 64.6, 83.2),
    }),
    "table2": _rows(_T2, {
        "baseline": (46.3, 61.8, 20.7, 47.1, 55.7),
        "yorn": (44.2, 57.2, 20.6, 45.0, 53.9),
        "mcq": (47.2, 61.3, 21.0, 49.8, 56.8),
        "chart": (48.0, 63.6, 23.2, 49.0, 57.8),
        "grounding": (48.0, 64.3, 23.3, 47.6, 56.8),
        "open_ended": (49.2, 66.2, 23.4, 48.6, 59.2),
    }),
    "table3": _rows(_T3, {
        "scale_0.5": (62.8, 22.0, 56.1),
        "scale_1": (66.2, 23.4, 59.2),
        "scale_2": (63.7, 24.3, 59.3),
        "internvl25_4b_base": (65.9, 25.0, 58.7),
        "internvl25_4b_sft": (51.7, 22.4, 50.9),
        "internvl25_4b_mixed_r1": (66.2, 25.1, 61.9),
    }),
    "table4": _rows(_T2, {
        "modernbert": (43.7, 55.0, 20.3, 46.8, 52.6),
        "sbert": (43.9, 54.3, 21.7, 46.1, 53.3),
        "llm_judge": (43.3, 54.8, 21.4, 45.1, 52.0),
        "bipartite": (43.7, 55.7, 21.0, 45.8, 52.3),
        "bmas": (44.7, 57.4, 20.1, 47.0, 54.3),
    }),
    # Mixed-R1 (7B) on further benchmarks, as listed by a benchmark aggregator (docs/method.md §6).
    "others": {  # no average in the source
        "qwen25vl_7b_mixed_r1": {"mathvista": 70.6, "mmmu_pro": 38.0, "mathverse": 40.8, "mm_math": 35.8, "mmiq": 25.9,
                                 "m3cot": 59.9},
    },
}

# Rows whose printed average is not the mean of their columns in the paper itself (checked against
# the paper's text, not a transcription slip): Table 2 "+Chart" prints 48.0 (mean 48.4) and
# "+Open-Ended" prints 49.2 (mean 49.35). Every other printed average is the mean to ±0.05.
AVG_DIFFERS_IN_PAPER = {("table2", "chart"), ("table2", "open_ended")}
