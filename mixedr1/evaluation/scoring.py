"""Answer extraction and scoring for the evaluation benchmarks (EVAL.md): pure functions on strings.

Each benchmark has an item scorer `score_<name>(item, response) -> (extracted, correct)` and an
aggregate `aggregate_<name>(records) -> metrics` (percentages in [0, 100]); `records` are the
per-item dicts eval.py writes (`correct`, `meta`, ...), so a results file can be re-scored offline.
MathVista's, MathVerse's and MMBench's scorers also take `extraction=`: an answer already read from
the response by the local extractor model (`evaluation.extractor`), in place of the rule-based reading.

Where the answer is read from. With the thinking prompt (docs/method.md §2) the model writes
`<think>…</think><answer>…</answer>`; every scorer first takes the `<answer>` content when present
(`answer_region`), so the reasoning's intermediate letters and numbers are never read as the
answer. Without tags (the `direct` prompt) the whole response is the region.

The reference scorers are lmms-eval's (v0.3, which the paper used) and, for MM-IQ, M3CoT and
MM-Math, the dataset authors'. Departures, each on purpose, with what it moves:

- **MathVista** is usually scored by a GPT extractor; here it is rule-based (`<answer>`, else the last
  `\\boxed{}`, else the last number; letter → choice text; else the nearest choice by edit distance;
  numbers rounded to the item's `precision`), under the metric name `mathvista_rule_based`, or read
  by a local model (`--extractor llm`, `evaluation.extractor`). lmms-eval's `round(x, precision)`
  gets a float `precision` and raises, so it counts every float item wrong; here they are rounded
  correctly: our MathVista is higher by the model's accuracy on the float items, ≈2 points.
- **MathVision**'s reference compares with `latex2sympy` + `eval`; here numbers and LaTeX arithmetic
  (`\\frac`, `\\sqrt`, `\\pi`, `^`, implicit products: `latex_arithmetic`) are read by hand, never
  evaluated, and compared at 2 decimals; anything else must match as normalised text.
- **MMBench**: lmms-eval reads a letter by rule, else asks GPT, and after three failed GPT calls
  (always, without an API key) takes a random letter. Here an unreadable answer is wrong (or is read
  by the local model with `--extractor llm`); no random letter. With the direct prompt (bare letters)
  this moves nothing.
- **MMMU**'s official parser falls back to `random.choice` on a global RNG seeded once; here the RNG
  is seeded per item (`seed`, item id), so the fallback does not depend on item order, batch size
  or the number of ranks. When neither side guesses, the two agree exactly.
- **MMStar**: the headline is lmms-eval's (the paper's): the mean of the 18 `l2_category`
  accuracies; MMStar's own overall accuracy (= the 6-category mean) is reported beside it. lmms-eval
  v0.3's `exact_match` looks only at the first characters of the response; here the letter is
  extracted like MMBench's (`extract_choice_letter`): the same on bare letters.
- **AI2D** and **MMMU-Pro vision**: lmms-eval accepts a response opening with `X.` (AI2D) or equal
  to the letter; here the letter is extracted (`extract_choice_letter`): the same on bare letters,
  which the direct prompt's 16 / 256-token caps make the rule.
- **MathVerse** (optional) is usually GPT-judged; here multi-choice letters and MathVision's
  free-form comparison, under the metric name `mathverse_rule_based` (the extraction step can be the
  local model's; the GPT judge step is never run).
- **MM-Math** (optional): the authors' scorer (boxed answers, sympy equality at 1e-2) with
  `latex_arithmetic` in place of sympy; with the thinking prompt an `<answer>` without a box counts as
  the box (the authors' scorer would count it wrong).

Model output and dataset text are untrusted: nothing here evaluates them (`ast.literal_eval` only
reads literals), and no response makes a scorer raise.
"""

from __future__ import annotations

import ast
import math
import random
import re
import string
from collections import defaultdict
from typing import Any, Iterable, Optional, Sequence

from mixedr1.evaluation.latex_arithmetic import latex_value, latex_variables, same_expression
from mixedr1.rewards.answer import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, extract_answer
from mixedr1.rewards.matching import normalize_text, parse_choice

Record = dict  # one per-item record of the results file: {"correct": bool, "meta": {...}, ...}

MAX_RESPONSE_CHARS = 100_000  # longer responses are cut (from the front) before any regex runs

# ----------------------------------------------------------------------------------------------
# Where the answer is


def answer_region(response: str) -> str:
    """The text that holds the answer: the last `<answer>…</answer>`; an unclosed `<answer>` (cut by
    `max_new_tokens`) gives what follows it; else the text after the last `</think>` when there is
    any; else the whole response (stripped)."""
    if not isinstance(response, str):
        return ""
    response = response[-MAX_RESPONSE_CHARS:]
    tagged = extract_answer(response)
    if tagged is not None:
        return tagged
    if ANSWER_OPEN in response:
        return response.rsplit(ANSWER_OPEN, 1)[1].replace(ANSWER_CLOSE, "").strip()
    if THINK_CLOSE in response:
        tail = response.rsplit(THINK_CLOSE, 1)[1].strip()
        if tail:
            return tail
    return response.strip()


