"""Chart / document reward (docs/method.md §3): numeric match within a tolerance, else normalised text match.

Numbers are read with a regular expression, never evaluated: thousands separators (`1,234.5`),
`%`, currency signs, units around the number (`12.5 kg`), signs and scientific notation. A text that
holds more than one number is ambiguous and is not read as a number ("between 10 and 12"). Non-finite
values (`inf`, `1e999`, `nan`) never match.
**Decision** (docs/method.md §3): tolerance mode `absolute` (|p − g| < tol, the paper's words) by default,
`relative` (|p − g| ≤ tol·|g|) as the option `reward.chart_tolerance_mode`.
"""

from __future__ import annotations

import math
import re

from .matching import normalize_text

_NUMBER = re.compile(
    r"(?<![\w.])[-+−]?\s?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])"
)
_CURRENCY = "$€£¥₹"


def parse_number(text: str) -> float | None:
    """The single finite number in `text`, or None (no number, several numbers, or not finite)."""
    if not isinstance(text, str) or len(text) > 10_000:
        return None
    cleaned = text.translate({ord(c): " " for c in _CURRENCY + "%"}).strip().rstrip(".")
    found = [m.group(0) for m in _NUMBER.finditer(cleaned) if any(ch.isdigit() for ch in m.group(0))]
    if len(found) != 1:
        return None
    token = found[0].replace(",", "").replace(" ", "").replace("−", "-")
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def numbers_match(prediction: float, truth: float, tolerance: float, mode: str = "absolute") -> bool:
    error = abs(prediction - truth)
    if mode == "relative" and truth != 0:
        return error <= tolerance * abs(truth)
    return error < tolerance


def chart_reward(prediction: str, truth: str, tolerance: float = 1e-2, mode: str = "absolute") -> float:
    """R_chart ∈ {0, 1}: numeric when the ground truth is a number, else normalised exact text."""
    gold = parse_number(truth)
    if gold is not None:
        pred = parse_number(prediction)
        return float(pred is not None and numbers_match(pred, gold, tolerance, mode))
    gold_text = normalize_text(truth)
    return float(bool(gold_text) and normalize_text(prediction) == gold_text)
