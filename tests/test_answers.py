"""The shared answer reader and seed derivation (sftvsrl.tasks.answers)."""

import hashlib
from pathlib import Path
from random import Random

import pytest

from conftest import cpu_time_under
from sftvsrl.tasks import answers, gp, gp_formula, virl, virl_city
from sftvsrl.tasks.answers import (
    MAX_ANSWER_CHARS,
    MAX_LIST_ITEMS,
    MAX_NESTING,
    Field,
    derive_seed,
    parse_objects,
    scan_fields,
)

GP = {"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "10*3-6*1=24"}
VIRL = {
    "current observation": "Joe's Pizza is on your left. You observe an intersection.",
    "current instruction": "Turn left to face west.",
    "action": "turn_direction(west)",
}

# Outputs in the shapes small chat models produce.
MESSY_GP = {
    "reasoning_then_json": "Let's see: A=1, 3, K=10, 6.\n10*3 = 30, 30-6 = 24... so:\n\n"
    '{"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "10*3-6*1=24"}',
    "fenced_crlf": '```json\r\n{\r\n  "cards": ["A", "3", "K", "6"],\r\n  "number": [1, 3, 10, 6],\r\n'
    '  "formula": "10*3-6*1=24"\r\n}\r\n```',
    "python_dict": "{'cards': ['A', '3', 'K', '6'], 'number': [1, 3, 10, 6], 'formula': '10*3-6*1=24',}",
    "wrapped": '{"answer": {"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "10*3-6*1=24"}}',
    "mixed_quotes_key": '{"cards": ["A", "3", "K", "6"], "number\': [1, 3, 10, 6], "formula": "10*3-6*1=24"}',
    "unclosed_before_brace": '{"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "10*3-6*1=24}',
    "formula_broken_over_lines": '{"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "10*3-\n6*1=24"}',
    "stray_quote_in_cards": '{"cards": ["A", "3", "K", ""6"], "number": [1, 3, 10, 6], "formula": "10*3-6*1=24"}',
    "template_then_two_answers": 'Format: {"cards": [...], "number": [...], "formula": "..."}\n'
    '{"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "10*3-6*1=24"}\n'
    '{"cards": ["2", "2", "2", "2"], "number": [2, 2, 2, 2], "formula": "2*2*2*2+2=18"}',
}

MESSY_VIRL = [
    (
        '{"current observation": "Joe\'s Pizza is on your left. You observe an intersection.", '
        '"current instruction": "Turn left to face west.", "action": "turn_direction(west)"}'
    ),
    (
        "A_3: {'current observation': 'Joe's Pizza is on your left. You observe an intersection.', "
        "'current instruction': 'Turn left to face west.', 'action': 'turn_direction(west)',}"
    ),
    (
        "current observation: Joe's Pizza is on your left. You observe an intersection.\n"
        "current instruction: Turn left to face west.\naction: turn_direction(west)\n"
    ),
    (
        '```\n{"Current_Observation": "Joe\'s Pizza is on your left. You observe an intersection.",\n'
        ' "Current_Instruction": "Turn left to face west.",\n "Action": "turn_direction(west)"}\n```'
    ),
    (
        '{"current observation": "Joe\'s Pizza is on your left. You observe an intersection.", '
        '"current instruction": "Turn left to face west.", action": "turn_direction(west)"}'
    ),
]


# ---------------------------------------------------------------- seeds


def test_derive_seed_is_sha256_of_the_joined_parts():
    assert derive_seed("a") == int.from_bytes(hashlib.sha256(b"a").digest()[:8], "big")
    assert derive_seed(1, "route", "rl", 0) == derive_seed("1/route/rl/0")
    assert derive_seed(1, "route", "rl", 0) != derive_seed(1, "route", "rl", 1)
    assert 0 <= derive_seed("x") < 2**64


def test_one_seed_derivation_for_both_tasks():
    assert virl_city.derive_seed is answers.derive_seed  # the routes draw their seeds where the task does
    # gp keeps its gp-1 digest text, so its data stay byte-identical
    text = repr((gp.TASK_NAME, gp.GENERATOR_VERSION, 0, "pools"))
    legacy = Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))
    assert gp._rng(0, "pools").random() == legacy.random()


# ---------------------------------------------------------------- messy answers


@pytest.mark.parametrize("name", sorted(MESSY_GP))
def test_messy_gp_answers(name):
    assert gp_formula.parse_answer(MESSY_GP[name]) == (
        {"formula": GP["formula"].replace("-", "-\n", 1), "cards": GP["cards"], "number": GP["number"]}
        if name == "formula_broken_over_lines"
        else {"formula": GP["formula"], "number": GP["number"]}
        if name == "stray_quote_in_cards"
        else GP
    )


@pytest.mark.parametrize("text", MESSY_VIRL)
def test_messy_virl_answers(text):
    assert virl.parse_answer(text) == VIRL


def test_objects_are_grouped_and_fields_keep_their_place():
    text = 'Sure. {"a": "x {not an object}", "b": [1, 2]} then {"a": "y"}\nc: 3'
    assert parse_objects(text) == [{"a": "x {not an object}", "b": [1, 2]}, {"a": "y"}, {"c": 3}]
    fields = scan_fields(text)
    assert fields[0] == Field(text.index('"a"'), "a", "x {not an object}", 1, True)
    assert fields[0].obj == fields[1].obj < fields[2].obj < fields[3].obj