def last_boxed(text: str) -> Optional[str]:
    """Content of the last `\\boxed{…}` (or `\\fbox{…}`) whose braces balance; nested braces are kept
    (`\\boxed{\\frac{1}{2}}` → `\\frac{1}{2}`). None when there is none."""
    if not isinstance(text, str):
        return None
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    # Every "{" matched to its "}" in one pass (scanning forward from each unclosed box instead is
    # quadratic: a 100 KB response of unclosed boxes took minutes).
    closing, open_braces = {}, []
    for i, char in enumerate(text):
        if char == "{":
            open_braces.append(i)
        elif char == "}" and open_braces:
            closing[open_braces.pop()] = i
    for start in reversed(starts):
        if start - 1 in closing:
            return text[start : closing[start - 1]].strip()
    return None


# ----------------------------------------------------------------------------------------------
# Letters (MMBench, MMStar, AI2D, MathVista multi-choice)

_MARKDOWN = re.compile(r"\*\*|__|`|\*")
# "The answer is B", "Answer: (C) text", "the correct option is B.", "[Answer] B". The keyword is
# case-insensitive, the letter is not (so "the answer is a square" is not read as "A").
_LETTER_AFTER_KEYWORD = re.compile(
    r"(?i:\b(?:answer|option|choice)\b(?:\s+(?:is|would\s+be|should\s+be|will\s+be))?)"
    r"\]?\s*[:：]?\s*(?:option\s+)?\(?([A-Z])\)?(?![A-Za-z0-9])"
)
# "Thus, C is correct.", "(B) is the right answer".
_LETTER_IS_CORRECT = re.compile(
    r"(?<![A-Za-z0-9])\(?([A-Z])\)?\s+(?i:is\s+(?:the\s+)?(?:correct|right|best)(?:\s+(?:answer|option|choice))?)\b"
)
_BRACKETED_LETTER = re.compile(r"\(([A-Z])\)")
_LEADING_LETTER = re.compile(r"\A\s*\(?([A-Z])\)?\s*,(?=\s)")  # "B, because …"
_LINE_START_LETTER = re.compile(r"(?m)^\s*([A-Z])\s*[.):](?=\s|$)")
_TRAILING_LETTER = re.compile(r"(?:^|[\s(:])([A-Z])\)?[.!]?\s*$")


def _contains_phrase(haystack: str, needle: str) -> bool:
    """`needle` occurs in `haystack` as whole words (both already `normalize_text`-ed)."""
    return bool(needle) and f" {needle} " in f" {haystack} "


def option_text_choice(text: str, options: Sequence[str]) -> Optional[str]:
    """The letter of the one option whose text the response contains (whole words, normalised), or
    None when no option or several unrelated options are named. An option contained in another named
    option ("red" in "dark red") yields to the longer one."""
    key = normalize_text(text)
    named = [i for i, option in enumerate(options) if _contains_phrase(key, normalize_text(option))]
    named = [
        i
        for i in named
        if not any(j != i and _contains_phrase(normalize_text(options[j]), normalize_text(options[i])) for j in named)
    ]
    return string.ascii_uppercase[named[0]] if len(named) == 1 else None


def extract_choice_letter(text: str, letters: str, options: Optional[Sequence[str]] = None) -> Optional[str]:
    """The option letter a response names, or None. Tried in order, the first hit wins:

    1. the last `\\boxed{}` (if any) replaces the text; markdown emphasis is dropped;
    2. the whole text is a letter spelling: `B`, `(B)`, `B.`, `B)`, `B:` (optionally followed by THAT
       option's own text), or exactly one option's text (`rewards.matching.parse_choice`);
    3. the conclusion: the last letter after "answer" / "option" / "choice" ("The answer is B",
       "Answer: (C) text") or before "is correct" ("Thus, C is correct."), whichever comes last;
    4. the last bracketed letter `(B)`; 5. the last letter opening a line (`B.`, `B)`);
    6. a letter opening the text before a comma ("B, because …"); 7. a letter ending the text
       ("so it is B."); 8. one option's text named in the response.

    So a letter that opens the response and is followed by other text ("(A) red does not match …
    Therefore, the answer is C.") never beats a stated conclusion. `letters` are the valid letters
    ("ABCD"); anything else is ignored.
    """
    if not isinstance(text, str):
        return None
    text = _MARKDOWN.sub("", text[-MAX_RESPONSE_CHARS:])
    boxed = last_boxed(text)
    if boxed is not None:
        text = boxed
    text = text.strip()
    whole = parse_choice(text, list(options) if options else None)
    if whole is not None and whole in letters:
        return whole
    conclusions = [
        (m.start(), m.group(1))
        for pattern in (_LETTER_AFTER_KEYWORD, _LETTER_IS_CORRECT)
        for m in pattern.finditer(text)
        if m.group(1) in letters
    ]
    if conclusions:
        return max(conclusions)[1]
    for pattern in (_BRACKETED_LETTER, _LINE_START_LETTER, _LEADING_LETTER, _TRAILING_LETTER):
        hits = [m.group(1) for m in pattern.finditer(text) if m.group(1) in letters]
        if hits:
            return hits[-1]
    if options:
        return option_text_choice(text, options)
    return None


def letters_for(n_options: int) -> str:
    return string.ascii_uppercase[:n_options]


# ----------------------------------------------------------------------------------------------
# Numbers

