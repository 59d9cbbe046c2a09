"""The exact GeneralPoints solver."""

from fractions import Fraction
from itertools import combinations_with_replacement

import pytest

from sftvsrl.tasks.gp_formula import parse_formula
from sftvsrl.tasks.gp_solver import one_solution, solutions, solvable


def _brute_solvable(values, target):
    """Reference: combine any two values with any operator until one is left."""
    vals = [Fraction(v) for v in values]

    def rec(vs):
        if len(vs) == 1:
            return vs[0] == target
        for i in range(len(vs)):
            for j in range(len(vs)):
                if i != j:
                    rest = [vs[k] for k in range(len(vs)) if k not in (i, j)]
                    a, b = vs[i], vs[j]
                    for c in [a + b, a - b, a * b] + ([a / b] if b else []):
                        if rec(rest + [c]):
                            return True
        return False

    return rec(vals)


def test_3388_only_via_nested_fraction():
    assert solvable([3, 3, 8, 8])
    assert solutions([8, 3, 8, 3]) == ["8/(3-8/3)"]


def test_1111_unsolvable():
    assert not solvable([1, 1, 1, 1])
    assert solutions([1, 1, 1, 1]) == []
    assert one_solution([1, 1, 1, 1]) is None


@pytest.mark.parametrize("values", [[1, 2, 3, 4], [4, 4, 10, 10], [1, 5, 5, 5], [1, 3, 10, 6], [13, 12, 11, 1]])
def test_every_solution_is_exact_and_uses_each_value_once(values):
    found = solutions(values)
    assert found and len(found) == len(set(found))
    for text in found:
        f = parse_formula(text)
        assert f.value == 24
        assert sorted(f.numbers) == sorted(values)


def test_known_hard_hands():
    assert solutions([4, 4, 10, 10]) == ["(10*10-4)/4"]
    assert solutions([1, 5, 5, 5]) == ["(5-1/5)*5"]


def test_commutative_duplicates_are_merged():
    # a+b+c+d and every reordering of it are one solution
    assert solutions([6, 6, 6, 6]).count("6+6+6+6") == 1
    assert not any(s in solutions([6, 6, 6, 6]) for s in ("(6+6)+(6+6)", "6+(6+6+6)"))


def test_one_solution_is_first_canonical():
    assert one_solution([1, 2, 3, 4]) == solutions([1, 2, 3, 4])[0]


def test_target_and_size_are_parameters():
    assert solvable([2, 5], 10) and not solvable([2, 5], 11)
    assert solutions([2, 5], 10) == ["2*5"]
    assert solvable([3, 4, 5], 27) == _brute_solvable([3, 4, 5], 27)
    assert solvable([1, 2, 3, 4, 5], 24)
    assert solvable([7], 7) and not solvable([], 0)
    assert solvable([3, 3], 0) and "3-3" in solutions([3, 3], 0)


def test_matches_brute_force_on_a_sample():
    hands = list(combinations_with_replacement(range(1, 14), 4))[::37]
    for hand in hands:
        assert solvable(hand) == _brute_solvable(hand, 24), hand
        assert bool(solutions(hand)) == solvable(hand)
