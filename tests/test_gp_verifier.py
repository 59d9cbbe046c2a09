"""The GeneralPoints verifier: SPEC's reward table, feedback, diagnostics, hostile input."""

import json

import pytest

from conftest import cpu_time_under
from sftvsrl.tasks.gp import REWARDS, make_hand, verify_answer

HAND = make_hand(["A", "3", "K", "6"], ["S", "C", "S", "S"], "id")  # values 1, 3, 10, 6
OOD_HAND = make_hand(["K", "2", "7", "3"], ["S", "S", "C", "C"], "ood")  # values 13, 2, 7, 3


def answer(formula, cards=("A", "3", "K", "6"), number=(1, 3, 10, 6)):
    return json.dumps({"cards": list(cards), "number": list(number), "formula": formula})


def check(formula_or_answer, raw=False, hand=HAND, rule="id", **kw):
    text = formula_or_answer if raw else answer(formula_or_answer)
    return verify_answer(text, hand, rule, **kw)


def test_reward_table_is_the_papers():
    assert REWARDS == {
        "correct": 5.0,
        "wrong_value": -1.0,
        "wrong_numbers": -2.0,
        "unused_card": -2.0,
        "wrong_numbers_unused_card": -4.0,
        "illegal": -3.0,
        "wrong_cards": -1.5,
    }


@pytest.mark.parametrize(
    "formula", ["10*3-6*1=24", "(10*3-6)*1=24", " 10 * 3 - 6 * 1 = 24 ", "10*3-6*1", "10*3-6*1=25", "3*10-1*6\n=24"]
)
def test_correct(formula):
    a = check(formula)
    assert (a.outcome, a.reward, a.correct, a.feedback) == ("correct", 5.0, True, "")
    assert a.info["parsed"] and a.info["legal"] and a.info["value_use"]


def test_exact_fraction_accepted():
    hand = make_hand(["8", "3", "8", "3"], ["S"] * 4, "id")
    a = verify_answer(
        json.dumps({"cards": hand["cards"], "number": [8, 3, 8, 3], "formula": "8/(3-8/3)=24"}), hand, "id"
    )
    assert a.correct and a.reward == 5.0


def test_wrong_value():
    a = check("(1+6)*3+10=24")
    assert (a.outcome, a.reward, a.correct) == ("wrong_value", -1.0, False)
    assert a.feedback == "You failed this trial because your formula evaluates to 31, not 24."
    assert a.info["value_use"] and a.info["legal"]


def test_wrong_value_fraction_in_feedback():
    a = check("(1+6)/3*10=24")
    assert a.outcome == "wrong_value" and "evaluates to 70/3, not 24" in a.feedback


def test_number_not_in_hand():
    a = check("10*3-6*1+5-5=24")
    assert (a.outcome, a.reward) == ("wrong_numbers", -2.0)
    assert "you used 5, which is not among the card values" in a.feedback
    assert not a.info["value_use"]


def test_card_used_twice():
    a = check("10*3-6*1*1=24")
    assert (a.outcome, a.reward) == ("wrong_numbers", -2.0)
    assert "you used 1 more often than there are cards with that value" in a.feedback


def test_unused_card():
    a = check("10*3-6=24")
    assert (a.outcome, a.reward) == ("unused_card", -2.0)
    assert a.feedback == "You failed this trial because you did not use every card (unused: 1)."


def test_both_number_errors_add_up():
    a = check("4*6=24")
    assert (a.outcome, a.reward) == ("wrong_numbers_unused_card", -4.0)
    assert a.feedback.startswith("You failed this trial because you used 4, which is not among the card values")
    assert "and you did not use every card" in a.feedback and a.feedback.endswith(".")


@pytest.mark.parametrize(
    "formula",
    [
        "10x3-6*1=24",
        "10*3-6*1)=24",
        "(10*3-6*1=24",
        "10*3--6*1=24",
        "10 3-6*1=24",
        "=24",
        "",
        "10×3-6×1=24",
        "30÷1-6=24",
        "10*3-6*1.0=24",
        "(10*3-6*1)()=24",
        "10^2",
        "-1+10*3-6=24",
        "1*(10*3-6)/(3-3)=24",
    ],
)
def test_illegal(formula):
    a = check(formula)
    assert (a.outcome, a.reward, a.correct) == ("illegal", -3.0, False)
    assert a.feedback.startswith("You failed this trial because your formula is illegal")
    assert a.info["parsed"] and not a.info["legal"] and not a.info["value_use"]


def test_no_formula_found():
    for raw in ["", "I think the answer is 24.", '{"cards": ["A"], "number": [1]}', "10*3-6*1=24"]:
        a = check(raw, raw=True)
        assert (a.outcome, a.reward) == ("illegal", -3.0)
        assert a.feedback == "You failed this trial because your answer contains no formula."
        assert not a.info["parsed"]


def test_feedback_reads_as_a_sentence():
    for f in ["(1+6)*3+10=24", "4*6=24", "10*3-6=24", "10x"]:
        fb = check(f).feedback
        assert fb.startswith("You failed this trial because ") and fb.endswith(".") and ".." not in fb


