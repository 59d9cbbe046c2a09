"""What every task shares: reading a model's JSON-ish answer, and stable seeds.

`scan_fields` is the one reader of model answers: it finds every `key: value` in the
text, in order. `parse_objects` groups those fields by object, as dicts. The tasks pick
their fields from either (gp_formula: the first formula holding a digit and the cards
and numbers beside it; virl: the first object with an "action").

Before editing: nothing here evaluates model text (no `eval`, `exec`, `ast`, no `json.loads`
of a repaired text): a small hand-written scanner does the reading, and its work is bounded
(MAX_ANSWER_CHARS read, MAX_TOKENS keys and value pieces per answer, every string, list and
nesting level capped), so a hostile answer costs a penalty, never a crash or a hang. The scan
looks for the next key right after each key, not after its value.

Details (what is tolerated, the grammar): docs/code-notes.md#workflowsftvsrltasksanswerspy
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

MAX_ANSWER_CHARS = 100_000  # only the head of a longer answer is read (models stop far earlier)
MAX_KEY_CHARS = 64
MAX_STRING_CHARS = 1024
MAX_LIST_ITEMS = 64
MAX_NESTING = 8  # lists inside a value
MAX_TOKENS = 4096  # keys, values, list items and commas read per answer (a real one has ~30)


@dataclass(frozen=True)
class Field:
    """One `key: value` of an answer."""

    pos: int  # where the key (its opening quote, if any) starts in the (head of the) answer
    key: str  # as written, without its quotes
    value: Any  # str, int, float, or a list of those (lists may nest)
    obj: int  # the object it belongs to: same number, same object (0: before any "{")
    quoted: bool  # whether the key was quoted


def scan_fields(text: Any) -> list[Field]:
    """Every readable `key: value` of an answer, in order of appearance.

    A field whose value is unreadable is left out; a non-string answer has no fields.
    """
    if not isinstance(text, str):
        return []
    return _Scanner(text[:MAX_ANSWER_CHARS]).fields()


def parse_objects(text: Any) -> list[dict[str, Any]]:
    """The answer's objects as dicts (key as written -> value), in order of appearance.

    Fields before the first "{" or between objects count as objects of their own.
    Within an object a repeated key keeps its last value, as in JSON.
    """
    groups: dict[int, dict[str, Any]] = {}
    for field in scan_fields(text):
        groups.setdefault(field.obj, {})[field.key] = field.value
    return list(groups.values())


def derive_seed(*parts: Any) -> int:
    """A stable 64-bit seed: the first 8 bytes (big-endian) of SHA-256("/".join(str(part))).

    Never use hash() for seeds: it is salted per process. A caller that must keep an
    older digest text passes that text as the only part (gp does, to keep its data).
    """
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


# ---------------------------------------------------------------- scanner

_WORDS = r"[A-Za-z_][A-Za-z0-9_]{0,31}(?:[ \t-][A-Za-z0-9_]{1,32}){0,7}"
_KEY_RE = re.compile(
    # after "{" or "," or at a line start: bare words, quoted or not (or half quoted)
    r"(?:^|(?<=[{,]))[ \t]*(?P<open>[\"']?)(?P<words>"
    + _WORDS
    + r")(?P<close>[\"']?)[ \t]{0,32}:"
    # anywhere: a quoted key ("a", 'a', or mixed, as a model may slip)
    + r"|[\"'](?P<quoted>[^\"'\\\n,{}\[\]]{1,"
    + str(MAX_KEY_CHARS)
    + r"})[\"']\s{0,32}:",
    re.MULTILINE,
)
_BRACES_RE = re.compile(r"[{}]")
_SPACE_RE = re.compile(r"[ \t\r\n]*")
_STRING_RE = {  # quote -> (one line, several lines); an apostrophe (Joe's) does not end '...'
    q: tuple(
        re.compile(
            q + r"((?:[^" + q + r"\\" + nl + r"]|\\." + apostrophe + r"){0," + str(MAX_STRING_CHARS) + "})", flags
        )
        for nl, flags in (("\n", 0), ("", re.DOTALL))
    )
    for q, apostrophe in (('"', ""), ("'", r"|(?<=[^\W\d_])'(?=[^\W\d_])"))
}
_VALUE_END_RE = re.compile(r"\s*(?:[,}\]]|$)")
_CLOSERS = " \t\r,}]"
_BARE_STRIP = " \t\r\"'"
_BARE_FIELD_RE = re.compile(r"[^,{}\[\]\n]{1," + str(MAX_STRING_CHARS) + "}")
_BARE_ITEM_RE = re.compile(r"""[^\s,:{}\[\]"']{1,""" + str(MAX_STRING_CHARS) + "}")
_ITEM_END_RE = re.compile(r"[\s,\]}]|$")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
_HEX4_RE = re.compile(r"[0-9a-fA-F]{4}")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}