def test_line_start_keys_and_repeated_keys():
    assert parse_objects("cards: [A, 3]\nformula: 1+2=3") == [{"cards": ["A", 3], "formula": "1+2=3"}]
    assert parse_objects('{"a": 1, "a": 2}') == [{"a": 2}]  # the last one, as in JSON


def test_quoted_flag():
    keys = {(f.key, f.quoted) for f in scan_fields("""{a: 1, "b": 2, 'c': 3, "d: 4, e": 5}""")}
    assert keys == {("a", False), ("b", True), ("c", True), ("d", False), ("e", False)}
    assert scan_fields("The formula: 10*3-6*1=24")[0].quoted is False


def test_values():
    obj = parse_objects(
        '{"i": -2, "f": 1.5, "t": true, "n": null, "s": "a\\"b\\u0041", "bare": forward() ,'
        '"list": [1, two, "3", [4, [5]]], "empty": [], "open": [1, 2'
    )[0]
    assert obj == {
        "i": -2,
        "f": 1.5,
        "t": "true",
        "n": "null",
        "s": 'a"bA',
        "bare": "forward()",
        "list": [1, "two", "3", [4, [5]]],
        "empty": [],
        "open": [1, 2],
    }


@pytest.mark.parametrize(
    "value",
    [
        '["a"b]',  # items run together
        "[1, x: 2]",  # a key inside: the list ran into the next field
        "[" + "1, " * (MAX_LIST_ITEMS + 1) + "]",
        "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1),
        "{}",  # an object is no value
        ",",
    ],
)
def test_unreadable_values_are_left_out(value):
    text = '{"x": ' + value + ', "y": 1}'
    fields = scan_fields(text)
    assert fields[-1] == Field(text.index('"y"'), "y", 1, 1, True)
    assert all(f.pos != text.index('"x"') for f in fields)


def test_strings():
    assert parse_objects("{'s': 'it's', 't': 'a''}")[0]["s"] == "it's"
    assert parse_objects('{"s": "unclosed, then more}\n"t": 1') == [{"s": "unclosed, then more"}, {"t": 1}]
    assert parse_objects('{"s": "two\nlines"}')[0]["s"] == "two\nlines"
    assert parse_objects('{"s": "cut\n{"t": "x"}') == [{"s": "cut", "t": "x"}]
    long = "x" * (answers.MAX_STRING_CHARS + 10)
    assert parse_objects('{"s": "' + long + '"}')[0]["s"] == long[: answers.MAX_STRING_CHARS]


@pytest.mark.parametrize("text", [None, 24, b'{"a": 1}', ["{}"], "", "no json", "{}", "{'a'}", "[1, 2]"])
def test_nothing_to_read(text):
    assert scan_fields(text) == [] and parse_objects(text) == []


# ---------------------------------------------------------------- safety and bounds


def test_never_evaluates_the_text(tmp_path):
    marker = tmp_path / "pwned"
    hostile = f"{{'formula': __import__('os').system('touch {marker}'), 'x': [eval('1')]}}"
    obj = parse_objects(hostile)[0]
    assert obj["formula"] == f"__import__('os').system('touch {marker}')"
    assert not marker.exists()
    source = Path(answers.__file__).read_text()
    for banned in ("eval(", "exec(", "import ast", "literal_eval(", "json.loads(", "__import__", "compile("):
        assert banned not in source.replace("re.compile(", "")


MEGA = 1_000_000
ADVERSARIAL = {
    "brackets": "[" * MEGA,
    "braces": "{" * MEGA,
    "quotes": '"' * MEGA,
    "apostrophes": "'a'b" * (MEGA // 4),
    "backslashes": '{"a": "' + "\\" * MEGA,
    "deep_lists": '{"number": ' + "[" * MEGA + "]" * MEGA + "}",
    "deep_objects": '{"a": ' * (MEGA // 6),
    "many_keys": '"formula": ' * (MEGA // 11),
    "many_bare_keys": ",a:" * (MEGA // 3),
    "many_lists": '{"a": [' * (MEGA // 7),
    "long_list": '{"cards": [' + "1," * (MEGA // 2) + "]}",
    "commas": '{"cards": [' + "," * MEGA + "]}",
    "long_string": '{"formula": "' + "1" * MEGA + '"}',
    "long_word": "{a: " + "x" * MEGA,
    "words": ",a a a a a a a a a a" * (MEGA // 20),
    "lines": '{"a": "x\n' * (MEGA // 9),
    "spaces_before_colon": '"a"' + " " * MEGA + ":",
    "escapes": '{"formula": "' + "\\u0032" * (MEGA // 6) + '"}',
    "valid_objects": '{"cards": ["A", "3"], "number": [1, 3], "formula": "1+3=4"} ' * (MEGA // 60),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_input_is_read_in_bounded_time(name):
    text = ADVERSARIAL[name]
    with cpu_time_under(5.0):  # at most 0.09 s on an idle machine; quadratic parsing of 1 MB would not be
        fields = scan_fields(text)
        gp_formula.parse_answer(text)
        virl.parse_answer(text)
    assert len(fields) <= answers.MAX_TOKENS


def test_only_the_head_of_a_huge_answer_is_read():
    tail = '{"formula": "1+1=2"}'
    assert parse_objects(" " * MAX_ANSWER_CHARS + tail) == []
    assert parse_objects(" " * (MAX_ANSWER_CHARS - len(tail)) + tail) == [{"formula": "1+1=2"}]
