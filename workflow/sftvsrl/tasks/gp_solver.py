"""Exact solver of the generalised 24 game: every value used once, + - * / and parentheses.

Arithmetic is exact (`fractions.Fraction`), so solutions such as 8/(3-8/3) are found.

Expressions are built bottom-up over sub-multisets of the input values and memoised on
the sorted value tuple, so the 1820 four-card hands share their 2- and 3-card work.
Solutions are returned in a canonical form that removes the trivial duplicates of
commutativity and associativity: a sum is a sorted list of added terms and a sorted
list of subtracted terms (a+b-c-d), a product a sorted list of multiplied factors and
a sorted list of divisor factors (a*b/c/d). Each canonical string still parses, with
ordinary precedence, to an expression of the same value.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from functools import cache, lru_cache
from itertools import combinations

# A node is (kind, text, plus, minus): kind "n" leaf, "s" sum, "p" product.
# For a sum, plus/minus are the added/subtracted term texts; for a product, the
# multiplied/divisor factor texts. Both tuples are sorted, so equal trees share a text.
Node = tuple[str, str, tuple[str, ...], tuple[str, ...]]

# Values are ints while they are whole and Fractions otherwise: int arithmetic and
# hashing are much faster than Fraction's, and equal values hash alike either way.
Value = int | Fraction


def solvable(values: Iterable[int], target: int = 24) -> bool:
    """True when some expression over all `values` equals `target` exactly."""
    key = tuple(sorted(values))
    if not key:
        return False
    if len(key) == 1:
        return key[0] == target
    return _solvable_key(key, target)


def solutions(values: Iterable[int], target: int = 24) -> list[str]:
    """All distinct solutions (canonical formula strings, no "=target"), sorted by (length, text)."""
    key = tuple(sorted(values))
    if not key:
        return []
    return list(_solutions_key(key, target))


def one_solution(values: Iterable[int], target: int = 24) -> str | None:
    """The first solution in canonical order, or None when the hand is unsolvable."""
    values = list(values)
    if not solvable(values, target):
        return None
    found = solutions(values, target)
    return found[0] if found else None


def clear_caches() -> None:
    """Forget memoised results (for benchmarks)."""
    for fn in (_splits, _partners, _reach, _exprs, _solvable_key, _solutions_key):
        fn.cache_clear()


# ---------------------------------------------------------------- splitting helpers


@cache
def _splits(key: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """Each unordered split of the multiset `key` into two non-empty parts, once,
    as (smaller, larger) so top-level searches iterate over the smaller side."""
    n = len(key)
    out = set()
    for size in range(1, n // 2 + 1):
        for idx in combinations(range(n), size):
            chosen = set(idx)
            small = tuple(key[i] for i in idx)
            big = tuple(key[i] for i in range(n) if i not in chosen)
            if len(small) == len(big) and small > big:
                small, big = big, small
            out.add((small, big))
    return tuple(sorted(out))


def _norm(v: Value) -> Value:
    return int(v) if isinstance(v, Fraction) and v.denominator == 1 else v


def _div(a: Value, b: Value) -> Value:
    if isinstance(a, int) and isinstance(b, int) and a % b == 0:
        return a // b
    return _norm(Fraction(a) / b)


def _results(a: Value, b: Value) -> list[tuple[str, bool, Value]]:
    """(op, swapped, value) for every a op b and, for - and /, b op a."""
    if isinstance(a, int) and isinstance(b, int):
        out = [("+", False, a + b), ("*", False, a * b), ("-", False, a - b), ("-", True, b - a)]
    else:
        out = [
            ("+", False, _norm(a + b)),
            ("*", False, _norm(a * b)),
            ("-", False, _norm(a - b)),
            ("-", True, _norm(b - a)),
        ]
    if b:
        out.append(("/", False, _div(a, b)))
    if a:
        out.append(("/", True, _div(b, a)))
    return out


@cache  # the smaller sides' values recur across hands
def _partners(a: Value, target: int) -> frozenset[Value]:
    """Every b for which a op b or b op a can equal `target` (target != 0)."""
    out = {
        _norm(target - a),
        _norm(a - target),
        _norm(a + target),
        _norm(target * a),
        _div(a, target),
    }  # a+b, a-b, b-a, b/a, a/b
    if a:
        out.add(_div(target, a))  # a*b
    return frozenset(out)


# ---------------------------------------------------------------- fast solvability


@cache
def _reach(key: tuple[int, ...]) -> frozenset[Value]:
    """Every value some expression over the multiset `key` can take."""
    if len(key) == 1:
        return frozenset((key[0],))
    out: set[Value] = set()
    for small, big in _splits(key):
        for a in _reach(small):
            for b in _reach(big):
                out.update(v for _, _, v in _results(a, b))
    return frozenset(out)


@cache
def _solvable_key(key: tuple[int, ...], target: int) -> bool:
    if target == 0:  # 0*b == 0 for any b: no finite partner set, use the plain check
        return target in _reach(key)
    # Only the target matters at the top: for each value of the smaller part, look up
    # the few values of the larger part that could hit it, instead of combining both.
    for small, big in _splits(key):
        big_values = _reach(big)
        for a in _reach(small):
            for b in _partners(a, target) & big_values:
                if any(v == target for _, _, v in _results(a, b)):
                    return True
    return False


# ---------------------------------------------------------------- all solutions


def _leaf(v: int) -> Node:
    return ("n", str(v), (), ())


def _terms(x: Node) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(added, subtracted) term texts of x seen as a sum."""
    return (x[2], x[3]) if x[0] == "s" else ((x[1],), ())


