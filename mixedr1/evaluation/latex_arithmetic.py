"""LaTeX arithmetic read by hand, never evaluated: the value of a short answer such as `2\\pi`,
`\\frac{\\sqrt{3}}{2}`, `4\\sqrt{3}+2`, `10^{3}` or `2x+1` (at given values of its variables).

The reference scorers hand model output to `latex2sympy` and Python's `eval` (MathVision) or to
sympy's `parse_latex` and `simplify` (MM-Math). Here a small recursive-descent parser covers what
answers to these benchmarks are written in: numbers, `+ - * / ^`, `\\cdot \\times \\div`, implicit
products (`2\\pi`, `3x`, `2(x+1)`, `2\\sqrt{3}`), parentheses and braces, `\\frac`, `\\sqrt` (with an
optional index), `\\pi`, degree signs (dropped) and single-letter variables. Anything else
(functions, sets, text) is "not a value": None. Inputs are capped in length and nesting and powers
in size, so no answer can make it slow, and nothing here raises on any string.
"""

from __future__ import annotations

import math
import re
from typing import Optional

MAX_CHARS = 300  # longer expressions are not read (answers are short; this bounds the work)
MAX_DEPTH = 40  # nesting of groups, fractions, roots and powers
MAX_EXPONENT = 1000.0

# Spellings with one meaning here; applied in order before tokenising.
_REWRITES = (
    ("\\left", ""), ("\\right", ""), ("\\,", ""), ("\\!", ""), ("\\;", ""), ("\\:", ""), ("\\ ", ""),
    ("$", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("^{\\circ}", ""), ("^\\circ", ""), ("°", ""),
    ("\\cdot", "*"), ("\\times", "*"), ("×", "*"), ("·", "*"), ("∙", "*"), ("\\div", "/"), ("÷", "/"),
    ("−", "-"), ("–", "-"), ("π", "\\pi"), ("√", "\\sqrt"),
)
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|(\\[A-Za-z]+)|([A-Za-z])|([-+*/^(){}\[\]]))")


class _NotAValue(Exception):
    """The text is not arithmetic this module reads (or its value is not a finite real)."""


def _tokens(text: str) -> list[str]:
    for old, new in _REWRITES:
        text = text.replace(old, new)
    tokens, position = [], 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise _NotAValue(text[position:])
        tokens.append(match.group(match.lastindex))
        position = match.end()
        while position < len(text) and text[position].isspace():
            position += 1
    return tokens


def _finite(value: float) -> float:
    if not isinstance(value, float) or not math.isfinite(value):
        raise _NotAValue(value)
    return value


