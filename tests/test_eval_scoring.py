"""Answer extraction and benchmark scoring (mixedr1.evaluation.scoring) on realistic model outputs."""

from __future__ import annotations

import pytest

from mixedr1.evaluation.benchmarks import EvalItem
from mixedr1.evaluation.scoring import (
    aggregate_accuracy,
    aggregate_mathvista,
    aggregate_mmbench,
    aggregate_mmmu,
    aggregate_mmstar,
    ai2d_letter,
    answer_region,
    edit_distance,
    extract_choice_letter,
    last_boxed,
    last_number,
    mathvision_equal,
    mathvision_extract,
    mathvista_extract,
    mmmu_eval_open,
    mmmu_gold_answers,
    mmmu_parse_multi_choice,
    mmmu_parse_open,
    mmmu_rng,
    parse_options_literal,
    score_ai2d,
    score_mathvision,
    score_mathvista,
    score_mmbench,
    score_mmmu,
    score_mmstar,
    to_number,
)
from mixedr1.evaluation.scoring import (
    aggregate_by_category,
    aggregate_mmmu_pro,
    mmiq_extract,
    score_m3cot,
    score_mathverse,
    score_mmiq,
    score_mmmu_pro,
)

OPTIONS = ["a cat", "a dog", "a bird", "a fish"]

# ----------------------------------------------------------------------------------------------
# Where the answer is


def test_answer_region_prefers_the_answer_tag():
    assert answer_region("<think>maybe A, maybe (C)</think><answer>B</answer>") == "B"
    assert answer_region("<think>a</think><answer>A</answer> then <answer> C </answer>") == "C"
    assert answer_region("<think>long reasoning</think> The answer is D.") == "The answer is D."
    assert answer_region("<think>cut off by max_new_tokens") == "<think>cut off by max_new_tokens"
    assert answer_region("<think>x</think><answer>12.5 cm") == "12.5 cm"  # unclosed answer tag
    assert answer_region("  B  ") == "B"
    assert answer_region(None) == ""


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{5}", "5"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"first \boxed{3} then \boxed{x^{2}+\sqrt{4}}", r"x^{2}+\sqrt{4}"),
        (r"\boxed{ {a}{b} } tail", "{a}{b}"),
        (r"\fbox{7}", "7"),
        (r"\boxed{12} and \boxed{unclosed", "12"),
        ("no box here", None),
    ],
)
def test_last_boxed_balances_nested_braces(text, expected):
    assert last_boxed(text) == expected


# ----------------------------------------------------------------------------------------------
# Letters


@pytest.mark.parametrize(
    "response, expected",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B)", "B"),
        ("b", "B"),
        ("The answer is B", "B"),
        ("The answer is B.", "B"),
        ("**B**", "B"),
        ("**Answer: B**", "B"),
        ("Answer: (C) a bird", "C"),
        ("The correct option is (D).", "D"),
        ("Final answer: A", "A"),
        ("B. a dog", "B"),
        (r"Therefore, \boxed{C}", "C"),
        ("<think>(A) looks wrong, (D) too.</think><answer>B</answer>", "B"),
        ("Looking at the picture, it is clearly C.", "C"),
        ("a dog", "B"),  # exactly one option's text
        ("I am sure this is a fish swimming.", "D"),  # one option's text named
        ("A red circle", None),  # an article, not a letter
        ("The answer is a dog or a cat", None),  # lower-case "a" is not a letter; two options named
        ("E", None),  # not one of the four letters
        ("", None),
    ],
)
def test_extract_choice_letter_spellings(response, expected):
    assert extract_choice_letter(answer_region(response), "ABCD", OPTIONS) == expected


def test_option_text_match_prefers_the_longer_option():
    options = ["red", "dark red", "blue"]
    assert extract_choice_letter("It is dark red.", "ABC", options) == "B"
    assert extract_choice_letter("red and blue", "ABC", options) is None