def test_wrong_cards_only_when_checked():
    text = answer("10*3-6*1=24", cards=("A", "3", "Q", "6"))
    assert verify_answer(text, HAND, "id").correct
    a = verify_answer(text, HAND, "id", check_cards=True)
    assert (a.outcome, a.reward, a.correct) == ("wrong_cards", -1.5, False)
    assert not a.info["cards_correct"]
    assert verify_answer(answer("10*3-6*1=24"), HAND, "id", check_cards=True).correct


def test_target_parameter():
    assert verify_answer(answer("10*3-6*1+1=25"), HAND, "id", target=25).outcome == "wrong_numbers"
    hand = make_hand(["A", "3", "K", "6"], ["S"] * 4, "id")
    a = verify_answer(answer("(10+1)*3-6=27"), hand, "id", target=27)
    assert a.correct


# ---------------------------------------------------------------- diagnostics


def test_diagnostics_id():
    a = check("(1+6)*3+10=24")
    assert a.info["parsed"] and a.info["cards_correct"] and a.info["number_correct"]
    assert "rule_memorised" not in a.info
    b = verify_answer(answer("10*3-6*1", number=("1", "3", "10", "6")), HAND, "id")
    assert b.info["number_correct"]  # digit strings count
    c = verify_answer(answer("10*3-6*1", cards=("a", 3, "k", "6"), number=(1, 3, 11, 6)), HAND, "id")
    assert c.info["cards_correct"] and not c.info["number_correct"]


def test_rule_memorised_via_number_field():
    text = json.dumps({"cards": ["K", "2", "7", "3"], "number": [10, 2, 7, 3], "formula": "13*2-7+3*1=24"})
    a = verify_answer(text, OOD_HAND, "ood")
    assert a.info["rule_memorised"] and not a.info["number_correct"]


def test_rule_memorised_via_formula_numbers():
    # the model computes with K=10: the formula's numbers are the hand's ID-rule values
    text = json.dumps({"cards": ["K", "2", "7", "3"], "number": [13, 2, 7, 3], "formula": "10+7+3*2=24"})
    a = verify_answer(text, OOD_HAND, "ood")
    assert a.info["rule_memorised"] and a.outcome == "wrong_numbers_unused_card"


def test_rule_not_memorised_when_ood_values_used():
    text = json.dumps({"cards": ["K", "2", "7", "3"], "number": [13, 2, 7, 3], "formula": "13+7+2*3=24"})
    a = verify_answer(text, OOD_HAND, "ood")
    assert not a.info["rule_memorised"] and a.info["value_use"] and a.info["number_correct"]
    assert a.outcome == "wrong_value"


# ---------------------------------------------------------------- hostile input

HOSTILE_FORMULAS = [
    "__import__('os').system('x')",
    "9**9**9",
    "9" * 10_000,
    "(" * 500 + "1" + ")" * 500,
    "(" * 20 + "10*3-6*1" + ")" * 20 + "=24",  # legal depth, still fine
    "２４",
    "٢٤",
    "10*3-6*1２４=24",
    "1/0",
    "(10*3-6*1)/(6-6)",
    "999999*" * 60 + "1",
    "1" * 7 + "*1",
    "\x00",
    "lambda: 0",
    "open('/etc/passwd').read()",
]


@pytest.mark.parametrize("formula", HOSTILE_FORMULAS)
def test_hostile_formula_is_penalised_promptly(formula):
    with cpu_time_under(5.0):  # under 0.001 s on an idle machine; exponential parsing would take far longer
        a = check(formula)
    assert a.reward in (-3.0, -2.0, -4.0, 5.0)
    if formula.startswith("((((((((((((((((((((10"):
        assert a.correct
    else:
        assert not a.correct


HOSTILE_ANSWERS = [
    "",
    "x" * 1_000_000,
    '{"formula": "' + "1+" * 500_000 + '1"}',
    '{"formula": "' + "\\" * 1_000_000,
    '"formula": "' * 100_000,
    '{"cards": ' + "[" * 100_000,
    '{"cards": [' + "," * 1_000_000 + "]}",
    '{"number": [' + " " * 1_000_000 + "1]}",
    '{"formula": 24, "cards": "A,3,K,6", "number": "1,3,10,6"}',
    '{"formula": ["10*3-6*1"], "cards": {"a": 1}, "number": [true, null, 1.5, {}]}',
    '{"formula": null}',
    "{" * 100_000,
]


@pytest.mark.parametrize("text", HOSTILE_ANSWERS, ids=range(len(HOSTILE_ANSWERS)))
def test_hostile_answer_is_penalised_promptly(text):
    with cpu_time_under(5.0):  # at most 0.02 s on an idle machine; quadratic parsing of 1 MB would not be
        a = verify_answer(text, HAND, "id")
    assert a.reward == -3.0 and a.outcome == "illegal"


def test_non_string_answer_does_not_crash():
    for bad in (None, 24, ["10*3-6*1=24"]):
        assert verify_answer(bad, HAND, "id").reward == -3.0


def test_big_literals_count_as_illegal_or_foreign():
    assert check("100000*0+10*3-6*1").outcome == "wrong_numbers"  # 6 digits: a foreign number
    assert check("1000000*0+10*3-6*1").outcome == "illegal"  # 7 digits: over the literal cap


def test_only_the_text_before_equals_is_checked():
    assert check("10*3-6*1=２４").correct  # what follows "=" is never read
