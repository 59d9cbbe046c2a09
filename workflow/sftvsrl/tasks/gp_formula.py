"""Safe reading of GeneralPoints answers: the answer's JSON-like object and its formula.

Nothing here evaluates model text with Python (`eval`, `exec`, `ast.literal_eval`): the
answer object and the formula are read by small hand-written parsers whose work is
bounded by the limits below, so hostile input costs a penalty, never a crash or a hang.

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

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

MAX_FORMULA_CHARS = 512  # a 4-card formula needs about 20
MAX_DEPTH = 32  # parenthesis nesting
MAX_LITERAL_DIGITS = 6
MAX_ANSWER_CHARS = 100_000  # only the head of a longer answer is read (models stop far earlier)
MAX_STRING_CHARS = 2 * MAX_FORMULA_CHARS
MAX_LIST_ITEMS = 64
MAX_KEYS = 64  # key occurrences read per answer (a real answer has three)
MAX_NESTING = 8  # lists/objects inside an answer value

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

_KEY_RE = re.compile(r"""["'](cards|numbers?|formula)["']\s*:\s*""")
_BARE_RE = re.compile(r"[A-Za-z0-9_.+\-]+")
_SPACE_RE = re.compile(r"[ \t\r\n]*")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}


class _Missing:
    """Marker for a value that could not be read."""


MISSING = _Missing()


def parse_answer(text: Any) -> dict[str, Any]:
    """Read the fields "cards", "number" and "formula" from a model's answer.

    Tolerates code fences, prose around the object, single quotes, trailing commas,
    unquoted list items and truncation (a missing closing quote, bracket or brace).
    Keys must be quoted. Each field is read where its key occurs; a field that is
    absent or unreadable is left out of the result. For "formula" the first string
    value holding a digit wins (so an echoed template like "..." is skipped); "cards"
    and "number" come from the occurrence nearest before that formula key (else the
    first after it), i.e. from the same object. The values keep the answer's types
    (a "number" list may hold strings); callers check them.
    """
    if not isinstance(text, str):
        return {}
    text = text[:MAX_ANSWER_CHARS]
    hits: dict[str, list[tuple[int, Any]]] = {"cards": [], "number": [], "formula": []}
    for n_keys, m in enumerate(_KEY_RE.finditer(text)):
        if n_keys >= MAX_KEYS:
            break
        key = "number" if m.group(1).startswith("number") else m.group(1)
        value, _ = _read_value(text, m.end(), 0)
        if value is not MISSING:
            hits[key].append((m.start(), value))
    out: dict[str, Any] = {}
    formula_at = _pick_formula(hits["formula"], out)
    for key in ("cards", "number"):
        found = _nearest(hits[key], formula_at)
        if found is not MISSING:
            out[key] = found
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
    if not hits:
        return MISSING
    before = [v for pos, v in hits if pos < anchor]
    return before[-1] if before else hits[0][1]


def _skip_space(text: str, i: int) -> int:
    return _SPACE_RE.match(text, i).end()


def _read_value(text: str, i: int, depth: int) -> tuple[Any, int]:
    """One JSON-like value at text[i:]: (value or MISSING, index after it)."""
    i = _skip_space(text, i)
    if i >= len(text):
        return MISSING, i
    ch = text[i]
    if ch in "\"'":
        return _read_string(text, i)
    if ch == "[":
        return _read_list(text, i, depth)
    if ch == "{":  # a nested object is never a field we want; skip nothing, report missing
        return MISSING, i + 1
    m = _BARE_RE.match(text, i)
    if not m:
        return MISSING, i
    word = m.group(0)
    if _NUMBER_RE.fullmatch(word) and len(word) <= 32:
        return (float(word) if "." in word else int(word)), m.end()
    return word, m.end()  # an unquoted word, e.g. [A, 3, K] or true/null


def _read_string(text: str, i: int) -> tuple[str, int]:
    """A quoted string. An unterminated one runs to the end of its line (truncated
    answers); any string is cut at MAX_STRING_CHARS (longer ones are no formula)."""
    quote = text[i]
    stop = min(len(text), i + 1 + MAX_STRING_CHARS)
    j = i + 1
    while True:
        k = text.find(quote, j, stop)
        if k < 0:
            end = text.find("\n", i + 1, stop)
            end = stop if end < 0 else end
            return _unescape(text[i + 1:end]), end
        backslashes = 0  # the opening quote bounds this walk
        while text[k - 1 - backslashes] == "\\":
            backslashes += 1
        if backslashes % 2 == 0:
            return _unescape(text[i + 1:k]), k + 1
        j = k + 1


def _unescape(raw: str) -> str:
    if "\\" not in raw:
        return raw
    out, i = [], 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            nxt = raw[i + 1]
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", raw[i + 2:i + 6]):
                out.append(chr(int(raw[i + 2:i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _read_list(text: str, i: int, depth: int) -> tuple[Any, int]:
    """A list; trailing commas and a missing "]" (truncation) are accepted."""
    if depth >= MAX_NESTING:
        return MISSING, i + 1
    items: list[Any] = []
    i += 1
    for _ in range(2 * MAX_LIST_ITEMS + 2):  # items and commas; bounds the work
        i = _skip_space(text, i)
        if i >= len(text) or text[i] in "]}":
            return items, i + 1
        if text[i] == ",":
            i += 1
            continue
        value, j = _read_value(text, i, depth + 1)
        if value is MISSING or j <= i:
            return MISSING, max(j, i + 1)
        items.append(value)
        i = j
    return MISSING, i