def test_letters_without_options_mmstar():
    assert extract_choice_letter("Answer: C", "ABCD") == "C"
    assert extract_choice_letter("the third one", "ABCD") is None


# ----------------------------------------------------------------------------------------------
# Numbers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 3.5 cm", 3.5),
        ("about 1,234 people", 1234.0),
        ("It drops to -2.5 degrees", -2.5),
        ("The speed is 12 m/s^2 and the time 7 s", 7.0),
        ("$45.00", 45.0),
        ("50%", 50.0),
        ("no number", None),
    ],
)
def test_last_number_reads_numbers_with_units(text, expected):
    assert last_number(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("3", 3.0), ("-2.50", -2.5), (r"\frac{3}{4}", 0.75), (r"-\dfrac{1}{2}", -0.5), ("3/4", 0.75),
     (r"2\sqrt{3}", 2 * 3**0.5), ("40%", 40.0), ("x+1", None), ("1/0", None), ("__import__('os')", None)],
)
def test_to_number_parses_by_hand(text, expected):
    assert to_number(text) == (pytest.approx(expected) if expected is not None else None)


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("same", "same") == 0


# ----------------------------------------------------------------------------------------------
# MathVista (rule-based)


def mathvista_item(answer, question_type="free_form", answer_type="integer", choices=(), precision=None):
    return EvalItem(
        "mathvista", "1", "q", options=list(choices), answer=answer, multiple_choice=question_type == "multi_choice",
        meta={"question_type": question_type, "answer_type": answer_type, "precision": precision},
    )


def test_mathvista_float_rounded_to_precision():
    assert mathvista_extract("<answer>1.449</answer>", "free_form", "float", [], 2.0) == "1.45"
    assert mathvista_extract("<answer>0.60</answer>", "free_form", "float", [], 1.0) == "0.6"
    assert score_mathvista(mathvista_item("1.45", answer_type="float", precision=2.0), "<answer>1.4512</answer>") == ("1.45", True)
    assert score_mathvista(mathvista_item("1.5", answer_type="float", precision=1.0), "<answer>1.44</answer>") == ("1.4", False)


def test_mathvista_answer_tag_then_boxed_then_last_number():
    item = mathvista_item("14")
    assert score_mathvista(item, "<think>10 + 3 = 13? no, 14</think><answer>14</answer>") == ("14", True)
    assert score_mathvista(item, r"10 + 4 gives \boxed{14}, not 15") == ("14", True)
    assert score_mathvista(item, "There are 14 cubes.") == ("14", True)
    assert score_mathvista(mathvista_item("3.5", answer_type="float", precision=1.0), "The answer is 3.5 cm") == ("3.5", True)
    assert score_mathvista(item, "I cannot tell.") == (None, False)
    assert score_mathvista(item, "<answer>14.7</answer>") == ("14", True)  # int(float(x)), as the reference


def test_mathvista_letter_maps_to_choice_text():
    choices = ["3/11", "8/11", "6/11", "3/5"]
    item = mathvista_item("8/11", "multi_choice", "text", choices)
    assert score_mathvista(item, "<answer>B</answer>") == ("8/11", True)
    assert score_mathvista(item, "The correct answer is (B) 8/11.") == ("8/11", True)
    assert score_mathvista(item, "<answer>8/11</answer>") == ("8/11", True)
    assert score_mathvista(item, "<answer>C</answer>") == ("6/11", False)
    # No letter and no exact text: the nearest choice by edit distance (lmms-eval's get_most_similar).
    assert score_mathvista(item, "<answer>8/12</answer>") == ("8/11", True)


def test_mathvista_list_answers_compare_as_written():
    item = mathvista_item("[2007, 2008]", answer_type="list")
    assert score_mathvista(item, "<answer>[2007, 2008]</answer>") == ("[2007, 2008]", True)


# ----------------------------------------------------------------------------------------------
# MathVision


