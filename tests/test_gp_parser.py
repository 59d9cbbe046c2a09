"""Reading messy model answers and formulas without ever evaluating them as Python."""

from fractions import Fraction

import pytest

from sftvsrl.tasks.gp_formula import MAX_DEPTH, FormulaError, formula_part, parse_answer, parse_formula, tokenize

EXPECTED = {"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "10*3-6*1=24"}

MESSY = {
    "plain": '{"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "10*3-6*1=24"}',
    "fenced": '```json\n{"cards": ["A", "3", "K", "6"],\n "number": [1, 3, 10, 6],\n "formula": "10*3-6*1=24"}\n```',
    "prose": 'Let me think. 10 times 3 is 30.\nHere is my answer: {"cards": ["A", "3", "K", "6"], '
    '"number": [1, 3, 10, 6], "formula": "10*3-6*1=24"} I hope this helps!',
    "single_quotes": "{'cards': ['A', '3', 'K', '6'], 'number': [1, 3, 10, 6], 'formula': '10*3-6*1=24'}",
    "trailing_commas": '{"cards": ["A", "3", "K", "6",], "number": [1, 3, 10, 6,], "formula": "10*3-6*1=24",}',
    "no_closing_brace": '{"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "10*3-6*1=24"',
    "truncated_string": '{"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "10*3-6*1=24',
    "multiline": '{\n  "cards": [\n    "A",\n    "3",\n    "K",\n    "6"\n  ],\n  "number": [\n    1,\n    3,\n'
    '    10,\n    6\n  ],\n  "formula": "10*3-6*1=24"\n}',
    "escaped": '{"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "10*3-6*1=\\u0032\\u0034"}',
    "template_echo": 'Output format: {"cards": [...], "number": [...], "formula": "..."}\n'
    '{"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "10*3-6*1=24"}',
    "repeated": '{"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "10*3-6*1=24"}\n'
    '{"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "10*3-6*1=24"}\n{"cards": [',
}


@pytest.mark.parametrize("name", sorted(MESSY))
def test_messy_answers(name):
    assert parse_answer(MESSY[name]) == EXPECTED


def test_formula_with_spaces_and_unquoted_cards():
    out = parse_answer(
        "{cards: x, 'cards': [A, 3, K, 6], 'number': [1, 3, 10, 6], 'formula': ' 10 * 3 - 6 * 1 = 24 '}"
    )
    assert out["cards"] == ["A", 3, "K", 6]
    assert parse_formula(out["formula"]).value == 24


def test_wrong_types_are_returned_not_raised():
    out = parse_answer('{"cards": "A 3 K 6", "number": ["1", "3", "10", "6"], "formula": 24}')
    assert out == {"cards": "A 3 K 6", "number": ["1", "3", "10", "6"]}
    assert parse_answer('{"cards": {"x": 1}, "number": [[1], [2]], "formula": ["1+1"]}') == {"number": [[1], [2]]}
    assert parse_answer('{"number": [1.0, -2, true, null]}') == {"number": [1.0, -2, "true", "null"]}


@pytest.mark.parametrize("text", [None, 24, b'{"formula": "1"}', "", "no json here", "{}", "{'formula'}"])
def test_nothing_to_read(text):
    assert "formula" not in parse_answer(text)


def test_keys_must_be_quoted():
    # prose mentioning a formula is not an answer
    assert parse_answer("The formula: 10*3-6*1=24") == {}


def test_formula_part():
    assert formula_part("10*3-6*1=24") == "10*3-6*1"
    assert formula_part("10*3-6*1") == "10*3-6*1"
    assert formula_part("=24") == ""
    assert formula_part("1+1=2=24") == "1+1"


def test_tokenize():
    assert tokenize(" (10 + 3)*\t4/2 ") == ["(", "10", "+", "3", ")", "*", "4", "/", "2"]
    with pytest.raises(FormulaError):
        tokenize("1.5")
    with pytest.raises(FormulaError):
        tokenize("1\u00a0+1")  # a non-ASCII space


@pytest.mark.parametrize(
    "text,value",
    [
        ("8/(3-8/3)", 24),
        ("1+2*3", 7),
        ("(1+2)*3", 9),
        ("10-4-3", 3),
        ("24/4/2", 3),
        ("7/2", Fraction(7, 2)),
        ("((((5))))", 5),
        ("  1 +\n 1 ", 2),
        ("08+16", 24),
    ],
)
def test_exact_values(text, value):
    assert parse_formula(text).value == value


def test_numbers_in_order():
    assert parse_formula("(10*3)-(6*1)=24").numbers == (10, 3, 6, 1)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "()",
        "1+",
        "+1",
        "-1",
        "1 2",
        "(1+2",
        "1+2)",
        ")(",
        "1**2",
        "2^3",
        "1//2",
        "3x4",
        "3×4",
        "6÷2",
        "1.5*16",
        "２４",
        "٢٤",
        "abs(24)",
        "1/0",
        "4/(2-2)",
        "1e3",
        "0x18",
        "24,",
        "[24]",
    ],
)
def test_illegal_formulas(text):
    with pytest.raises(FormulaError):
        parse_formula(text)


def test_depth_limit():
    ok = "(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH
    assert parse_formula(ok).value == 1
    with pytest.raises(FormulaError, match="nested"):
        parse_formula("(" + ok + ")")


def test_literal_and_length_limits():
    assert parse_formula("999999").value == 999999
    with pytest.raises(FormulaError, match="digits"):
        parse_formula("1000000")
    with pytest.raises(FormulaError, match="longer"):
        parse_formula("1+" * 300 + "1")
