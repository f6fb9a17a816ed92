"""Every benchmark scorer on adversarial model output: no answer makes a scorer raise or hang.

10^4 generated answers per benchmark (seeded, built from fragments that broke or nearly broke the
scorers: exponents without digits, unbalanced braces, huge numbers, letters in every spelling, tags,
LaTeX commands, unicode), fed to each item shape of that benchmark; then a hypothesis search on top.
"""

from __future__ import annotations

import random
import time
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from mixedr1.evaluation import BENCHMARKS
from mixedr1.evaluation.benchmarks import EvalItem
from mixedr1.evaluation.extractor import EXTRACTABLE, clean_reply, needs_model, parse_reply
from mixedr1.evaluation.latex_arithmetic import latex_value, same_expression
from mixedr1.rewards.matching import mcq_reward

ANSWERS_PER_BENCHMARK = 10_000

FRAGMENTS = [
    "A", "B", "C", "D", "E", "a", "(A)", "(E) 5", "E2", "e5", "E", "B.", "C)", "D:", "B,", " is correct", "The answer is ",
    "Answer: ", "Option ", "the final answer is ", "[Answer] ", "Therefore, ", "1e999", "-1e-999", "9" * 400, "1," * 40,
    "0.5", "3/0", "1/3", "-", "+", ".", ",", "=", "\\approx", "\\boxed{", "\\fbox{", "{", "}", "{}", "\\frac{", "\\dfrac",
    "\\sqrt", "\\sqrt[", "]", "[", "(", ")", "^", "^{", "9^9^9", "10^{400}", "\\pi", "2\\pi", "\\text{", "\\text{ cm}",
    "\\mathrm{", "\\left(", "\\right)", "\\cup", "\\pm", "\\infty", "%", "\\%", "$", "°", "^\\circ", "<", "<<", "x", "y=",
    "<answer>", "</answer>", "<think>", "</think>", "\n", "\n\n", " ", "\t", "nan", "inf", "NaN", "-0", "π", "√", "∞",
    "−", "×", "÷", "厘米", "，", "（", "）", "💥", "\x00", "\ud800", "a dog", "red", "style 3", "12.5", "[1, 2]",
    "'", '"', "\\", "**", "`", "#", "Extracted answer: ", "null",
]


def adversarial_answers(n: int, seed: int) -> list[str]:
    """`n` answers of 0–40 fragments; one in 500 repeated to ~100 KB (the scorers cut long text)."""
    rng = random.Random(seed)
    answers = []
    for i in range(n):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 40)))
        if i % 500 == 0:
            text = text * (100_000 // max(len(text), 1))
        answers.append(text)
    return answers


def items_of(name: str) -> list[EvalItem]:
    """Every item shape the scorer of `name` branches on (options or not, each answer type, setting)."""
    mc = dict(multiple_choice=True)
    if name == "mathvista":
        return [
            EvalItem(name, "1", "q", options=["3/11", "8/11", "6/11"], answer="8/11", meta={"question_type": "multi_choice", "answer_type": "text", "precision": None}, **mc),
            EvalItem(name, "2", "q", answer="14", meta={"question_type": "free_form", "answer_type": "integer", "precision": None}),
            EvalItem(name, "3", "q", answer="1.5", meta={"question_type": "free_form", "answer_type": "float", "precision": 1.0}),
            EvalItem(name, "4", "q", answer="1.45", meta={"question_type": "free_form", "answer_type": "float", "precision": float("nan")}),
            EvalItem(name, "5", "q", answer="[1, 2]", meta={"question_type": "free_form", "answer_type": "list", "precision": None}),
        ]
    if name in ("mathvision", "mathvision_testmini"):
        return [EvalItem(name, "1", "q", options=["1", "2", "3", "4", "5"], answer="E", **mc),
                EvalItem(name, "2", "q", answer="2\\sqrt{3}"), EvalItem(name, "3", "q", answer="(1,2)")]
    if name == "mmbench":
        return [EvalItem(name, "1", "q", options=["a cat", "a dog", "red"], answer="B", meta={"index": 1}, **mc)]
    if name == "mmmu":
        return [EvalItem(name, "1", "q", options=["1", "2", "a dog"], answer="A", meta={"question_type": "multiple-choice"}, **mc),
                EvalItem(name, "2", "q", options=[], answer="A", meta={"question_type": "multiple-choice"}, **mc),
                EvalItem(name, "3", "q", answer="['24', '24.0']", meta={"question_type": "open"})]
    if name == "mmstar":
        return [EvalItem(name, "1", "q A: x B: y", answer="C", meta={"category": "c", "l2_category": "l"}, **mc)]
    if name == "ai2d":
        return [EvalItem(name, "1", "q", options=["red", "blue", "green", "black"], answer="D", **mc)]
    if name == "mathverse":
        return [EvalItem(name, "1", "q", answer="C", meta={"problem_version": "v"}, **mc), EvalItem(name, "2", "q", answer="12.5")]
    if name == "mmmu_pro":
        return [EvalItem(name, "s", "q", options=[f"style {k}" for k in range(10)], answer="D", meta={"setting": "standard", "question_type": "multiple-choice"}, **mc),
                EvalItem(name, "v", "q", answer="B", meta={"setting": "vision", "options": ["a", "b", "c"]}, **mc)]
    if name == "mmiq":
        return [EvalItem(name, "1", "q", answer="E", meta={"category": "c"}, **mc)]
    if name == "m3cot":
        return [EvalItem(name, "1", "q", options=["a dog", "red"], answer="A", meta={"domain": "d"}, **mc)]
    if name == "mm_math":
        return [EvalItem(name, "1", "q", answer="2\\sqrt{3}"), EvalItem(name, "2", "q", answer="1,\\frac{1}{2}"),
                EvalItem(name, "3", "q", answer="y=2x+1"), EvalItem(name, "4", "q", answer="")]
    raise AssertionError(f"no fuzz items for {name}; add them")


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_ten_thousand_adversarial_answers_per_benchmark_never_raise(name):
    score = BENCHMARKS[name].score_item
    items = items_of(name)
    start = time.perf_counter()
    answers = adversarial_answers(ANSWERS_PER_BENCHMARK, seed=zlib.crc32(name.encode()))
    for i, answer in enumerate(answers):
        item = items[i % len(items)]
        extracted, correct = score(item, answer)  # raises = a failure, reported with the answer below
        assert isinstance(correct, bool), (name, answer[:200])
        if name in EXTRACTABLE:  # the local extractor's rules see the same text as a reply and a response
            needs_model(name, item, answer)
            reading = parse_reply(name, item, answer[:2000])
            if reading is not None:
                score(item, answer, extraction=reading)
    assert time.perf_counter() - start < 20, f"{name}: {ANSWERS_PER_BENCHMARK} answers took too long"


def test_latex_arithmetic_and_the_training_reward_on_the_same_answers():
    for answer in adversarial_answers(3000, seed=7):
        value = latex_value(answer[:300])
        assert value is None or value == value  # never NaN
        same_expression(answer[:300], "2x+1")
        assert mcq_reward(answer, "B", ["3 apples", "5 apples", "7 apples"]) in (0.0, 1.0)
        clean_reply(answer)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join)))
def test_hypothesis_finds_no_answer_that_makes_a_scorer_raise(answer):
    for name, bench in BENCHMARKS.items():
        for item in items_of(name):
            extracted, correct = bench.score_item(item, answer)
            assert isinstance(correct, bool)