@pytest.mark.parametrize(
    "response, expected",
    [
        (r"The area is \boxed{12}.", "12"),
        (r"So $x = \boxed{\frac{1}{2}}$", r"\frac{1}{2}"),
        ("Step 1 ... The answer is 7.", "7"),
        ("Therefore the answer is C.", "c"),
        ("(C)\nbecause the triangle ...", "c"),
        (r"the final answer is 30^\circ", "30"),
        ("<think>it is 5 or 6</think><answer>6</answer>", "6"),
    ],
)
def test_mathvision_extract(response, expected):
    assert mathvision_extract(response) == expected


def test_mathvision_equality_at_two_decimals():
    assert mathvision_equal("0.333", r"\frac{1}{3}")
    assert mathvision_equal(r"\frac{1}{2}", "0.5")
    assert mathvision_equal("2/4", "0.5")
    assert mathvision_equal("(1,2)", "(1.0,2.0)")
    assert not mathvision_equal("0.34", r"\frac{1}{3}")
    assert not mathvision_equal("", "")
    assert mathvision_equal("C", "c")


def test_mathvision_letter_or_option_text():
    item = EvalItem("mathvision", "1", "q", options=["2", "4", "6", "8", "10"], answer="C", multiple_choice=True)
    assert score_mathvision(item, "<answer>C</answer>")[1]
    assert score_mathvision(item, r"so the answer is \boxed{6}")[1]  # the text of option C
    assert not score_mathvision(item, r"\boxed{8}")[1]
    free = EvalItem("mathvision", "2", "q", answer="7")
    assert score_mathvision(free, r"\boxed{7.0}")[1] and not score_mathvision(free, r"\boxed{7.1}")[1]


# ----------------------------------------------------------------------------------------------
# MMBench circular, MMStar categories, AI2D


def test_mmbench_circular_needs_every_rotation():
    records = [
        {"correct": True, "meta": {"index": 0}},
        {"correct": False, "meta": {"index": 1_000_000}},  # rotation of question 0, wrong
        {"correct": True, "meta": {"index": 1}},
        {"correct": True, "meta": {"index": 1_000_001}},
        {"correct": True, "meta": {"index": 2_000_001}},
        {"correct": True, "meta": {"index": 2}},  # no rotation present: counts on its own
    ]
    metrics = aggregate_mmbench(records)
    assert metrics["questions"] == 3 and metrics["rows"] == 6
    assert metrics["circular_accuracy"] == pytest.approx(200 / 3)  # questions 1 and 2
    assert metrics["per_row_accuracy"] == pytest.approx(500 / 6)


def test_mmbench_item_scoring():
    item = EvalItem("mmbench", "0", "q", options=["red", "blue", "green"], answer="B", multiple_choice=True)
    assert score_mmbench(item, "B") == ("B", True)
    assert score_mmbench(item, "blue") == ("B", True)
    assert score_mmbench(item, "D") == (None, False)


def test_mmstar_category_average_by_hand():
    cat = lambda c, ok: {"correct": ok, "meta": {"category": c, "l2_category": c + "-l2"}}  # noqa: E731
    records = [cat("math", True), cat("math", False), cat("math", False), cat("math", True),  # 50%
               cat("coarse perception", True)]  # 100%
    metrics = aggregate_mmstar(records)
    assert metrics["per_category"] == {"coarse perception": 100.0, "math": 50.0}
    assert metrics["category_average"] == pytest.approx(75.0)  # (50 + 100) / 2
    assert metrics["overall"] == pytest.approx(60.0)  # 3 of 5 items
    item = EvalItem("mmstar", "1", "Options: A: x, B: y, C: z, D: w", answer="C", multiple_choice=True)
    assert score_mmstar(item, "<answer>(C)</answer>") == ("C", True)