class _Parser:
    """expr := term (± term)*; term := unary ((*|/) unary | implicit factor)*; unary := ± unary | power;
    power := atom (^ exponent)?; atom := number | letter | \\pi | (expr) | {expr} | \\frac A B | \\sqrt[n]? A."""

    def __init__(self, tokens: list[str], variables: Optional[dict[str, float]]):
        self.tokens, self.position, self.depth, self.variables = tokens, 0, 0, variables

    def peek(self) -> Optional[str]:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, expected: Optional[str] = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise _NotAValue(f"expected {expected!r}, got {token!r}")
        self.position += 1
        return token

    def nested(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _NotAValue("too deeply nested")

    def expr(self) -> float:
        self.nested()
        value = self.term()
        while self.peek() in ("+", "-"):
            sign = self.take()
            value = _finite(value + self.term() if sign == "+" else value - self.term())
        self.depth -= 1
        return value

    def starts_factor(self, token: Optional[str]) -> bool:
        return token is not None and (
            token.isalpha() or token in ("(", "{", "\\frac", "\\sqrt", "\\pi")
        )  # not a number: "2 3" is no product

    def term(self) -> float:
        value = self.unary()
        while True:
            token = self.peek()
            if token in ("*", "/"):
                self.take()
                right = self.unary()
                if token == "/" and right == 0:
                    raise _NotAValue("division by zero")
                value = _finite(value * right if token == "*" else value / right)
            elif self.starts_factor(token):
                value = _finite(value * self.unary())
            else:
                return value

    def unary(self) -> float:
        if self.peek() in ("+", "-"):
            sign = self.take()
            self.nested()
            value = self.unary()
            self.depth -= 1
            return -value if sign == "-" else value
        return self.power()

    def power(self) -> float:
        base = self.atom()
        if self.peek() != "^":
            return base
        self.take("^")
        self.nested()
        sign = -1.0 if self.peek() == "-" and self.take() else 1.0
        exponent = sign * self.power_argument()
        self.depth -= 1
        if abs(exponent) > MAX_EXPONENT:
            raise _NotAValue("exponent too large")
        try:
            return _finite(math.pow(base, exponent))
        except (OverflowError, ValueError, ZeroDivisionError):
            raise _NotAValue("power") from None

    def power_argument(self) -> float:
        """`x^2`, `x^{2+1}`, `x^23` (TeX reads one digit: x²·3), `2^x`, `x^\\frac12`."""
        return self.argument() if self.peek() != "{" else self.group("{", "}")

    def group(self, open_: str, close: str) -> float:
        self.take(open_)
        value = self.expr()
        self.take(close)
        return value

    def argument(self) -> float:
        """One TeX argument: a braced group, else a single digit, letter or command."""
        token = self.peek()
        if token == "{":
            return self.group("{", "}")
        if token is not None and token[0].isdigit() and len(token) > 1:  # \frac12: the arguments are 1 and 2
            self.tokens[self.position] = token[1:]
            return float(token[0])
        return self.atom()

    def atom(self) -> float:
        token = self.take()
        if token[0].isdigit() or token[0] == ".":
            return _finite(float(token))
        if token == "(":
            self.position -= 1
            return self.group("(", ")")
        if token == "{":
            self.position -= 1
            return self.group("{", "}")
        if token == "\\pi":
            return math.pi
        if token == "\\frac":
            self.nested()
            numerator, denominator = self.argument(), self.argument()
            self.depth -= 1
            if denominator == 0:
                raise _NotAValue("division by zero")
            return _finite(numerator / denominator)
        if token == "\\sqrt":
            self.nested()
            index = self.group("[", "]") if self.peek() == "[" else 2.0
            radicand = self.argument()
            self.depth -= 1
            if index == 0:
                raise _NotAValue("zeroth root")
            if radicand < 0:
                odd = index == int(index) and int(index) % 2 == 1
                if not odd:
                    raise _NotAValue("root of a negative number")
                return -_finite(math.pow(-radicand, 1.0 / index))
            return _finite(math.pow(radicand, 1.0 / index))
        if len(token) == 1 and token.isalpha():
            if self.variables is None or token not in self.variables:
                raise _NotAValue(f"variable {token}")
            return float(self.variables[token])
        raise _NotAValue(f"unsupported {token!r}")


def latex_value(text: str, variables: Optional[dict[str, float]] = None) -> Optional[float]:
    """The value of `text` as LaTeX arithmetic (variables from `variables`), or None when it is not
    one this module reads or its value is not a finite real."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_CHARS:
        return None
    try:
        parser = _Parser(_tokens(text), variables)
        value = parser.expr()
        if parser.peek() is not None:
            return None
        return _finite(float(value))
    except (_NotAValue, ValueError, OverflowError, ZeroDivisionError, RecursionError, IndexError):
        return None


def latex_variables(text: str) -> Optional[frozenset[str]]:
    """The single-letter variables `text` uses, or None when it does not tokenise."""
    if not isinstance(text, str) or len(text) > MAX_CHARS:
        return None
    try:
        return frozenset(t for t in _tokens(text) if len(t) == 1 and t.isalpha())
    except _NotAValue:
        return None


# Where expressions in variables are compared: fixed, irrational-looking points (no lucky zeros).
_SAMPLE_POINTS = (0.3719, 1.6180, 2.7183)


def same_expression(a: str, b: str, tolerance: float = 1e-3) -> Optional[bool]:
    """Whether two expressions in the same variables take the same values (within `tolerance`) at
    three fixed points, each variable at its own offset; None when either is not readable or they
    use different variables."""
    names_a, names_b = latex_variables(a), latex_variables(b)
    if names_a is None or names_b is None or names_a != names_b:
        return None
    for point in _SAMPLE_POINTS:
        values = {name: point + 0.137 * i for i, name in enumerate(sorted(names_a))}
        value_a, value_b = latex_value(a, values), latex_value(b, values)
        if value_a is None or value_b is None:
            return None
        if abs(value_a - value_b) > tolerance:
            return False
    return True