_NUMBER = re.compile(r"[-+−]?(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+−]?\.\d+")
_TEXT_COMMAND = re.compile(r"\\(?:text|mathrm|mathbf|rm|textbf)\s*\{([^{}]*)\}")  # `\text{5}` → `5`
_PLAIN_NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def plain_float(text: str) -> Optional[float]:
    """A number written plainly ("3", "-2.50", "1,234", "1e-3"), or None. Non-finite values are None."""
    if not isinstance(text, str) or len(text) > 100:
        return None
    token = text.strip().replace("−", "-")
    # A mantissa is required: "e5" and "E2" (what "(E) 5" and "<answer>E2</answer>" become) are no numbers.
    if not _PLAIN_NUMBER.fullmatch(token):
        return None
    try:
        value = float(token.replace(",", ""))
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def to_number(text: str) -> Optional[float]:
    """A plain number, a percentage, or LaTeX arithmetic (`\\frac{3}{4}`, `3/4`, `2\\sqrt{3}`, `2\\pi`,
    `\\text{5}`, `{5}`; `latex_arithmetic.latex_value`), as a finite float; None for anything else.
    Parsed by hand: nothing is evaluated."""
    if not isinstance(text, str) or len(text) > 1000:
        return None
    text = text.strip().replace(" ", "").replace("\\%", "").rstrip("%").replace("$", "")
    value = plain_float(text)
    if value is not None:
        return value
    return latex_value(_TEXT_COMMAND.sub(r"\1", text))


def last_number(text: str) -> Optional[float]:
    """The last number written in `text` ("The answer is 3.5 cm" → 3.5; "1,234" → 1234), or None."""
    if not isinstance(text, str):
        return None
    found = _NUMBER.findall(text[-MAX_RESPONSE_CHARS:])
    for token in reversed(found):
        value = plain_float(token.replace("−", "-"))
        if value is not None:
            return value
    return None


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute: cost 1), as MathVista's `get_most_similar` uses."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


# ----------------------------------------------------------------------------------------------
# MathVista (rule-based)


def mathvista_extract(
    response: str, question_type: str, answer_type: str, choices: Sequence[str], precision: Optional[float]
) -> Optional[str]:
    """The normalised prediction MathVista compares with its `answer` (a string), or None.

    Extraction: `<answer>` content, else the last `\\boxed{}`, else (free form) the last number.
    Normalisation (lmms-eval `normalize_extracted_answer`): multi_choice → the choice TEXT (a letter
    is mapped to its choice; otherwise the choice nearest by edit distance); integer →
    `str(int(x))`; float → `str(round(x, precision))`; list → the text as written.
    """
    region = answer_region(response)
    boxed = last_boxed(region)
    if boxed is not None:
        region = boxed
    return mathvista_normalize(region, question_type, answer_type, choices, precision)


def mathvista_normalize(
    extraction: str, question_type: str, answer_type: str, choices: Sequence[str], precision: Optional[float]
) -> Optional[str]:
    """An extracted answer (the rule-based one, or a local LLM's: `evaluation.extractor`) in the form
    MathVista's `answer` is written, or None (lmms-eval `normalize_extracted_answer`, see
    `mathvista_extract`). Float answers are rounded to the item's precision, which lmms-eval means to
    do but cannot (`round(x, 1.0)` raises there, so every float item counts wrong)."""
    region = extraction.strip() if isinstance(extraction, str) else ""
    if question_type == "multi_choice":
        if not choices:
            return None
        if region in choices:
            return region
        letter = extract_choice_letter(region, letters_for(len(choices)), choices)
        if letter is not None:
            return choices[string.ascii_uppercase.index(letter)]
        probe = region[-1000:]  # the distance is quadratic; the answer is at the end of a long text
        distances = [edit_distance(probe, choice) for choice in choices]
        return choices[distances.index(min(distances))]
    if answer_type in ("integer", "float"):
        value = to_number(region.rstrip("."))
        if value is None:
            value = last_number(region)
        if value is None:
            return None
        if answer_type == "integer":
            return str(int(value))
        digits = int(precision) if isinstance(precision, (int, float)) and math.isfinite(precision) else 2
        return str(round(value, digits))
    return region or None


def score_mathvista(item, response: str, extraction: Optional[str] = None) -> tuple[Optional[str], bool]:
    """`extraction`: an answer already extracted from `response` (the local LLM extractor's); None =
    the rule-based extraction."""
    meta = item.meta
    args = (meta["question_type"], meta["answer_type"], item.options, meta.get("precision"))
    extracted = mathvista_extract(response, *args) if extraction is None else mathvista_normalize(extraction, *args)
    return extracted, extracted is not None and extracted.strip() == str(item.answer).strip()


# ----------------------------------------------------------------------------------------------
# MathVision (lmms-eval `mathvision_process_results`, without latex2sympy / eval)

_ANSWER_PHRASES = ("the final answer is", "the answer is", "the correct answer is", "the answer should be")