def test_ai2d_index_to_letter():
    assert [ai2d_letter(a, 4) for a in ("0", "1", "2", "3", " 3 ", "4", "B", None)] == ["A", "B", "C", "D", "D", None, None, None]
    item = EvalItem("ai2d", "0", "q", options=["egg", "larva", "pupa", "adult"], answer=ai2d_letter("2", 4), multiple_choice=True)
    assert score_ai2d(item, "C. pupa") == ("C", True)
    assert score_ai2d(item, "The answer is (A)") == ("A", False)


def test_accuracy_aggregates_are_percentages():
    records = [{"correct": True, "meta": {}}, {"correct": False, "meta": {}}, {"correct": True, "meta": {}}, {"correct": True, "meta": {}}]
    assert aggregate_accuracy(records) == {"accuracy": 75.0, "n": 4}
    assert aggregate_mathvista(records)["mathvista_rule_based"] == 75.0
    assert aggregate_accuracy([]) == {"accuracy": 0.0, "n": 0}


# ----------------------------------------------------------------------------------------------
# MMMU


def test_mmmu_options_string_is_parsed_as_a_literal():
    assert parse_options_literal("['1', '2', 'The $\\\\alpha$ one']") == ["1", "2", "The $\\alpha$ one"]
    assert parse_options_literal("[]") == []
    assert parse_options_literal("[1, 2.5]") == ["1", "2.5"]


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('x')",
        "[__import__('os').system('x')]",
        "open('/etc/passwd').read()",
        "['a', 'b'] + ['c']",
        "{'a': 1}",
        "'just a string'",
        "['unclosed'",
    ],
)
def test_mmmu_malicious_or_malformed_options_raise_a_clear_error(text):
    with pytest.raises(ValueError, match=r"data\.parquet row 3 column 'options'"):
        parse_options_literal(text, "data.parquet row 3 column 'options'")


def test_mmmu_multi_choice_parser_last_match_wins():
    choices, index2ans = ["A", "B", "C", "D"], {"A": "Paris", "B": "London", "C": "Rome", "D": "Berlin"}
    parse = lambda r: mmmu_parse_multi_choice(r, choices, index2ans, mmmu_rng(42, "x"))  # noqa: E731
    assert parse("(A) is tempting but (C) is right") == "C"
    assert parse("The answer is B") == "B"
    assert parse("B.") == "B"  # trailing punctuation stripped, then "B " matches
    assert parse("A is tempting but the answer is D") == "D"
    # The official quirk, kept: "A." and "D." both match, neither as " X ", so the first choice wins.
    assert parse("A. not this, D. this") == "A"
    assert parse("Looking at the map, the capital shown there is clearly Rome") == "C"  # > 5 words: option text


def test_mmmu_fallback_is_a_seeded_random_choice():
    choices, index2ans = ["A", "B", "C", "D"], {"A": "w", "B": "x", "C": "y", "D": "z"}
    picks = [mmmu_parse_multi_choice("no idea", choices, index2ans, mmmu_rng(42, f"item{i}")) for i in range(40)]
    again = [mmmu_parse_multi_choice("no idea", choices, index2ans, mmmu_rng(42, f"item{i}")) for i in range(40)]
    assert picks == again and set(picks) <= set(choices)
    assert len(set(picks)) > 1  # it is random across items, not a constant
    other_seed = [mmmu_parse_multi_choice("no idea", choices, index2ans, mmmu_rng(7, f"item{i}")) for i in range(40)]
    assert other_seed != picks


def test_mmmu_open_answers():
    assert 24.0 in mmmu_parse_open("The total is 24.0 dollars")
    assert mmmu_eval_open(["24"], mmmu_parse_open("Thus the result is 24."))
    assert mmmu_eval_open(["3.14"], mmmu_parse_open("so x = 3.1416"))  # 2 decimals: 3.14
    assert mmmu_eval_open(["photosynthesis"], mmmu_parse_open("Therefore the answer is Photosynthesis."))
    assert not mmmu_eval_open(["25"], mmmu_parse_open("The answer is 24"))
    assert mmmu_gold_answers("['24', '24.0']") == ["24", "24.0"]
    assert mmmu_gold_answers("__import__('os')") == ["__import__('os')"]  # plain text, never run


