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


# ----------------------------------------------------------------------------------------------
# The evaluation issue's cases: 1 a crash, 2 the leading letter, 3 MMMU-Pro vision, 4 smaller misses

from mixedr1.evaluation import BENCHMARKS, max_new_tokens  # noqa: E402
from mixedr1.evaluation.latex_arithmetic import latex_value, same_expression  # noqa: E402
from mixedr1.evaluation.prompts import prompt_text  # noqa: E402
from mixedr1.evaluation.scoring import (  # noqa: E402
    all_boxed, mm_math_equal, mm_math_extract, plain_float, score_mm_math,
)


def _mathvista_item(answer_type, answer="2", precision=None):
    return EvalItem("mathvista", "1", "q", answer=answer,
                    meta={"question_type": "free_form", "answer_type": answer_type, "precision": precision})


@pytest.mark.parametrize("text", ["e5", "E2", "e-3", "E", ".e5", "1e999"])
def test_item1_an_exponent_without_digits_is_no_number(text):
    assert plain_float(text) is None and to_number(text) is None


@pytest.mark.parametrize("answer_type, precision", [("integer", None), ("float", 1.0), ("float", 2.0)])
def test_item1_mathvista_answer_E2_scores_wrong_without_raising(answer_type, precision):
    # `<answer>E2</answer>` reached float("E2") through to_number: the whole run aborted. Now it is
    # no number, and the last-number rule reads its 2.
    item = _mathvista_item(answer_type, answer="7", precision=precision)
    assert score_mathvista(item, "<think>x</think><answer>E2</answer>") == ("2" if answer_type == "integer" else "2.0", False)


def test_item1_option_letter_then_number_reaches_mathvision_and_mathverse_without_raising():
    # "(E) 5" becomes "e5" in MathVision's normalisation, then reached float() in mathvision_equal.
    assert mathvision_extract("(E) 5") == "e5"
    for answer in ("5", "E"):  # lmms-eval: latex2sympy("e5") is 5e = 13.59: wrong either way
        assert score_mathvision(EvalItem("mathvision", "1", "q", answer=answer), "(E) 5") == ("e5", False)
    assert score_mathverse(EvalItem("mathverse", "2", "q", answer="5"), "(E) 5") == ("e5", False)


def test_item1_eval_counts_an_answer_a_scorer_cannot_handle_and_goes_on(monkeypatch):
    import eval as eval_cli
    from mixedr1.evaluation import Benchmark

    def fragile(item, response):
        if response == "boom":
            raise ValueError("could not convert string to float: 'e5'")
        return response, response == item.answer

    bench = BENCHMARKS["ai2d"]
    monkeypatch.setitem(BENCHMARKS, "ai2d", Benchmark(bench.load, fragile, bench.aggregate, bench.metric, bench.column, 16))
    items = [EvalItem("ai2d", str(i), "q", answer="A") for i in range(3)]
    result = eval_cli.score_benchmark("ai2d", items, {"0": "A", "1": "boom", "2": "B"})
    assert result["unscorable"] == 1 and result["score"] == pytest.approx(100 / 3)
    failed = result["records"][1]
    assert failed["correct"] is False and failed["extracted"] is None and failed["error"].startswith("ValueError: could not convert")
    assert [r["extractor"] for r in result["records"]] == ["rule"] * 3


LEADING_LETTER = "(A) red does not match the sky. (B) blue is close, but (D) is odd. Therefore, the answer is C."
COLOURS = ["red", "blue", "green", "yellow"]


@pytest.mark.parametrize("bench, item", [
    ("mmbench", EvalItem("mmbench", "1", "q", options=COLOURS, answer="C", multiple_choice=True, meta={"index": 1})),
    ("ai2d", EvalItem("ai2d", "1", "q", options=COLOURS, answer="C", multiple_choice=True)),
    ("mmstar", EvalItem("mmstar", "1", "q A. red B. blue C. green D. yellow", answer="C", multiple_choice=True)),
    ("m3cot", EvalItem("m3cot", "1", "q", options=COLOURS, answer="C", multiple_choice=True)),
    ("mmmu_pro", EvalItem("mmmu_pro", "vision:1", "q", answer="C", multiple_choice=True, meta={"setting": "vision", "options": COLOURS})),
])
def test_item2_the_conclusion_beats_the_leading_letter(bench, item):
    assert BENCHMARKS[bench].score_item(item, LEADING_LETTER) == ("C", True)