def _strip_math_string(s: str) -> str:
    """MathVision's `_strip_string`: drop LaTeX spacing, `\\left`/`\\right`, degrees, dollars, units
    after `\\text{ `, percent signs; keep what follows a single `=` or `\\approx`; `0.5` → `\\frac{1}{2}`;
    `a/b` → `\\frac{a}{b}`."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "").replace("$", "")
    s = s.split("\\text{ ")[0]
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if len(s.split("=")) == 2:
        s = s.split("=")[-1]
    if len(s.split("\\approx")) == 2:
        s = s.split("\\approx")[-1]
    s = s.replace(" ", "")
    if s == "0.5":
        s = "\\frac{1}{2}"
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m:
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    return s


def _find_math_answer(s: str) -> str:
    """MathVision's `find_math_answer`: the last `\\boxed{}` (else the text), after `=` / `\\approx`,
    with LaTeX formatting and a few units removed."""
    s = s.lower().replace("{}", "")
    boxed = last_boxed(s)
    ans = boxed if boxed is not None else s
    if "}" in ans and ("{" not in ans or ans.find("}") < ans.find("{")):
        ans = ans.split("}")[0]
    ans = ans.split("=")[-1].split("\\approx")[-1]
    for old, new in (
        (" ", ""), ("\\,", ""), ("∞", "\\infty"), ("+\\infty", "\\infty"), ("\\\\", "\\"), ("\n", ""),
        ("\\text", ""), ("\\mbox", ""), ("bmatrix", "pmatrix"), ("\\left", ""), ("\\right", ""),
        ("^{\\circ}", ""), ("^\\circ", ""), ("{m}^3", ""), ("m^3", ""), ("{units}", ""), ("units", ""),
        ("{km}", ""), ("km", ""),
    ):
        ans = ans.replace(old, new)
    return _strip_math_string(ans)


def mathvision_extract(response: str) -> str:
    """The answer string MathVision compares (lowercase, normalised), following lmms-eval's steps:
    a letter at the start/end ("… is C.", "(C)\\n…"), the number after the last "is ", the text after
    "the answer is"-style phrases (first line, first sentence) when there is no `\\boxed{}`, then
    `_find_math_answer`."""
    answer = answer_region(response).strip()
    for c in "ABCDE":
        if (
            answer.endswith(f" {c}.")
            or answer.endswith(f" ({c}).")
            or answer.startswith(f"{c}\n")
            or answer.startswith(f"({c})\n")
            or answer.startswith(f"({c}) {c}\n")
        ):
            answer = c
    after_is = answer.split("is ")[-1].rstrip(".")
    if plain_float(after_is) is not None:
        answer = after_is
    if "oxed{" not in answer:
        for phrase in _ANSWER_PHRASES:
            for flag in (phrase, phrase.replace("the", "The")):
                if flag in answer:
                    answer = answer.split(flag)[-1].strip().split("\n")[0].split(". ")[0]
    answer = _find_math_answer(answer)
    for letter in "abcde":
        answer = answer.replace(f"({letter})", letter).replace(f"{{{letter}}}", letter)
    return answer.rstrip(".").lstrip(":").strip()


def _numbers_of_tuple(s: str) -> Optional[str]:
    """`(a,b,…)` / `[a,b,…]` with every element a number → the elements rounded to 2 decimals."""
    if len(s) < 2 or (s[0], s[-1]) not in (("(", ")"), ("[", "]")):
        return None
    parts = s[1:-1].split(",")
    if len(parts) < 2:
        return None
    values = [to_number(p) for p in parts]
    if any(v is None for v in values):
        return None
    return s[0] + ",".join(str(round(v, 2)) for v in values) + s[-1]


def mathvision_equal(prediction: str, truth: str) -> bool:
    """MathVision's `is_equal`: case-insensitive text equality, tuples compared element-wise, else both
    read as numbers and compared at 2 decimals. Empty strings never match."""
    if not isinstance(prediction, str) or not isinstance(truth, str):
        return False
    pred, gold = prediction.lower().strip(), truth.lower().strip()
    if not pred.replace(" ", "") or not gold.replace(" ", ""):
        return False
    if pred == gold:
        return True
    pred_tuple, gold_tuple = _numbers_of_tuple(pred), _numbers_of_tuple(gold)
    if pred_tuple is not None and pred_tuple == gold_tuple:
        return True
    pred_value, gold_value = to_number(_strip_math_string(pred)), to_number(_strip_math_string(gold))
    return pred_value is not None and gold_value is not None and round(pred_value, 2) == round(gold_value, 2)


def score_mathvision(item, response: str) -> tuple[Optional[str], bool]:
    """Correct when the extraction equals the answer (a letter or a value) or, for multi-choice, the
    text of the answer's option."""
    extracted = mathvision_extract(response)
    truth = str(item.answer)
    option_text = ""
    if item.options and len(truth) == 1 and truth.upper() in letters_for(len(item.options)):
        option_text = item.options[string.ascii_uppercase.index(truth.upper())]
    correct = mathvision_equal(extracted, truth) or mathvision_equal(extracted, option_text)
    return extracted, correct


# ----------------------------------------------------------------------------------------------
# MMBench, MMStar, AI2D: letters


def score_letter(item, response: str) -> tuple[Optional[str], bool]:
    """Multiple choice with a letter answer: the extracted letter must equal `item.answer`.
    MMStar keeps its options inside the question (`item.options` empty), so its letters are A–D."""
    letters = letters_for(len(item.options)) if item.options else "ABCD"
    letter = extract_choice_letter(answer_region(response), letters, item.options or None)
    return letter, letter is not None and letter == str(item.answer).strip().upper()


def score_mmbench(item, response: str, extraction: Optional[str] = None) -> tuple[Optional[str], bool]:
    """`extraction`: the letter the local LLM extractor matched the response to (`evaluation.extractor`;
    "E" or a letter past the options = none of them); None = the rule-based extraction."""
    if extraction is None:
        return score_letter(item, response)
    return extraction, extraction == str(item.answer).strip().upper()


score_mmstar = score_letter
score_ai2d = score_letter


# ----------------------------------------------------------------------------------------------
# MMMU (the official parser, MMMU-Benchmark/MMMU eval/eval_utils.py, as lmms-eval runs it)


def parse_options_literal(text: Any, where: str = "options") -> list[str]:
    """MMMU stores `options` as a string holding a Python list ("['1', '2']"). Read it with
    `ast.literal_eval` (literals only, never code) and check it is a list of strings; anything else is
    a `ValueError` naming `where` and what was expected."""
    if isinstance(text, (list, tuple)):
        value = list(text)
    else:
        if not isinstance(text, str):
            raise ValueError(f"{where}: expected a string holding a Python list of option strings, got {type(text).__name__}")
        if len(text) > 100_000:
            raise ValueError(f"{where}: options string is {len(text)} characters long; expected a short Python list literal")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
            raise ValueError(
                f"{where}: options is not a Python list literal of strings ({type(e).__name__}: {e}); got {text[:200]!r}"
            ) from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ValueError(f"{where}: expected a list of option strings such as \"['1', '2']\", got {str(text)[:200]!r}")
    return [str(v) for v in value]