def test_mmmu_item_scoring_uses_the_answer_tag():
    item = EvalItem("mmmu", "validation_Art_1", "<image 1> q", options=["Baroque", "Cubism", "Impressionism"],
                    answer="B", multiple_choice=True, meta={"question_type": "multiple-choice"})
    assert score_mmmu(item, "<think>(A) or (C)?</think><answer>B</answer>") == ("B", True)
    assert score_mmmu(item, "no idea") == score_mmmu(item, "no idea")  # same seed, same fallback
    open_item = EvalItem("mmmu", "validation_Math_2", "q", answer="12", meta={"question_type": "open"})
    assert score_mmmu(open_item, "<answer>12</answer>")[1]
    records = [{"correct": True, "meta": {"question_type": "open"}}, {"correct": False, "meta": {"question_type": "multiple-choice"}}]
    assert aggregate_mmmu(records)["per_question_type"] == {"multiple-choice": 0.0, "open": 100.0}


# ----------------------------------------------------------------------------------------------
# Optional benchmarks


def test_mathverse_letters_and_free_form():
    mc = EvalItem("mathverse", "1", "Find x. Choices: A:5 B:6", answer="B", multiple_choice=True)
    assert score_mathverse(mc, "<answer>B</answer>") == ("B", True)
    assert score_mathverse(mc, "The answer is A") == ("A", False)
    free = EvalItem("mathverse", "2", "Find the area.", answer="12.5")
    assert score_mathverse(free, r"so the area is \boxed{\frac{25}{2}}")[1]
    assert not score_mathverse(free, r"\boxed{12}")[1]


def test_mmmu_pro_settings_and_mean():
    standard = EvalItem("mmmu_pro", "standard:1", "q", options=[str(k) for k in range(10)], answer="J",
                        multiple_choice=True, meta={"setting": "standard", "question_type": "multiple-choice"})
    assert score_mmmu_pro(standard, "The answer is (J)") == ("J", True)  # ten options: letters up to J
    vision = EvalItem("mmmu_pro", "vision:1", "q", options=["a", "b", "c"], answer="C", multiple_choice=True, meta={"setting": "vision"})
    assert score_mmmu_pro(vision, "Answer: C") == ("C", True)
    records = [{"correct": True, "meta": {"setting": "standard"}}, {"correct": False, "meta": {"setting": "standard"}},
               {"correct": True, "meta": {"setting": "vision"}}]
    metrics = aggregate_mmmu_pro(records)
    assert metrics["per_setting"] == {"standard": 50.0, "vision": 100.0} and metrics["mean_standard_vision"] == 75.0


@pytest.mark.parametrize(
    "response, expected",
    [("The answer is C.", "C"), ("Answer: (B)", "B"), ("Comparing the shapes, D fits, not A", "A"),
     ("<think>B?</think><answer>D</answer>", "D"), ("no letter here", None)],
)
def test_mmiq_phrase_then_last_standalone_letter(response, expected):
    assert mmiq_extract(response) == expected


def test_mmiq_and_m3cot_items_and_per_category():
    assert score_mmiq(EvalItem("mmiq", "7", "q", answer="A", multiple_choice=True), "The answer is A") == ("A", True)
    item = EvalItem("m3cot", "1", "q", options=["push", "pull"], answer="B", multiple_choice=True)
    assert score_m3cot(item, "[Answer] B") == ("B", True)
    assert score_m3cot(item, "It is a pull.") == ("B", True)
    records = [{"correct": True, "meta": {"domain": "science"}}, {"correct": False, "meta": {"domain": "math"}}]
    assert aggregate_by_category("domain")(records) == {"accuracy": 50.0, "per_domain": {"math": 0.0, "science": 100.0}, "n": 2}
