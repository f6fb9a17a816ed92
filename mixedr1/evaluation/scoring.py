"""Answer extraction and scoring for the evaluation benchmarks (EVAL.md): pure functions on strings.

Each benchmark has an item scorer `score_<name>(item, response) -> (extracted, correct)` and an
aggregate `aggregate_<name>(records) -> metrics` (percentages in [0, 100]); `records` are the
per-item dicts eval.py writes (`correct`, `meta`, ...), so a results file can be re-scored offline.

Where the answer is read from. With the thinking prompt (docs/method.md §2) the model writes
`<think>…</think><answer>…</answer>`; every scorer first takes the `<answer>` content when present
(`answer_region`), so the reasoning's intermediate letters and numbers are never read as the
answer. Without tags (the `direct` prompt) the whole response is the region.

The reference scorers are lmms-eval's judge-free ones. Departures, each because the reference needs
something we do not run:

- **MathVista** is usually scored by a GPT extractor; here it is rule-based (`<answer>`, else the last
  `\\boxed{}`, else the last number; letter → choice text; else the nearest choice by edit distance;
  numbers rounded to the item's `precision`). The metric is named `mathvista_rule_based` so nobody
  mistakes it for the GPT-judged number.
- **MathVision**'s reference compares with `latex2sympy` + `eval`; here numbers, `\\frac{a}{b}`, `a/b`
  and `c\\sqrt{n}` are parsed by hand (never evaluated) and compared at 2 decimals; any other LaTeX
  expression must match as normalised text.
- **MMMU**'s official parser falls back to `random.choice` on a global RNG seeded once; here the RNG
  is seeded per item (`seed`, item id), so the fallback does not depend on item order, batch size
  or the number of ranks.
- **MathVerse** (optional) is usually GPT-judged; here multi-choice letters and MathVision's
  free-form comparison, under the metric name `mathverse_rule_based`.
- **MMStar**: lmms-eval's `exact_match` only looks at the first characters of the response; here the
  letter is extracted like MMBench's (`extract_choice_letter`), then compared exactly.

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
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
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
_BRACKETED_LETTER = re.compile(r"\(([A-Z])\)")
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
    2. the whole text is a letter spelling: `B`, `(B)`, `B.`, `B)`, `B:` (optionally followed by the
       option's text), or exactly one option's text (`rewards.matching.parse_choice`);
    3. the last letter after "answer" / "option" / "choice" ("The answer is B", "Answer: (C) text");
    4. the last bracketed letter `(B)`; 5. the last letter opening a line (`B.`, `B)`);
    6. a letter ending the text ("so it is B."); 7. one option's text named in the response.

    `letters` are the valid letters ("ABCD"); anything else is ignored.
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
    for pattern in (_LETTER_AFTER_KEYWORD, _BRACKETED_LETTER, _LINE_START_LETTER, _TRAILING_LETTER):
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
_FRACTION = re.compile(r"\A([-+]?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}\Z")
_SLASH = re.compile(r"\A([-+]?[\d.]+)\s*/\s*([\d.]+)\Z")
_SQRT = re.compile(r"\A([-+]?[\d.]*)\s*\\sqrt\{?([\d.]+)\}?\Z")


def plain_float(text: str) -> Optional[float]:
    """A number written plainly ("3", "-2.50", "1,234", "1e-3"), or None. Non-finite values are None."""
    if not isinstance(text, str) or len(text) > 100:
        return None
    token = text.strip().replace("−", "-")
    if not re.fullmatch(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?", token) or not any(
        c.isdigit() for c in token
    ):
        return None
    value = float(token.replace(",", ""))
    return value if math.isfinite(value) else None


def to_number(text: str) -> Optional[float]:
    """A plain number, a fraction (`\\frac{3}{4}`, `3/4`), a root (`2\\sqrt{3}`) or a percentage, as a
    float; None for anything else. Parsed by hand: nothing is evaluated."""
    if not isinstance(text, str):
        return None
    text = text.strip().replace(" ", "").replace("\\%", "").rstrip("%").replace("$", "")
    value = plain_float(text)
    if value is not None:
        return value
    m = _FRACTION.match(text)
    if m:
        sign = -1.0 if m.group(1) == "-" else 1.0
        num, den = plain_float(m.group(2)), plain_float(m.group(3))
        return sign * num / den if num is not None and den else None
    m = _SLASH.match(text)
    if m:
        num, den = plain_float(m.group(1)), plain_float(m.group(2))
        return num / den if num is not None and den else None
    m = _SQRT.match(text)
    if m:
        coef_text = m.group(1)
        coef = {"": 1.0, "+": 1.0, "-": -1.0}.get(coef_text, None)
        coef = plain_float(coef_text) if coef is None else coef
        root = plain_float(m.group(2))
        if coef is None or root is None or root < 0:
            return None
        return coef * math.sqrt(root)
    return None


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
    region = region.strip()
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
        digits = int(precision) if precision is not None and not math.isnan(precision) else 2
        return str(round(value, digits))
    return region or None


def score_mathvista(item, response: str) -> tuple[Optional[str], bool]:
    meta = item.meta
    extracted = mathvista_extract(
        response, meta["question_type"], meta["answer_type"], item.options, meta.get("precision")
    )
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


score_mmbench = score_letter
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
    """Numbers with thousands commas, in scientific notation, and plain (the official three patterns)."""
    with_commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", text)
    scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", text)
    simple = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])", text)
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
    """The mean of the per-`category` accuracies (the 6 core capabilities; EVAL.md), the overall
    per-item accuracy, and lmms-eval's aggregate (the mean over `l2_category`) for comparison."""
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


def score_mathverse(item, response: str) -> tuple[Optional[str], bool]:
    """MathVerse, rule-based (the usual protocol is a GPT judge): multi-choice by letter, free-form
    with MathVision's normalisation and 2-decimal numeric equality."""
    if item.multiple_choice:
        letter = extract_choice_letter(answer_region(response), "ABCDEF")
        return letter, letter is not None and letter == str(item.answer).strip().upper()
    extracted = mathvision_extract(response)
    return extracted, mathvision_equal(extracted, str(item.answer))


def score_mmmu_pro(item, response: str, seed: int = 42) -> tuple[Any, bool]:
    """MMMU-Pro: the standard setting with the MMMU parser; the vision setting (question and options
    inside the image) by the extracted letter, exactly."""
    if item.meta.get("setting") == "standard":
        return score_mmmu(item, response, seed)
    letter = extract_choice_letter(answer_region(response), letters_for(max(len(item.options), 1)), item.options or None)
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