def mmmu_rng(seed: int, item_id: str) -> random.Random:
    """The fallback RNG of one item: the same (seed, item) always gives the same random choice."""
    return random.Random(f"mmmu:{seed}:{item_id}")


def mmmu_parse_multi_choice(response: str, all_choices: Sequence[str], index2ans: dict, rng: random.Random) -> str:
    """The official `parse_multi_choice_response`: candidates `(A)`, else `A ` (space after), else
    `A.`, else (responses of more than 5 words) option texts; several candidates → the one occurring
    LAST; none → `rng.choice(all_choices)`."""
    for char in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(char)
    response = " " + response + " "  # spaces around so " A " at the ends matches too
    index_ans, with_brackets = True, False
    candidates = [c for c in all_choices if f"({c})" in response]
    if candidates:
        with_brackets = True
    if not candidates:
        candidates = [c for c in all_choices if f"{c} " in response]
    if not candidates:
        candidates = [c for c in all_choices if f"{c}." in response]
    if not candidates and len(response.split()) > 5:
        candidates = [c for c, ans in index2ans.items() if ans.lower() in response.lower()]
        index_ans = not candidates
    if not candidates:
        return rng.choice(list(all_choices))
    if len(candidates) == 1:
        return candidates[0]
    if index_ans:
        spelled = "({})" if with_brackets else " {} "
        starts = [response.rfind(spelled.format(c)) for c in candidates]
    else:
        starts = [response.lower().rfind(index2ans[c].lower()) for c in candidates]
    return candidates[max(range(len(starts)), key=lambda i: (starts[i], -i))]


def mmmu_extract_numbers(text: str) -> list[str]:
    """Numbers with thousands commas, in scientific notation, and plain (the official three patterns).
    `(?<!\\d)` added before each leading `\\d+`: the same matches (a match can only start where a digit
    run starts, as findall tries that position first), but linear time: the official patterns retry
    every position inside a digit run, 73 s on a run of 50,000 digits."""
    with_commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", text)
    scientific = re.findall(r"-?(?<!\d)\d+(?:\.\d+)?[eE][+-]?\d+", text)
    simple = re.findall(r"-?(?:(?<!\d)\d+\.\d+|\.\d+|(?<!\d)\d+\b)(?![eE][+-]?\d+)(?![,\d])", text)
    return with_commas + scientific + simple


def mmmu_normalize(text: str) -> list:
    """A number (commas removed) → [its value rounded to 2 decimals]; text → [lower case], a single
    character padded with a space on either side to avoid trivial containment."""
    text = text.strip()
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        value = None
    if value is not None and math.isfinite(value):
        return [round(value, 2)]
    text = text.lower()
    if len(text) == 1:
        return [" " + text, text + " "]
    return [text]


_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")


def mmmu_parse_open(response: str) -> list:
    """The official `parse_open_response`: for each sentence / line, the shortest tail after a key
    phrase ("is ", "therefore ", "answer ", …; "=" in the last one); plus every number in them;
    all normalised (`mmmu_normalize`)."""
    text = response.strip().strip(".").lower()
    sub_responses = re.split(r"\.\s(?=[A-Z])|\n", text)
    key_responses = []
    for index, sub in enumerate(sub_responses):
        indicators = _KEY_INDICATORS + (("=",) if index == len(sub_responses) - 1 else ())
        shortest = None
        for indicator in indicators:
            if indicator in sub:
                tail = sub.split(indicator)[-1].strip()
                if shortest is None or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in (":", ",", ".", "!", "?", ";", "'"):
            key_responses.append(shortest)
    if not key_responses:
        key_responses = [text]
    predictions = list(key_responses)
    for key in key_responses:
        predictions.extend(mmmu_extract_numbers(key))
    normalized = []
    for p in predictions:
        for value in mmmu_normalize(p):
            if value not in normalized:
                normalized.append(value)
    return normalized


def mmmu_gold_answers(answer: str) -> list[str]:
    """An open answer may be a list written as a string ("['24', '24.0']"); read it safely."""
    text = str(answer).strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return [text]
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
    return [text]


def mmmu_eval_open(gold: Sequence[str], predictions: list) -> bool:
    """The official `eval_open`: a text prediction is right when it CONTAINS a normalised gold text;
    a number when it equals a normalised gold number (2 decimals)."""
    norm_gold = [g for answer in gold for g in mmmu_normalize(answer)]
    for pred in predictions:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in norm_gold):
                return True
        elif pred in norm_gold:
            return True
    return False


def score_mmmu(item, response: str, seed: int = 42) -> tuple[Any, bool]:
    region = answer_region(response)
    if item.meta.get("question_type") == "multiple-choice":
        if not item.options:
            return None, False  # nothing to choose from (a malformed item); never counted right
        all_choices = list(letters_for(len(item.options)))
        index2ans = dict(zip(all_choices, item.options))
        letter = mmmu_parse_multi_choice(region, all_choices, index2ans, mmmu_rng(seed, item.item_id))
        gold = mmmu_gold_answers(item.answer)
        return letter, letter in gold
    predictions = mmmu_parse_open(region)
    return predictions, mmmu_eval_open(mmmu_gold_answers(item.answer), predictions)