class _Missing:
    """Marker for a value that could not be read."""


_MISSING = _Missing()


class _OutOfTokens(Exception):
    """The answer used up MAX_TOKENS: reading stops, the fields so far stand."""


class _Scanner:
    def __init__(self, text: str):
        self.text = text
        self.tokens = MAX_TOKENS

    def spend(self) -> None:
        self.tokens -= 1
        if self.tokens < 0:
            raise _OutOfTokens

    def fields(self) -> list[Field]:
        text, out = self.text, []
        at = braces_at = obj = depth = 0
        try:
            while (m := _KEY_RE.search(text, at)) is not None:
                self.spend()
                for brace in _BRACES_RE.findall(text, braces_at, m.start()):  # objects opened/closed since
                    if brace == "{":
                        obj += depth == 0
                        depth += 1
                    elif depth:
                        depth -= 1
                        obj += depth == 0
                braces_at = max(braces_at, m.start())
                if m.group("words"):
                    key, quoted, pos = m.group("words"), bool(m.group("open") and m.group("close")), m.start("open")
                else:
                    key, quoted, pos = m.group("quoted"), True, m.start()
                value, end = self.value(_SPACE_RE.match(text, m.end()).end(), 0)
                if value is not _MISSING:
                    out.append(Field(pos, key, value, obj, quoted))
                    braces_at = max(braces_at, end)  # braces inside a value are no objects
                at = m.end()  # the next key may lie inside this value: a runaway value hides none
        except _OutOfTokens:
            pass
        return out

    def value(self, i: int, depth: int, item: bool = False) -> tuple[Any, int]:
        """The value at text[i] (no leading whitespace): (value or _MISSING, index after it)."""
        text = self.text
        if i >= len(text):
            return _MISSING, i
        ch = text[i]
        if ch in "\"'":
            return _string(self.text, i)
        if ch == "[":
            return self.list(i, depth)
        m = (_BARE_ITEM_RE if item else _BARE_FIELD_RE).match(text, i)
        word = m.group(0).strip(_BARE_STRIP) if m else ""  # a stray quote at an end goes too
        if not word:
            return _MISSING, i
        if len(word) <= 32 and _NUMBER_RE.fullmatch(word):
            return (float(word) if "." in word else int(word)), m.end()
        return word, m.end()

    def list(self, i: int, depth: int) -> tuple[Any, int]:
        """A list at text[i] == "["; a "}" or the end of the text also ends it (truncation)."""
        if depth >= MAX_NESTING:
            return _MISSING, i
        text, items = self.text, []
        i += 1
        for _ in range(2 * MAX_LIST_ITEMS + 2):  # items and commas
            self.spend()
            i = _SPACE_RE.match(text, i).end()
            if i >= len(text) or text[i] == "}":
                return items, i  # the "}" is left for the scanner, which tracks objects
            if text[i] == "]":
                return items, i + 1
            if text[i] == ",":
                i += 1
                continue
            value, i = self.value(i, depth + 1, item=True)
            if value is _MISSING or len(items) == MAX_LIST_ITEMS or not _ITEM_END_RE.match(text, i):
                return _MISSING, i  # unreadable, too long, or items run together ("a"b)
            items.append(value)
        return _MISSING, i


def _string(text: str, i: int) -> tuple[str, int]:
    """A quoted string. It may span lines only if its closing quote ends a value there
    (a "," "}" "]" or the end follows); else an unclosed string ends with its line,
    less the closing marks at the end of that line (a truncated or unclosed answer)."""
    quote = text[i]
    one_line, lines = _STRING_RE[quote]
    m = one_line.match(text, i)
    if text.startswith(quote, m.end()):
        return _unescape(m.group(1)), m.end() + 1
    if text.startswith("\n", m.end()):
        span = lines.match(text, i)
        if text.startswith(quote, span.end()) and _VALUE_END_RE.match(text, span.end() + 1):
            return _unescape(span.group(1)), span.end() + 1
    kept = m.group(1).rstrip(_CLOSERS)  # the marks are left for the scanner, which tracks objects
    return _unescape(kept), i + 1 + len(kept)


def _unescape(raw: str) -> str:
    if "\\" not in raw:
        return raw
    out, i = [], 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            nxt = raw[i + 1]
            if nxt == "u" and _HEX4_RE.fullmatch(raw, i + 2, i + 6):
                out.append(chr(int(raw[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)
