"""Model output is untrusted: every reward on adversarial completions up to 1 MB — no exception, a
finite value in the documented range, and bounded time (a loose bound that only a super-linear
regression can break; the measured worst case is in the README)."""

import math
import re
import time

import pytest
from hypothesis import given, settings, strategies as st

from mixedr1.config import RewardConfig
from mixedr1.models import load_model, load_processor
from mixedr1.rewards import RewardContext, RewardTarget, format_reward, score_group
from mixedr1.rewards.iou import iou_reward

MB = 1_000_000

ADVERSARIAL = {
    "looping, cut before the last </answer>": ("<think>a</think><answer>b</answer>" * 40_000)[: MB - 3],
    "digits and commas": "1," * (MB // 2),
    "a 400-digit integer in a box": "<answer>[0,0,1" + "0" * 400 + ",5]</answer>",
    "5000-digit integer": "<answer>" + "9" * 5000 + "</answer>",
    "unclosed brackets": "<answer>" + "[1, 2, 3, " * (MB // 10) + "</answer>",
    "deep nesting": "<answer>" + "[" * 100_000 + "</answer>",
    "lone surrogate": "<answer>a \ud800 b</answer>",
    "white space": "<answer>" + " " * MB + "x</answer>",
    "exponents without digits": "<answer>" + "1.5e" * (MB // 4) + "</answer>",
    "percentages": "<answer>" + "12,345.6% " * (MB // 10) + "</answer>",
    "huge think": "<think>" + "x" * MB + "</think><answer>yes</answer>",
    "option letters": "<answer>" + "(A) " * (MB // 4) + "</answer>",
    "emoji and zero-width": "<answer>" + "é😀\u200b" * (MB // 8) + "</answer>",
    "inf and nan": "<answer>[inf, nan, 1e400, -1e400]</answer>",
}

TARGETS = {
    "yorn": RewardTarget("yorn", "yes"),
    "mcq": RewardTarget("mcq", "B", options=["red", "blue", "green"]),
    "chart": RewardTarget("chart", "12.5"),
    "grounding": RewardTarget("grounding", [1, 2, 30, 40], orig_hw=(100, 100), model_hw=(56, 56)),
    "open_ended": RewardTarget("open_ended", "a red circle \ud800"),  # a surrogate reaches us through ground truth too
}

ACCURACY_RANGE = {"yorn": (0, 1), "mcq": (0, 1), "chart": (0, 1), "grounding": (0, 1), "open_ended": (-2, 2)}


@pytest.fixture(scope="module")
def context(tiny_qwen_dir):
    model, processor = load_model(tiny_qwen_dir), load_processor(tiny_qwen_dir)
    return RewardContext(tokenizer=processor.tokenizer, embedding_table=model.get_input_embeddings().weight.detach())


@pytest.mark.parametrize("problem_type", list(TARGETS))
def test_adversarial_completions_score_in_range_and_fast(problem_type, context):
    cfg = RewardConfig()
    lo, hi = ACCURACY_RANGE[problem_type]
    for name, text in ADVERSARIAL.items():
        start = time.perf_counter()
        (r,) = score_group([text], TARGETS[problem_type], cfg, context)
        elapsed = time.perf_counter() - start
        assert math.isfinite(r.total) and lo <= r.accuracy <= hi and r.format in (0.0, 1.0), (name, r)
        assert r.total == pytest.approx(r.accuracy + cfg.format_weight * r.format), name
        assert elapsed < 1.0, f"{problem_type} / {name}: {elapsed:.2f} s"  # measured ≤ 0.08 s


def test_the_issue_examples():
    start = time.perf_counter()
    assert format_reward(("<think>a</think><answer>b</answer>" * 2000)[:-3]) == 0.0  # took 1.2 s with the regex
    assert format_reward(("<think>a</think><answer>b</answer>" * 30_000)[:-3]) == 0.0  # 1 MB: did not finish
    assert time.perf_counter() - start < 0.5
    assert iou_reward("[0,0,1" + "0" * 400 + ",5]", [1, 2, 3, 4]) == 0.0  # raised OverflowError


def test_judges_get_bounded_valid_text():
    """The external judges see at most 64 characters per judge token, lone surrogates replaced."""
    seen = {}

    class RecordingJudge:
        name = "sbert"

        def score(self, answers, truth):
            seen["answers"], seen["truth"] = answers, truth
            return [0.5 for _ in answers]

    cfg = RewardConfig(open_ended="sbert", judge_model="unused", judge_max_tokens=16)
    target = RewardTarget("open_ended", "truth \ud800" + "t" * 10_000)
    out = score_group(["<answer>" + "a\udfff" * MB + "</answer>", "no answer"], target, cfg, RewardContext(judge=RecordingJudge()))
    assert [r.accuracy for r in out] == [0.5, 0.5]
    (answer, missing), truth = seen["answers"], seen["truth"]
    assert missing is None and len(answer) == len(truth) == 64 * 16
    assert "\udfff" not in answer and "\ud800" not in truth and answer.startswith("a?a?")


# The regular expression format_reward used before (quadratic on looping text): the reference.
_FORMAT = re.compile(r"\A\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*\Z", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def reference_format_reward(text: str) -> float:
    match = _FORMAT.match(text)
    return 0.0 if match is None or any(tag in part for part in match.groups() for tag in _TAGS) else 1.0


PIECES = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "\t", "\u3000", "a", "<", ">", "/"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(PIECES, max_size=12), st.booleans())
def test_format_reward_equals_the_regex(pieces, well_formed_core):
    text = "".join(pieces)
    if well_formed_core:  # make positives common: insert the pieces around a valid response
        text = text[: len(text) // 2] + "<think>x</think> <answer>y</answer>" + text[len(text) // 2 :]
    assert format_reward(text) == reference_format_reward(text), repr(text)