def test_item2_mathvista_multi_choice_reads_the_conclusion():
    item = EvalItem("mathvista", "1", "q", options=COLOURS, answer="green", multiple_choice=True,
                    meta={"question_type": "multi_choice", "answer_type": "text", "precision": None})
    assert score_mathvista(item, LEADING_LETTER) == ("green", True)


@pytest.mark.parametrize("response, expected", [
    ("(B)", "B"), ("B.", "B"), ("B) blue", "B"), ("B. blue", "B"),  # a letter alone or with its own text
    ("B) green", "B"),  # letter and text disagree: the written letter, as lmms-eval's MMBench reads it
    ("B. blue, because the sky is blue", "B"),  # the line-start letter, still read (no conclusion given)
])
def test_item2_a_letter_with_its_own_text_still_counts(response, expected):
    assert extract_choice_letter(response, "ABCD", COLOURS) == expected


def test_item3_mmmu_pro_vision_prompts_show_no_option_text():
    item = EvalItem("mmmu_pro", "vision:1", "Answer the question shown in the image.", options=[], answer="B",
                    multiple_choice=True, meta={"setting": "vision", "options": ["style one", "style two"]})
    assert prompt_text(item, "direct") == "Answer with the option letter from the given choices directly."
    thinking = prompt_text(item, "thinking")
    assert "style" not in thinking and "A." not in thinking and "option letter" in thinking
    assert score_mmmu_pro(item, "B") == ("B", True)
    assert score_mmmu_pro(item, "It is style two.") == ("B", True)  # the texts still serve the scorer
    standard = EvalItem("mmmu_pro", "standard:1", "Which?", options=["x", "y"], answer="A", multiple_choice=True,
                        meta={"setting": "standard"})
    assert prompt_text(standard, "direct") == "Which?\nA. x\nB. y\n\nAnswer with the option letter from the given choices directly."


@pytest.mark.parametrize("response, expected", [
    ("B, because it is larger than A.", "B"), ("Thus, C is correct.", "C"), ("(D) is the right answer", "D"),
    ("A is not correct; B is correct.", "B"), ("C is incorrect.", None),
])
def test_item4_letters_without_an_option_list(response, expected):
    item = EvalItem("mmstar", "1", "q A: x B: y C: z D: w", answer=expected or "A", multiple_choice=True)
    assert score_mmstar(item, response) == (expected, expected is not None)


def test_item4_mathvision_reads_text_wrapped_and_symbolic_answers():
    assert score_mathvision(EvalItem("mathvision", "1", "q", answer="5"), r"so \boxed{\text{5}}") == ("{5}", True)
    assert score_mathvision(EvalItem("mathvision", "2", "q", answer="6.28"), r"\boxed{2\pi}")[1]
    assert score_mathvision(EvalItem("mathvision", "3", "q", answer="2\\pi"), "The answer is 6.28")[1]
    assert score_mathvision(EvalItem("mathvision", "4", "q", answer=r"\frac{\sqrt{3}}{2}"), r"\boxed{0.866}")[1]
    assert not score_mathvision(EvalItem("mathvision", "5", "q", answer="6.28"), r"\boxed{2\pi + 1}")[1]
    assert mathvision_equal("4\\sqrt{3}+2", "8.93") and mathvision_equal("10^{3}", "1000")


