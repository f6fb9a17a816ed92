"""Answer extraction and the format reward (docs/method.md §3).

Model output is untrusted text: nothing here evaluates it, and no input makes these functions raise.
"""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

# Exactly one <think>…</think> then exactly one <answer>…</answer>, surrounding white space ignored.
_FORMAT = re.compile(r"\A\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*\Z", re.DOTALL)


def extract_answer(response: str) -> str | None:
    """Text inside the LAST `<answer> … </answer>` (stripped), or None when there is no such pair.

    The last closing tag is found first, then the last opening tag before it, so nested or repeated
    tags resolve to the innermost final answer: `<answer><answer>x</answer>` gives "x".
    """
    if not isinstance(response, str):
        return None
    end = response.rfind(ANSWER_CLOSE)
    if end < 0:
        return None
    start = response.rfind(ANSWER_OPEN, 0, end)
    if start < 0:
        return None
    return response[start + len(ANSWER_OPEN) : end].strip()


def format_reward(response: str) -> float:
    """R_fmt: 1.0 if the response is exactly `<think>…</think><answer>…</answer>`, else 0.0 (docs/method.md §3)."""
    if not isinstance(response, str):
        return 0.0
    match = _FORMAT.match(response)
    if match is None:
        return 0.0
    # "exactly one" of each: no stray tag may hide inside either part.
    if any(tag in part for part in match.groups() for tag in _TAGS):
        return 0.0
    return 1.0
