"""Answer extraction and the format reward (docs/method.md §3).

Model output is untrusted text: nothing here evaluates it, no input makes these functions raise, and
each runs in time linear in the text (no regular expression that can backtrack over it).
"""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)



def valid_text(text: str) -> str:
    """`text` with anything that is not encodable as UTF-8 (lone surrogates such as '\\ud800', which
    a JSON string may carry) replaced by '?': tokenizers reject such strings."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


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
    """R_fmt: 1.0 if the response is exactly `<think>…</think><answer>…</answer>` (white space around
    and between the two parts allowed, no other tag inside either part), else 0.0 (docs/method.md §3).

    A scan with `find`, linear in the length: the regular expression this replaces took seconds on a
    looping completion cut before its last `</answer>`.
    """
    if not isinstance(response, str):
        return 0.0
    text = response.strip()
    if not (text.startswith(THINK_OPEN) and text.endswith(ANSWER_CLOSE)):
        return 0.0
    think_end = text.find(THINK_CLOSE, len(THINK_OPEN))
    if think_end < 0:
        return 0.0
    rest = text[think_end + len(THINK_CLOSE) :].lstrip()
    if not rest.startswith(ANSWER_OPEN) or len(rest) < len(ANSWER_OPEN) + len(ANSWER_CLOSE):
        return 0.0
    parts = (text[len(THINK_OPEN) : think_end], rest[len(ANSWER_OPEN) : -len(ANSWER_CLOSE)])
    # "exactly one" of each: no stray tag may hide inside either part.
    if any(tag in part for part in parts for tag in _TAGS):
        return 0.0
    return 1.0