# ----------------------------------------------------------------------------------------------
# AI2D's answer: an index


def ai2d_letter(answer: Any, n_options: int) -> Optional[str]:
    """AI2D's `answer` is the option index as a string ("0"–"3") → its letter; None if it is not one."""
    text = str(answer).strip()
    if not text.isdigit() or not 0 <= int(text) < n_options:
        return None
    return string.ascii_uppercase[int(text)]


# ----------------------------------------------------------------------------------------------
# Aggregates: records → metrics (percent)


def _percent(hits: Iterable[bool]) -> float:
    hits = list(hits)
    return 100.0 * sum(bool(h) for h in hits) / len(hits) if hits else 0.0


def aggregate_accuracy(records: Sequence[Record]) -> dict:
    return {"accuracy": _percent(r["correct"] for r in records), "n": len(records)}


def aggregate_mathvista(records: Sequence[Record]) -> dict:
    """Rule-based accuracy, under a name that says so (not the GPT-extracted protocol)."""
    return {"mathvista_rule_based": _percent(r["correct"] for r in records), "n": len(records)}


MMBENCH_CIRCULAR_BASE = 1_000_000


def aggregate_mmbench(records: Sequence[Record]) -> dict:
    """Circular accuracy: rows with `index` ≥ 1e6 are rotations of question `index % 1e6`; a question
    counts only when ALL its rows present are right. Per-row accuracy (higher) is reported beside it."""
    questions: dict[int, list[bool]] = defaultdict(list)
    for r in records:
        questions[int(r["meta"]["index"]) % MMBENCH_CIRCULAR_BASE].append(bool(r["correct"]))
    return {
        "circular_accuracy": _percent(all(v) for v in questions.values()),
        "per_row_accuracy": _percent(r["correct"] for r in records),
        "questions": len(questions),
        "rows": len(records),
    }


def aggregate_mmstar(records: Sequence[Record]) -> dict:
    """The headline is lmms-eval's "average", the mean of the 18 per-`l2_category` accuracies: the
    number the paper reports. Beside it: the mean of the 6 per-`category` accuracies and the overall
    per-item accuracy (MMStar's own metric; the two are equal on the full set, 250 items per category)."""
    by_category: dict[str, list[bool]] = defaultdict(list)
    by_l2: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        by_category[str(r["meta"]["category"])].append(bool(r["correct"]))
        by_l2[str(r["meta"].get("l2_category"))].append(bool(r["correct"]))
    per_category = {k: _percent(v) for k, v in sorted(by_category.items())}
    per_l2 = {k: _percent(v) for k, v in sorted(by_l2.items())}
    return {
        "category_average": sum(per_category.values()) / len(per_category) if per_category else 0.0,
        "overall": _percent(r["correct"] for r in records),
        "l2_category_average": sum(per_l2.values()) / len(per_l2) if per_l2 else 0.0,
        "per_category": per_category,
        "per_l2_category": per_l2,
        "n": len(records),
    }


def aggregate_mmmu(records: Sequence[Record]) -> dict:
    by_type: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        by_type[str(r["meta"].get("question_type"))].append(bool(r["correct"]))
    return {
        "accuracy": _percent(r["correct"] for r in records),
        "per_question_type": {k: _percent(v) for k, v in sorted(by_type.items())},
        "n": len(records),
    }


# ----------------------------------------------------------------------------------------------
# Optional benchmarks (EVAL.md): MathVerse, MMMU-Pro, MM-IQ, M3CoT


def score_mathverse(item, response: str, extraction: Optional[str] = None) -> tuple[Optional[str], bool]:
    """MathVerse, rule-based (the usual protocol is a GPT judge): multi-choice by letter, free-form
    with MathVision's normalisation and 2-decimal numeric equality. `extraction`: the answer the local
    LLM extractor read from the response (`evaluation.extractor`), compared by the same rules; None =
    the rule-based extraction from the whole response."""
    text = response if extraction is None else extraction
    if item.multiple_choice:
        letter = extract_choice_letter(answer_region(text), "ABCDEF")
        return letter, letter is not None and letter == str(item.answer).strip().upper()
    extracted = mathvision_extract(text)
    return extracted, mathvision_equal(extracted, str(item.answer))


def score_mmmu_pro(item, response: str, seed: int = 42) -> tuple[Any, bool]:
    """MMMU-Pro: the standard setting with the MMMU parser; the vision setting (question and options
    only inside the screenshot, so `item.options` is empty and the texts are in `meta["options"]`)
    by the extracted letter, exactly (lmms-eval compares the whole response with the letter; a model
    that answers "B" scores the same either way)."""
    if item.meta.get("setting") == "standard":
        return score_mmmu(item, response, seed)
    options = list(item.meta.get("options") or item.options)
    letter = extract_choice_letter(answer_region(response), letters_for(max(len(options), 1)), options or None)
    return letter, letter is not None and letter == str(item.answer).strip().upper()


_MMIQ_PHRASE = re.compile(
    r"(?i:(?:the\s+)?(?:correct\s+|final\s+)?answer\s+(?:is|should\s+be)|answer\s*:)\s*[:：]?\s*\(?([A-E])\)?(?![A-Za-z0-9])"
)
_STANDALONE_LETTER = re.compile(r"(?<![A-Za-z0-9])([A-E])(?![A-Za-z0-9])")


