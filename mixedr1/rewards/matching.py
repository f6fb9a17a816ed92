"""Matching rewards for yes/no and multiple-choice items (docs/method.md §3): R_match ∈ {0, 1}.

yorn: "yes" / "no", case, surrounding white space and punctuation ignored; nothing else may be in
the answer ("Yes, it is" does not count: the answer tag is meant to hold the answer alone).
mcq: the option letter written `B`, `(B)`, `B.`, `B)`, `B:` (each optionally followed by THAT
option's own text, e.g. `B) 12 apples`), or exactly one option's full text. A letter followed by any
other text is not a choice: "(A) red does not match … Therefore, the answer is C." names A only in
passing, and so does "B) 3 apples" when B is "5 apples". A bare word starting with a capital letter
("A red circle") is not read as a letter.
"""

from __future__ import annotations

import re
import string
import unicodedata

_PUNCT = str.maketrans("", "", string.punctuation)
# `B`, `(B)`, `B.`, `B)`, `B:`; after the (closed) letter, optional text. Group 1 or 2 is the letter.
_LETTER = re.compile(r"\A\s*(?:\(\s*([A-Za-z])\s*\)|([A-Za-z])(?:\s*[.):](?=\s|\Z)|\s*\Z))(.*)\Z", re.DOTALL)


def normalize_text(text: str) -> str:
    """Lower case, NFKC, punctuation removed, white space collapsed: the comparison key for text answers."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_PUNCT)
    return " ".join(text.split())


def yorn_reward(prediction: str, truth: str) -> float:
    """1.0 when the prediction is the ground truth's yes/no, ignoring case and punctuation."""
    pred, gold = normalize_text(prediction), normalize_text(truth)
    return float(pred in ("yes", "no") and pred == gold)


def option_letters(n_options: int) -> str:
    return string.ascii_uppercase[:n_options]


def parse_choice(prediction: str, options: list[str] | None) -> str | None:
    """The option letter a prediction names, or None. See the module docstring for the spellings."""
    letters = option_letters(len(options)) if options else string.ascii_uppercase
    match = _LETTER.match(prediction)
    if match is not None:
        letter = (match.group(1) or match.group(2)).upper()
        rest = match.group(3).strip()
        if letter in letters:
            # `B) text`: the text must be option B's own; anything else (an explanation, a list of the
            # options, another option's text) means the letter is not the answer. Without options to
            # compare with, only the bare letter counts.
            if not rest:
                return letter
            if options and normalize_text(rest) == normalize_text(options[letters.index(letter)]):
                return letter
            return None
    if options:
        key = normalize_text(prediction)
        hits = [letters[i] for i, opt in enumerate(options) if key and normalize_text(opt) == key]
        if len(hits) == 1:
            return hits[0]
    return None


def mcq_reward(prediction: str, truth: str, options: list[str] | None) -> float:
    """1.0 when the prediction names the ground-truth option. `truth` is a letter (or one option's text)."""
    gold = parse_choice(truth, options)
    return float(gold is not None and parse_choice(prediction, options) == gold)
