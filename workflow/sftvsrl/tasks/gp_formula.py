"""Safe reading of GeneralPoints answers: the answer's fields and its formula.

Nothing here evaluates model text with Python (`eval`, `exec`, `ast.literal_eval`): the
answer object is read by the shared scanner in `answers` and the formula by the small
hand-written parser below; both bound their work, so hostile input costs a penalty,
never a crash or a hang.

Formula grammar (binary operators only, ordinary precedence, left associative):
    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := INTEGER | "(" expr ")"
INTEGER is ASCII digits only. Illegal (FormulaError): any other character (including
"x", "×", "÷", "^", ".", unicode digits such as "２" or "٢", non-ASCII spaces), "**",
unary minus or plus, empty or unbalanced parentheses, division by zero, a formula longer
than MAX_FORMULA_CHARS, parentheses nested deeper than MAX_DEPTH, or a literal longer
than MAX_LITERAL_DIGITS digits. The last two caps bound the work and the size of every
intermediate value (at most MAX_FORMULA_CHARS/2 literals of at most 6 digits each);
no card value has more than two digits, so the caps never reject a sensible answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from .answers import scan_fields

MAX_FORMULA_CHARS = 512  # a 4-card formula needs about 20
MAX_DEPTH = 32  # parenthesis nesting
MAX_LITERAL_DIGITS = 6

_DIGITS = frozenset("0123456789")
_OPERATORS = frozenset("+-*/")
_SPACE = frozenset(" \t\r\n")


class FormulaError(ValueError):
    """The formula is illegal; the message is a short human-readable reason."""


@dataclass(frozen=True)
class Formula:
    """A legal formula: its exact value and its integer literals in order of appearance."""

    text: str
    value: Fraction
    numbers: tuple[int, ...]


# ---------------------------------------------------------------- formulas


def formula_part(text: str) -> str:
    """The formula proper: the text before the first "=" (the whole text if none)."""
    return text.split("=", 1)[0]


def tokenize(text: str) -> list[str]:
    """Integers and the single characters + - * / ( ); whitespace is skipped."""
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in _DIGITS:
            j = i
            while j < n and text[j] in _DIGITS:
                j += 1
            if j - i > MAX_LITERAL_DIGITS:
                raise FormulaError(f"a number has more than {MAX_LITERAL_DIGITS} digits")
            tokens.append(text[i:j])
            i = j
        elif ch in _OPERATORS or ch in "()":
            tokens.append(ch)
            i += 1
        elif ch in _SPACE:
            i += 1
        else:
            raise FormulaError(f"it contains the illegal character {ch!r}")
    return tokens


class _Parser:
    """Recursive descent over tokens, evaluating exactly as it goes."""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0
        self.numbers: list[int] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str | None:
        tok = self.peek()
        self.pos += 1
        return tok

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor(depth)
            if op == "*":
                value = value * rhs
            elif rhs == 0:
                raise FormulaError("it divides by zero")
            else:
                value = value / rhs
        return value

    def factor(self, depth: int) -> Fraction:
        tok = self.take()
        if tok is None:
            raise FormulaError("it ends where a number was expected")
        if tok == "(":
            if depth >= MAX_DEPTH:
                raise FormulaError("its parentheses are nested too deeply")
            value = self.expr(depth + 1)
            if self.take() != ")":
                raise FormulaError("its parentheses are unbalanced")
            return value
        if tok[0] in _DIGITS:
            self.numbers.append(int(tok))
            return Fraction(int(tok))
        raise FormulaError(f"{tok!r} appears where a number was expected")


def parse_formula(text: str) -> Formula:
    """Parse and exactly evaluate a formula (the part before "=" of `text`).

    Raises FormulaError with a readable reason when the formula is illegal.
    """
    body = formula_part(text)
    if len(body) > MAX_FORMULA_CHARS:
        raise FormulaError(f"it is longer than {MAX_FORMULA_CHARS} characters")
    tokens = tokenize(body)
    if not tokens:
        raise FormulaError("it is empty")
    parser = _Parser(tokens)
    value = parser.expr(0)
    if parser.pos < len(tokens):
        tok = tokens[parser.pos]
        reason = "its parentheses are unbalanced" if tok == ")" else f"{tok!r} is out of place"
        raise FormulaError(reason)
    return Formula(body.strip(), value, tuple(parser.numbers))


# ---------------------------------------------------------------- answer object

_ANSWER_KEYS = {"cards": "cards", "number": "number", "numbers": "number", "formula": "formula"}


def parse_answer(text: Any) -> dict[str, Any]:
    """Read the fields "cards", "number" and "formula" from a model's answer.

    The answer is read by `answers.scan_fields` (code fences, prose around the object,
    single quotes, trailing commas, unquoted list items and truncation are tolerated);
    here only quoted keys count, so prose mentioning a formula is not an answer. A field
    that is absent or unreadable is left out of the result. For "formula" the first
    string value holding a digit wins (so an echoed template like "..." is skipped);
    "cards" and "number" come from the occurrence nearest before that formula key (else
    the first after it), i.e. from the same object. The values keep the answer's types
    (a "number" list may hold strings); callers check them.
    """
    hits: dict[str, list[tuple[int, Any]]] = {"cards": [], "number": [], "formula": []}
    for field in scan_fields(text):
        if field.quoted and field.key in _ANSWER_KEYS:
            hits[_ANSWER_KEYS[field.key]].append((field.pos, field.value))
    out: dict[str, Any] = {}
    formula_at = _pick_formula(hits["formula"], out)
    for key in ("cards", "number"):
        if hits[key]:
            out[key] = _nearest(hits[key], formula_at)
    return out


def _pick_formula(hits: list[tuple[int, Any]], out: dict[str, Any]) -> int:
    """Store the chosen formula in `out`; return its position (or -1)."""
    strings = [(pos, v) for pos, v in hits if isinstance(v, str)]
    for pos, v in strings:
        if any(ch in _DIGITS for ch in v):
            out["formula"] = v
            return pos
    if strings:
        out["formula"] = strings[0][1]
        return strings[0][0]
    return -1


def _nearest(hits: list[tuple[int, Any]], anchor: int) -> Any:
    """The value nearest before `anchor`, else the first one (`hits` is not empty)."""
    before = [v for pos, v in hits if pos < anchor]
    return before[-1] if before else hits[0][1]