def mmiq_extract(response: str) -> Optional[str]:
    """MM-IQ's rule: the letter after "the answer is"-style phrases, else the last standalone capital
    letter A–E of the response."""
    region = answer_region(response)
    hits = _MMIQ_PHRASE.findall(region)
    if hits:
        return hits[-1]
    letters = _STANDALONE_LETTER.findall(region)
    return letters[-1] if letters else None


def score_mmiq(item, response: str) -> tuple[Optional[str], bool]:
    letter = mmiq_extract(response)
    return letter, letter is not None and letter == str(item.answer).strip().upper()


def score_m3cot(item, response: str) -> tuple[Optional[str], bool]:
    """M3CoT: the letter after "[Answer]" / "answer is", the last `(X)`, one choice's text, or a
    standalone letter (`extract_choice_letter` covers these, in that order)."""
    letter = extract_choice_letter(answer_region(response), letters_for(len(item.options)), item.options)
    return letter, letter is not None and letter == str(item.answer).strip().upper()


def _accuracy_by(records: Sequence[Record], key: str) -> dict:
    groups: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        groups[str(r["meta"].get(key))].append(bool(r["correct"]))
    return {k: _percent(v) for k, v in sorted(groups.items())}


def aggregate_mathverse(records: Sequence[Record]) -> dict:
    return {
        "mathverse_rule_based": _percent(r["correct"] for r in records),
        "per_problem_version": _accuracy_by(records, "problem_version"),
        "n": len(records),
    }


def aggregate_mmmu_pro(records: Sequence[Record]) -> dict:
    """The mean of the standard (10 options) and vision accuracies (each over its own items)."""
    per_setting = _accuracy_by(records, "setting")
    return {
        "mean_standard_vision": sum(per_setting.values()) / len(per_setting) if per_setting else 0.0,
        "per_setting": per_setting,
        "n": len(records),
    }


def aggregate_by_category(key: str):
    """Accuracy and the per-`key` accuracies (MM-IQ: category; M3CoT: domain)."""

    def aggregate(records: Sequence[Record]) -> dict:
        return {"accuracy": _percent(r["correct"] for r in records), f"per_{key}": _accuracy_by(records, key), "n": len(records)}

    return aggregate


# ----------------------------------------------------------------------------------------------
# MM-Math (the dataset authors' eval.py, `AutoScoringJudge`, without sympy's parse_latex)

MM_MATH_PRECISION = 1e-2  # the authors' default `--precision`
_BOXED_OPEN = re.compile(r"\\boxed\s*\{")


def all_boxed(text: str) -> Optional[str]:
    """Every balanced `\\boxed{…}` of `text`, in order, joined by "," (MM-Math reads a multi-part
    answer from several boxes); None when there is none."""
    if not isinstance(text, str):
        return None
    parts, position = [], 0
    while len(parts) < 50:
        match = _BOXED_OPEN.search(text, position)
        if match is None:
            break
        depth, end = 1, match.end()
        while end < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        if depth:
            break  # unbalanced: the authors' scorer gives up on the whole answer
        parts.append(text[match.end() : end - 1].strip())
        position = end
    return ",".join(parts) if parts else None


_MM_MATH_REPLACE = (
    ("\\text{cm}^2", ""), ("\\text{cm}", ""), ("\\,cm", ""), ("\\text{ cm}", ""), ("cm^{2}", ""), ("cm", ""),
    ("\\text{分米}^2", ""), ("\\ \\text{m}", ""), ("\\text{米}", ""), ("厘米", ""), ("\\left", ""), ("\\right", ""),
    ("，", ","), ("$", ""), ("（", "("), ("）", ")"), ("\\colon ", ":"), ("＋", "+"), ("\\, ", ""), ("\\,", ""),
    ("^\\circ", ""), ("^{\\circ}", ""), ("°", ""),
)
_CHINESE = re.compile(r"[\u4e00-\u9fff]+")


def _mm_math_clean(expression: str) -> str:
    """The authors' `preprocess`: units (cm, m, …) and LaTeX sizing removed, full-width punctuation
    made ASCII, what follows `\\in ` kept, `\\mathrm{x}` → `x`, stray punctuation stripped."""
    expression = expression.strip()
    for old, new in _MM_MATH_REPLACE[:9]:
        expression = expression.replace(old, new)
    expression = re.sub(r"(.+)m$", r"\1", expression.strip())
    if "\\in " in expression:
        expression = expression.split("\\in ")[1]
    for old, new in _MM_MATH_REPLACE[9:]:
        expression = expression.replace(old, new)
    expression = expression.strip("\n,.:;^_=+`!@#%^&*~，。 ")
    return re.sub(r"\\(?:mathrm|mathbf|text)\{~?([^}]*)\}", r"\1", expression)