def _factors(x: Node) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(multiplied, divisor) factor texts of x seen as a product."""
    if x[0] == "p":
        return x[2], x[3]
    return ((f"({x[1]})",) if x[0] == "s" else (x[1],)), ()


def _sum(plus: tuple[str, ...], minus: tuple[str, ...]) -> Node:
    plus, minus = tuple(sorted(plus)), tuple(sorted(minus))
    return ("s", "+".join(plus) + "".join("-" + t for t in minus), plus, minus)


def _product(num: tuple[str, ...], den: tuple[str, ...]) -> Node:
    num, den = tuple(sorted(num)), tuple(sorted(den))
    return ("p", "*".join(num) + "".join("/" + f for f in den), num, den)


def _combine(x: Node, y: Node, op: str, swapped: bool = False) -> Node:
    """The canonical node of `x op y` (of `y op x` when swapped)."""
    if swapped:
        x, y = y, x
    if op in "+-":
        (xp, xm), (yp, ym) = _terms(x), _terms(y)
        return _sum(xp + yp, xm + ym) if op == "+" else _sum(xp + ym, xm + yp)
    (xn, xd), (yn, yd) = _factors(x), _factors(y)
    return _product(xn + yn, xd + yd) if op == "*" else _product(xn + yd, xd + yn)


@cache
def _exprs(key: tuple[int, ...]) -> dict[Value, frozenset[Node]]:
    """value -> canonical expressions over the multiset `key` taking that value."""
    if len(key) == 1:
        return {key[0]: frozenset((_leaf(key[0]),))}
    out: dict[Value, set[Node]] = {}
    for small, big in _splits(key):
        e_small, e_big = _exprs(small), _exprs(big)
        for a, xs in e_small.items():
            for b, ys in e_big.items():
                for op, swapped, v in _results(a, b):
                    bucket = out.setdefault(v, set())
                    bucket.update(_combine(x, y, op, swapped) for x in xs for y in ys)
    return {v: frozenset(nodes) for v, nodes in out.items()}


@lru_cache(maxsize=4096)
def _solutions_key(key: tuple[int, ...], target: int) -> tuple[str, ...]:
    if len(key) == 1:
        return (str(key[0]),) if key[0] == target else ()
    found: set[str] = set()
    # As in _solvable_key, no expression set is built for the whole hand: only the
    # value pairs (a, b) of the two parts that can hit the target are combined.
    for small, big in _splits(key):
        e_small, e_big = _exprs(small), _exprs(big)
        for a, xs in e_small.items():
            bs = e_big.keys() if target == 0 else _partners(a, target) & e_big.keys()
            for b in bs:
                for op, swapped, v in _results(a, b):
                    if v == target:
                        found.update(_combine(x, y, op, swapped)[1] for x in xs for y in e_big[b])
    return tuple(sorted(found, key=lambda s: (len(s), s)))
