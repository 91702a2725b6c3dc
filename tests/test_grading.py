"""Graders: extraction and equivalence on hand-written GSM8K- and MATH-style cases."""

import importlib.util
import logging
import threading
from fractions import Fraction
from pathlib import Path

import pytest

from curator.data.example import Example
from curator.data.grading import (
    AutoGrader,
    Grader,
    GSM8KGrader,
    MathGrader,
    NumericGrader,
    format_number,
    get_grader,
    grade_references,
    graders,
    last_boxed,
    normalize_math,
    parse_number,
    symbolic_equivalent,
    symbolic_worth_trying,
)
from curator.errors import CuratorError

GSM8K_SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "text, value",
    [
        ("72", Fraction(72)),
        ("1,234", Fraction(1234)),
        ("$1,234.50", Fraction(246900, 200)),
        ("-5", Fraction(-5)),
        ("18 dollars", Fraction(18)),
        ("3.", Fraction(3)),
        ("3/4", Fraction(3, 4)),
        ("50%", Fraction(50)),
        (".5", Fraction(1, 2)),
        ("1e3", Fraction(1000)),
        ("-$7", Fraction(-7)),
        ("12 apples per day.", Fraction(12)),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1,2", "(1, 2)", "x+1", "3/0"])
def test_parse_number_rejects_non_numbers(text):
    assert parse_number(text) is None


@pytest.mark.parametrize(
    "value, text",
    [
        (Fraction(12), "12"),
        (Fraction(-7, 2), "-3.5"),
        (Fraction(1, 3), "1/3"),
        (Fraction(1, 8), "0.125"),
    ],
)
def test_format_number(value, text):
    assert format_number(value) == text


# ---------------------------------------------------------------- GSM8K


@pytest.mark.parametrize(
    "completion, expected",
    [
        (GSM8K_SOLUTION, "72"),
        ("so the total is\n#### 1,234", "1234"),
        ("#### $18", "18"),
        ("#### 18 dollars.", "18"),
        ("#### -5", "-5"),
        ("#### 3.50", "3.5"),
        ("#### 5 (five apples)", "5"),
        ("#### 1\n#### 2", "2"),  # the last one counts
        ("She has 4 left. The answer is 42.", "42"),
        ("The final answer is: $1,000", "1000"),
    ],
)
def test_gsm8k_extract(completion, expected):
    assert GSM8KGrader().extract(completion) == expected


@pytest.mark.parametrize("completion", ["I think 5 apples", "####", "#### none", ""])
def test_gsm8k_extract_none(completion):
    assert GSM8KGrader().extract(completion) is None


def test_gsm8k_is_correct_variants():
    g = GSM8KGrader()
    assert g.is_correct(GSM8K_SOLUTION, "72")
    assert g.is_correct("#### 1,000", "1000")
    assert g.is_correct("#### $1000.00", "1,000")
    assert g.is_correct("#### 0.3333333", "0.33333333")  # within the 1e-6 relative tolerance
    assert not g.is_correct("#### 0.33", "1/3")
    assert not g.is_correct(GSM8K_SOLUTION, "73")
    assert not g.is_correct("24 and then 72", "72")  # no '####' and no "answer is": no answer
    assert not g.is_correct("", "72")


# ---------------------------------------------------------------- MATH boxed


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{a{b}c} and later \boxed{\dfrac{\sqrt{3}}{2}}", r"\dfrac{\sqrt{3}}{2}"),
        (r"\fbox{3}", "3"),
        (r"$\boxed 5$", "5"),
        (r"\boxed{\left( 1, 2 \right)}", r"\left( 1, 2 \right)"),
        (r"no box here", None),
        (r"\boxed{unbalanced", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "pred, ref",
    [
        (r"\frac12", "0.5"),
        (r"\dfrac{1}{2}", "1/2"),
        (r"\tfrac{3}{4}", "0.75"),
        (r"\frac{1}{2}", r"\frac12"),
        (r".5", r"\frac{1}{2}"),
        (r"\left(1,2\right)", "(1, 2)"),
        (r"10\text{ cm}", "10"),
        (r"5 \text{ square units}", "5"),
        (r"10 \mbox{ inches}", "10"),
        (r"90^\circ", "90"),
        (r"90^{\circ}", "90"),
        (r"50\%", "50"),
        (r"x = 5", "5"),
        (r"k=\frac{1}{3}", r"\frac13"),
        (r"5.", "5"),
        (r"\text{(A)}", "(A)"),
        (r"\frac{\sqrt{3}}{2}", r"\dfrac{\sqrt3}{2}"),
        (r"1,000", "1000"),
        (r"-\frac{1}{3}", r"\frac{-1}{3}"),
        (r"(-\infty, 3]", r"(-\infty,3]"),
        (r"2.50", "2.5"),
        (r"\$18", "18"),
        (r"3\sqrt{2}", r"3 \sqrt 2"),
    ],
)
def test_math_equivalent(pred, ref):
    # the fast path alone (the normaliser): these need no algebra
    assert MathGrader(symbolic=False).equivalent(pred, ref)
    assert MathGrader(symbolic=False).equivalent(ref, pred)


@pytest.mark.parametrize(
    "pred, ref",
    [
        ("2", "3"),
        (r"\frac{1}{3}", "0.333"),
        (r"\frac{1}{2}", r"\frac{2}{1}"),
        ("(1,2)", "(2,1)"),
        (r"\sqrt{2}", "2"),
        ("x+1", "x-1"),
    ],
)
def test_math_not_equivalent(pred, ref):
    assert not MathGrader(symbolic=False).equivalent(pred, ref)
    assert not MathGrader().equivalent(pred, ref)


def _math_pairs():
    rows = []
    for line in (Path(__file__).parent / "data" / "math_pairs.tsv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            expected, pred, ref, why = line.split("\t")
            rows.append(pytest.param(expected == "1", pred, ref, id=f"{expected}:{pred}|{ref}"))
    return rows


MATH_PAIRS = _math_pairs()
# hand-checked pairs neither grader gets right (math-verify does not read \overline)
KNOWN_MISSES = {(r"0.\overline{3}", r"\frac13")}
ISSUE_PAIRS = [
    (r"2\sqrt2", r"\sqrt8"),
    (r"\frac{\sqrt2}{2}", r"\frac1{\sqrt2}"),
    (r"2^{10}", "1024"),
    (r"3\frac12", r"\frac72"),
    (r"\{1,2\}", r"\{2,1\}"),
    (r"\text{(B)}", "B"),
]


def test_math_pair_set_is_large_and_balanced():
    assert len(MATH_PAIRS) >= 60
    equal = sum(p.values[0] for p in MATH_PAIRS)
    assert equal >= 20 and len(MATH_PAIRS) - equal >= 20
    pairs = {(p.values[1], p.values[2]) for p in MATH_PAIRS}
    assert set(ISSUE_PAIRS) <= pairs and KNOWN_MISSES <= pairs


@pytest.mark.parametrize("expected, pred, ref", MATH_PAIRS)
def test_math_grader_on_hand_checked_pairs(expected, pred, ref):
    if (pred, ref) in KNOWN_MISSES:
        pytest.xfail("a known miss of both graders (docs/GRADING.md)")
    g = MathGrader()
    assert g.symbolic  # math-verify is a dependency
    assert g.equivalent(pred, ref) is expected
    assert g.equivalent(ref, pred) is expected
    # the fast path never calls different answers equal; it only misses equal ones
    if not expected:
        assert not g.normalized_equivalent(pred, ref) and not g.normalized_equivalent(ref, pred)


@pytest.mark.parametrize("pred, ref", ISSUE_PAIRS)
def test_issue_pairs_need_math_verify(pred, ref):
    assert not MathGrader(symbolic=False).equivalent(pred, ref)
    assert MathGrader().equivalent(pred, ref)
    assert MathGrader().is_correct(rf"so the answer is $\boxed{{{pred}}}$.", ref)
    assert AutoGrader().is_correct(rf"\boxed{{{pred}}}", ref)


def test_math_verify_only_on_the_main_thread(caplog):
    # math-verify's timeouts use signal.alarm, which fails off the main thread, and without them
    # 10^{10^{10}} never returns: there the grader falls back to the normaliser, and says so
    out = []
    with caplog.at_level(logging.WARNING, logger="curator.data.grading"):
        t = threading.Thread(
            target=lambda: out.append(
                (MathGrader().equivalent(r"2\sqrt2", r"\sqrt8"), MathGrader().equivalent(r"\frac12", "0.5"))
            )
        )
        t.start()
        t.join()
    assert out == [(False, True)]
    assert "off the main thread use curator's normaliser only" in caplog.text


def test_math_verify_skips_long_predictions():
    assert symbolic_worth_trying(r"2\sqrt2", r"\sqrt8")
    assert not symbolic_worth_trying("x" * 50, r"\frac12")  # math-verify takes >1 s to reject this
    assert not symbolic_worth_trying("1", "1" * 201)
    symbolic_equivalent.cache_clear()
    assert not MathGrader().equivalent("so we get " * 10, "7")
    assert symbolic_equivalent.cache_info().currsize == 0  # math-verify was not asked


def test_math_grader_without_math_verify(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "math_verify" else real(name, *a))
    g = MathGrader()
    assert not g.symbolic  # the normaliser alone: still grades, misses the algebra
    assert g.equivalent(r"\frac12", "0.5") and not g.equivalent(r"2\sqrt2", r"\sqrt8")
    with pytest.raises(CuratorError, match="needs math-verify: pip install math-verify"):
        MathGrader(symbolic=True)


def test_normalize_math_exact_forms():
    assert normalize_math(r"\dfrac12") == r"\frac{1}{2}"
    assert normalize_math(r"\left[ 0, \frac{\pi}{2} \right]") == r"[0,\frac{\pi}{2}]"
    assert normalize_math(r"1/2") == r"\frac{1}{2}"
    assert normalize_math(r"\text{Monday}") == "Monday"


def test_math_grader_on_solutions():
    g = MathGrader()
    sol = r"We get $x^2 = \frac{1}{4}$, so $x = \boxed{\dfrac{1}{2}}$."
    assert g.extract(sol) == r"\dfrac{1}{2}"
    assert g.is_correct(sol, "0.5")
    assert g.is_correct(sol, r"\frac12")
    assert g.is_correct("Thus the answer is $\\frac{3}{4}$.", "3/4")  # fallback
    assert not g.is_correct("no final answer", "3/4")


# ---------------------------------------------------------------- numeric and auto


def test_numeric_grader_takes_last_number():
    g = NumericGrader()
    assert g.extract("first 12, then 1,234.5 apples.") == "1234.5"
    assert g.extract("the ratio is 2/3") == "2/3"
    assert g.extract("x = -4") == "-4"
    assert g.extract("nothing here") is None
    assert g.is_correct("so we get 0.5", "1/2")
    assert not g.is_correct("3 then 4", "3")


def test_auto_grader_picks_by_form():
    g = AutoGrader()
    assert g.pick("... #### 5").name == "gsm8k"
    assert g.pick(r"so \boxed{5}").name == "math"
    assert g.pick("the answer is x+1").name == "math"
    assert g.pick("just 7").name == "numeric"
    assert g.is_correct(GSM8K_SOLUTION, "72")
    assert g.is_correct(r"\boxed{\frac{1}{2}}", "0.5")
    assert g.is_correct(r"\boxed{(1, 2)}", r"\left(1,2\right)")
    assert g.is_correct("we end with 9", "9")
    assert not g.is_correct(r"\boxed{3}", "4")


# ---------------------------------------------------------------- registry and reports


def test_get_grader_names_and_errors():
    assert set(graders.names()) >= {"gsm8k", "math", "numeric", "auto"}
    for name in ("gsm8k", "math", "numeric", "auto"):
        g = get_grader(name)
        assert isinstance(g, Grader) and g.name == name
    inst = MathGrader()
    assert get_grader(inst) is inst
    assert isinstance(get_grader("curator.data.grading:GSM8KGrader"), GSM8KGrader)
    with pytest.raises(CuratorError, match="Did you mean 'math'"):
        get_grader("mth")
    with pytest.raises(CuratorError, match="must be a name or a Grader"):
        get_grader(3)


def test_grade_references_counts_failures():
    exs = [
        Example.make("q1", "2 + 2 = 4\n#### 4", "4"),
        Example.make("q2", "2 + 3 = 5\n#### 5", "6", id="bad"),
        Example.make("q3", r"So $\boxed{\frac{1}{2}}$", "0.5"),
    ]
    rep = grade_references(exs, "auto")
    assert (rep.n, rep.n_correct, rep.failing_ids) == (3, 2, ["bad"])
    assert rep.rate == pytest.approx(2 / 3)
    assert "2/3 correct" in str(rep) and "bad" in str(rep)
    assert grade_references([], "gsm8k").n == 0