def _split_top_level(expression: str) -> list[str]:
    """Split at commas outside brackets ("(1, 2), 3" → ["(1, 2)", "3"])."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(expression):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    if start < len(expression):
        parts.append(expression[start:].strip())
    return parts


def _mm_math_number_equal(gold: str, pred: str, tolerance: float) -> bool:
    """Both plain numbers, equal within the tolerance, the gold also read as a percentage either way."""
    gold_value, pred_value = plain_float(gold), plain_float(pred)
    if gold_value is None or pred_value is None:
        return False
    return any(abs(g - pred_value) <= tolerance * 1.01 for g in (gold_value / 100, gold_value, gold_value * 100))


def _mm_math_expression_equal(gold: str, pred: str, tolerance: float) -> bool:
    """The value after a first `=` (if any) on each side: constants equal within the tolerance, or the
    same expression in the same variables (three sample points, 1e-3, as the authors' simplify check)."""
    gold = gold.split("=")[1].strip() if "=" in gold else gold.strip()
    pred = pred.split("=")[1].strip() if "=" in pred else pred.strip()
    gold_value, pred_value = latex_value(gold), latex_value(pred)
    if gold_value is not None and pred_value is not None:
        return abs(gold_value - pred_value) <= tolerance * 1.01
    return bool(same_expression(gold, pred, 1e-3))


def _mm_math_equation_equal(gold: str, pred: str) -> bool:
    """Two equations `l = r` are the same when (l1 - r1) / (l2 - r2) is one non-zero integer (either
    way round) at three sample points."""
    if gold.count("=") != 1 or pred.count("=") != 1:
        return False
    gold_side, pred_side = ("({})-({})".format(*gold.split("=")), "({})-({})".format(*pred.split("=")))
    names = latex_variables(gold_side)
    if not names or names != latex_variables(pred_side):
        return False
    ratios = []
    for point in (0.3719, 1.6180, 2.7183):
        values = {name: point + 0.137 * i for i, name in enumerate(sorted(names))}
        a, b = latex_value(gold_side, values), latex_value(pred_side, values)
        if a is None or b is None or a == 0 or b == 0:
            return False
        ratios.append((a / b, b / a))
    for pick in (0, 1):
        first = ratios[0][pick]
        if round(first) != 0 and all(abs(r[pick] - round(first)) < 1e-6 for r in ratios):
            return True
    return False


def _mm_math_interval_equal(gold: str, pred: str, tolerance: float) -> bool:
    """Intervals (unions split at `\\cup`): the same brackets and the same end points."""
    gold_parts, pred_parts = gold.split("\\cup"), pred.split("\\cup")
    if len(gold_parts) != len(pred_parts):
        return False
    for g, p in zip(gold_parts, pred_parts):
        g, p = g.strip(), p.strip()
        if not g or not p or g[0] != p[0] or g[-1] != p[-1]:
            return False
        g_ends, p_ends = g.strip("[]()").split(","), p.strip("[]()").split(",")
        if len(g_ends) != len(p_ends):
            return False
        for a, b in zip(g_ends, p_ends):
            if a.strip() != b.strip() and not _mm_math_expression_equal(a, b, tolerance):
                return False
    return True


def _mm_math_part_equal(gold: str, pred: str, tolerance: float) -> bool:
    if gold == pred and gold:
        return True
    intervals = all(s[:1] in ("(", "[") and s[-1:] in (")", "]") for s in (gold, pred))
    if intervals and _mm_math_interval_equal(gold, pred, tolerance):
        return True
    if _mm_math_number_equal(gold, pred, tolerance):
        return True
    if not ("=" in gold and "=" in pred) and _mm_math_expression_equal(gold, pred, tolerance):
        return True
    return _mm_math_equation_equal(gold, pred)


def mm_math_equal(gold: str, pred: str, tolerance: float = MM_MATH_PRECISION) -> bool:
    """The authors' `judge(gold, pred)` on two boxed answers: cleaned; equal as text, else split at
    top-level commas (`\\pm` giving both signs) and matched one to one, each pair equal as text, as
    intervals, as numbers (tolerance, percent either way), as expressions or as equations."""
    if not isinstance(gold, str) or not isinstance(pred, str) or len(pred) > 2000:
        return False
    gold, pred = _mm_math_clean(gold), _mm_math_clean(pred)
    if gold == pred:
        return bool(gold)
    gold = gold if _CHINESE.fullmatch(gold) else _CHINESE.sub("", gold)
    pred = pred if _CHINESE.fullmatch(pred) else _CHINESE.sub("", pred)
    sides = []
    for expression in (gold, pred):
        if expression.count("<") == 2:  # "1 < x < 3" is the interval (1, 3)
            pieces = expression.split("<")
            expression = f"({pieces[0]}, {pieces[-1]})"
        parts = []
        for part in _split_top_level(expression):
            parts += [part.replace("\\pm", "+"), part.replace("\\pm", "-")] if "\\pm" in part else [part]
        sides.append(parts)
    gold_parts, pred_parts = sides
    if len(gold_parts) != len(pred_parts) or len(gold_parts) > 20:
        return False
    remaining = list(pred_parts)
    for g in gold_parts:
        match = next((i for i, p in enumerate(remaining) if _mm_math_part_equal(g, p, tolerance)), None)
        if match is None:
            return False
        remaining.pop(match)
    return True


def mm_math_extract(response: str) -> Optional[str]:
    """The boxed answer(s) of a response, from its answer region (`answer_region`); with the thinking
    prompt, an `<answer>` without a box counts as the box. None (scored wrong, as the authors' scorer
    does without a box) otherwise."""
    region = answer_region(response)
    boxed = all_boxed(region)
    if boxed is not None:
        return boxed
    if isinstance(response, str) and ANSWER_OPEN in response and region:
        return region
    return None


def score_mm_math(item, response: str) -> tuple[Optional[str], bool]:
    """`item.answer` holds the boxed answer(s) of the reference solution ("" when it has none: never right)."""
    extracted = mm_math_extract(response)
    return extracted, extracted is not None and bool(item.answer) and mm_math_equal(str(item.answer), extracted)


def aggregate_mm_math(records: Sequence[Record]) -> dict:
    """Accuracy, and per difficulty and grade (the authors' tables)."""
    return {
        "accuracy": _percent(r["correct"] for r in records),
        "per_difficulty": _accuracy_by(records, "difficulty"),
        "per_grade": _accuracy_by(records, "grade"),
        "n": len(records),
    }