@pytest.mark.parametrize("text, value", [
    (r"2\pi", 6.283185307179586), (r"\frac{\sqrt{3}}{2}", 0.8660254037844386), (r"4\sqrt{3}+2", 4 * 3**0.5 + 2),
    ("10^{3}", 1000.0), (r"\frac12", 0.5), ("-2^2", -4.0), ("2(3+1)", 8.0), (r"\sqrt[3]{-8}", -2.0),
    (r"3\times 4 \div 2", 6.0), ("60^\\circ", 60.0), ("{5}", 5.0), ("2 3", None), (r"\sqrt{-1}", None), ("1/0", None),
    ("9^{9999}", None), ("x+1", None), (r"\sin 30", None), ("__import__('os')", None), ("(" * 5000, None), ("", None),
])
def test_latex_arithmetic_by_hand(text, value):
    assert latex_value(text) == (pytest.approx(value) if value is not None else None)


def test_latex_expressions_in_variables():
    assert latex_value("2x+1", {"x": 2.0}) == 5.0
    assert same_expression("2x+1", "1+2x") and same_expression("x^2", "x*x")
    assert same_expression("2x", "3x") is False and same_expression("x+1", "y+1") is None


def test_mmstar_headline_is_the_l2_category_mean_lmms_eval_and_the_paper_report():
    records = [{"correct": c, "meta": {"category": "a", "l2_category": l2}} for c, l2 in
               [(True, "x"), (True, "x"), (True, "x"), (False, "y")]]
    metrics = aggregate_mmstar(records)
    assert BENCHMARKS["mmstar"].metric == "l2_category_average"
    assert metrics["l2_category_average"] == 50.0 and metrics["overall"] == 75.0 and metrics["category_average"] == 75.0


def test_direct_generation_caps_are_lmms_evals_and_thinking_keeps_a_long_one():
    caps = {name: max_new_tokens(name, "direct") for name in BENCHMARKS}
    assert caps["mmmu"] == caps["ai2d"] == 16 and caps["mmmu_pro"] == 256 and caps["mmstar"] == 128
    assert caps["mathvista"] == caps["mathvision"] == caps["mmbench"] == 1024 and caps["mathverse"] == 16384
    assert {max_new_tokens(name, "thinking") for name in BENCHMARKS} == {1024}


# ---- MM-Math: the authors' scorer, by hand


@pytest.mark.parametrize("gold, pred, expected", [
    ("6", "6.0", True), ("6", "6.009", True), ("6", "6.02", False), ("50", "0.5", True),  # percent either way
    (r"2\sqrt{3}", r"\sqrt{12}", True), (r"2\pi", "6.28", True), ("x=3", "3", True), (r"60^\circ", "60", True),
    ("12cm", "12", True), ("y=2x+1", "2x+1=y", True), ("y=2x+1", "2y=4x+2", True), ("y=2x+1", "y=2x+2", False),
    ("2x+1", "1+2x", True), ("x+1", "y+1", False), ("(1,3)", "(1, 3)", True), ("[1,3)", "(1,3)", False),
    ("1,2", "2,1", True), ("1,2", "1", False), (r"\pm 2", "2,-2", True), ("1<x<3", "(1,3)", True), ("5", "e5", False),
])
def test_mm_math_equality(gold, pred, expected):
    assert mm_math_equal(gold, pred) is expected


def test_mm_math_reads_boxes_and_the_answer_tag():
    assert all_boxed(r"so \boxed{1} and \boxed{\frac{1}{2}}.") == r"1,\frac{1}{2}"
    assert all_boxed(r"\boxed{1") is None and all_boxed("none") is None
    assert mm_math_extract(r"Thus \boxed{4\sqrt{3}}") == r"4\sqrt{3}"
    assert mm_math_extract("<think>x</think><answer>4</answer>") == "4"  # the thinking prompt's box
    assert mm_math_extract("The answer is 4") is None  # no box: wrong, as the authors' scorer
    item = EvalItem("mm_math", "0", "q", answer=r"1,\frac{1}{2}", meta={"difficulty": "容易", "grade": "七年级上学期"})
    assert score_mm_math(item, r"\boxed{0.5} \boxed{1}") == (r"0.5,1", True)
    assert score_mm_math(EvalItem("mm_math", "1", "q", answer=""), r"\boxed{}")[1] is False
