"""Final-answer extraction and equivalence.

A `Grader` pulls the final answer out of a completion (`extract`) and decides whether it matches
a reference answer (`equivalent`). Built-ins, registered in `graders`:

- ``gsm8k``: the answer after the last ``#### `` line (commas, ``$``, units, trailing period
  ignored); fallback "The answer is X"; numeric equality with a small tolerance.
- ``math``: the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces), fallback "The answer is X";
  equality after the usual MATH normalisation (``\\frac``/``\\dfrac``, ``\\left``/``\\right``,
  ``\\text{}``, degrees, percent, ``x =``, spaces ...) or numerically (``0.5`` = ``\\frac12``);
  failing both, symbolically with math-verify when it is installed (``2\\sqrt2`` = ``\\sqrt8``,
  ``\\{1,2\\}`` = ``\\{2,1\\}``). docs/GRADING.md compares the two.
- ``numeric``: the last number in the completion.
- ``auto``: picks one of the above from what the completion looks like.
"""

from __future__ import annotations

import abc
import functools
import importlib.util
import logging
import math
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from curator.errors import CuratorError
from curator.registry import Registry

if TYPE_CHECKING:
    from curator.data.example import Example

graders: Registry[type[Grader] | Grader] = Registry("grader", entry_point_group="curator.graders")

# ---------------------------------------------------------------- numbers

# a number as people write it: optional sign, thousands separators, decimals, leading-dot decimals
_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+"
_NUM_RE = re.compile(rf"(?<![\w.])(?:{_NUM})(?:\s*/\s*(?:\d+))?")
_ANSWER_IS_RE = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)


def parse_number(text: str) -> Fraction | None:
    """The value of a plain number string: ``"1,234"``, ``"$3.50"``, ``"-2"``, ``"3/4"``, ``"1e3"``.

    Currency signs, a trailing unit word, a percent sign and a trailing period are ignored. Returns
    None when the text is not a single number.
    """
    s = text.strip().replace("\u2212", "-")  # unicode minus
    s = s.rstrip(".").strip()
    s = re.sub(r"^\$\s*|(?<=[-+])\s*\$\s*", "", s)  # "$5", "-$5"
    s = re.sub(r"\\?%$|\s*percent$", "", s).strip()
    # drop trailing unit words ("18 dollars", "5 cm", "12 apples per day")
    s = re.sub(r"(?<=[\d.])\s+[A-Za-z][A-Za-z .'/-]*$", "", s).strip()
    m = re.fullmatch(rf"({_NUM})(?:\s*/\s*({_NUM}))?", s)
    if not m:
        return None
    try:
        value = Fraction(m.group(1).replace(",", ""))
        if m.group(2) is not None:
            den = Fraction(m.group(2).replace(",", ""))
            if den == 0:
                return None
            value = value / den
    except (ValueError, ZeroDivisionError):
        return None
    return value


def format_number(value: Fraction) -> str:
    """Canonical text of a number: ``"12"``, ``"-3.5"``, ``"1/3"`` (no float noise)."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:  # terminating decimal
        digits = max(len(str(value.denominator)), 1) + 2
        text = f"{float(value):.{digits}f}".rstrip("0").rstrip(".")
        if Fraction(text) == value:
            return text
    return f"{value.numerator}/{value.denominator}"


def numbers_close(a: Fraction, b: Fraction, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    """Exact equality, or float closeness within a small tolerance (rounded decimals)."""
    if a == b:
        return True
    return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=abs_tol)


def last_number(text: str) -> str | None:
    """The last number written in the text, as written (``"1,234.5"``, ``"-3"``, ``"2/3"``)."""
    found = _NUM_RE.findall(text.replace("\u2212", "-"))
    return found[-1].strip() if found else None


def _answer_is(text: str) -> str | None:
    """What follows the last "The answer is" (up to the end of that line), or None."""
    hits = list(_ANSWER_IS_RE.finditer(text))
    if not hits:
        return None
    ans = hits[-1].group(1).split("\n")[0].strip()
    ans = ans.strip().rstrip(".").strip()
    if ans.startswith("$") and ans.endswith("$") and len(ans) > 1 and ans.count("$") == 2:
        ans = ans[1:-1].strip()  # inline LaTeX "$\frac12$"
    return ans or None


# ---------------------------------------------------------------- the grader contract


@runtime_checkable
class GraderProtocol(Protocol):
    name: str

    def extract(self, completion: str) -> str | None: ...

    def equivalent(self, pred: str, ref: str) -> bool: ...

    def is_correct(self, completion: str, ref_answer: str) -> bool: ...


class Grader(abc.ABC):
    """Base class: subclasses implement `extract` and `equivalent`."""

    name: str = "grader"

    @abc.abstractmethod
    def extract(self, completion: str) -> str | None:
        """The final answer in a completion, or None when there is none."""

    @abc.abstractmethod
    def equivalent(self, pred: str, ref: str) -> bool:
        """Whether an extracted answer matches a reference answer."""

    def is_correct(self, completion: str, ref_answer: str) -> bool:
        pred = self.extract(completion)
        return pred is not None and self.equivalent(pred, str(ref_answer))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@graders.register("numeric")
class NumericGrader(Grader):
    """The last number in the completion; numeric equality with tolerance."""

    name = "numeric"

    def __init__(self, rel_tol: float = 1e-6):
        self.rel_tol = rel_tol

    def extract(self, completion: str) -> str | None:
        num = last_number(completion)
        if num is None:
            return None
        value = parse_number(num)
        return format_number(value) if value is not None else None

    def equivalent(self, pred: str, ref: str) -> bool:
        a, b = parse_number(pred), parse_number(ref)
        if a is None or b is None:
            return _squash(pred) == _squash(ref)
        return numbers_close(a, b, rel_tol=self.rel_tol)


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s).rstrip(".").lower()


@graders.register("gsm8k")
class GSM8KGrader(NumericGrader):
    """GSM8K: the text after the last ``####``; fallback "The answer is X"."""

    name = "gsm8k"

    def extract(self, completion: str) -> str | None:
        idx = completion.rfind("####")
        raw: str | None
        if idx >= 0:
            raw = completion[idx + 4 :].strip().split("\n")[0].strip()
        else:
            raw = _answer_is(completion)
            if raw is None:
                return None
        if not raw:
            return None
        value = parse_number(raw)
        if value is None:
            # "#### 18 dollars per day" is handled by parse_number; here the line holds more
            # than one number or prose around it: take its first number ("#### 5 (five)")
            first = _NUM_RE.search(raw.replace("$", ""))
            value = parse_number(first.group(0)) if first else None
        return format_number(value) if value is not None else None


# ---------------------------------------------------------------- MATH


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces), or ``\\boxed 5``."""
    best = None
    for m in re.finditer(r"\\(?:boxed|fbox)\b", text):
        best = m
    if best is None:
        return None
    i = best.end()
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            c = text[j]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j]
        return None  # unbalanced braces: no answer rather than a wrong one
    # "\boxed 5" form: up to the next "$" or whitespace
    bare = re.match(r"([^\s$]+)", text[i:])
    return bare.group(1) if bare else None


def _strip_wrapper(s: str, cmd: str) -> str:
    """``\\cmd{X}`` -> ``X`` everywhere, respecting nested braces."""
    out = []
    i = 0
    pat = "\\" + cmd + "{"
    while True:
        j = s.find(pat, i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        out.append(s[i:j])
        k = j + len(pat)
        depth = 1
        start = k
        while k < len(s) and depth:
            if s[k] == "{":
                depth += 1
            elif s[k] == "}":
                depth -= 1
            k += 1
        if depth:  # unbalanced: keep the rest as is
            out.append(s[j:])
            return "".join(out)
        out.append(s[start : k - 1])
        i = k


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{b}`` -> ``\\frac{1}{b}``, ``\\frac{a}2`` -> ``\\frac{a}{2}``."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        args = []
        rest = part
        for _ in range(2):
            if rest.startswith("{"):
                depth = 0
                for k, c in enumerate(rest):
                    depth += c == "{"
                    depth -= c == "}"
                    if depth == 0:
                        args.append(rest[: k + 1])
                        rest = rest[k + 1 :]
                        break
                else:
                    args.append(rest)
                    rest = ""
            elif rest:
                args.append("{" + rest[0] + "}")
                rest = rest[1:]
        out += "".join(args) + rest
    return out


def _fix_sqrt(s: str) -> str:
    return re.sub(r"\\sqrt(?![{\[])\s*(\w)", r"\\sqrt{\1}", s)


_TEXT_UNIT_RE = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{\s*[A-Za-z][A-Za-z .]*\}\s*$")
_UNIT_WORDS = (
    "units",
    "unit",
    "sq",
    "square",
    "cm",
    "m",
    "km",
    "inches",
    "inch",
    "feet",
    "foot",
    "ft",
    "meters",
    "meter",
    "degrees",
    "degree",
    "dollars",
    "dollar",
    "cents",
    "cent",
    "hours",
    "hour",
    "minutes",
    "minute",
    "seconds",
    "second",
    "days",
    "day",
    "mph",
)


def normalize_math(answer: str) -> str:
    """Canonical string form of a MATH-style answer, for string comparison."""
    s = str(answer).strip()
    s = s.replace("\n", "").replace("\\!", "")
    for sp in ("\\,", "\\;", "\\:", "\\ ", "~"):
        s = s.replace(sp, " ")
    s = s.strip().strip("$").strip()
    inner = last_boxed(s)
    if inner is not None and re.fullmatch(r"\s*\\(?:boxed|fbox)\b.*", s):
        s = inner
    s = s.replace("\\displaystyle", "")
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    # units written as \text{ cm} after a number go away; other \text{} keep their content
    if re.search(r"[\d}]\s*" + _TEXT_UNIT_RE.pattern, s):
        s = _TEXT_UNIT_RE.sub("", s)
    for cmd in ("text", "textbf", "mbox", "mathrm", "textrm"):
        s = _strip_wrapper(s, cmd)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s)
    s = s.replace("\\degree", "").replace("°", "")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.strip().rstrip(".").strip()
    # trailing plain unit words after a number: "5 cm", "10 square units"
    m = re.fullmatch(r"(.*?\d)\s+((?:[A-Za-z]+\s*)+)", s)
    if m and all(w.lower() in _UNIT_WORDS for w in m.group(2).split()):
        s = m.group(1)
    # "x = 5", "k=\frac12": keep the right-hand side of a single short assignment
    if s.count("=") == 1:
        lhs, rhs = s.split("=")
        if re.fullmatch(r"\s*[A-Za-z](?:_\w|_\{\w+\})?\s*", lhs):
            s = rhs
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    # leading-dot decimals and "0.50" -> "0.5"
    s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)
    if re.fullmatch(r"-?(?:\d{1,3}(?:,\d{3})+)(?:\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+\.\d*?0+", s):
        s = s.rstrip("0").rstrip(".")
    # a/b with integers -> \frac{a}{b}
    m = re.fullmatch(r"(-?)(\d+)/(\d+)", s)
    if m:
        s = f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
    # one-term \frac with a minus inside: \frac{-1}{2} -> -\frac{1}{2}
    s = re.sub(r"^\\frac\{-(\w+)\}\{(\w+)\}$", r"-\\frac{\1}{\2}", s)
    return s


def math_value(normalized: str) -> Fraction | None:
    """Numeric value of a normalised MATH answer that is a plain number or simple fraction."""
    s = normalized
    m = re.fullmatch(r"(-?)\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", s)
    if m:
        try:
            den = Fraction(m.group(3))
            if den == 0:
                return None
            v = Fraction(m.group(2)) / den
        except ValueError:
            return None
        return -v if m.group(1) else v
    if re.fullmatch(rf"{_NUM}", s):
        try:
            return Fraction(s.replace(",", ""))
        except ValueError:
            return None
    return None


# ---------------------------------------------------------------- math-verify (optional)


def math_verify_available() -> bool:
    """Whether math-verify is installed (a dependency; absent only from a ``--no-deps`` install)."""
    return importlib.util.find_spec("math_verify") is not None


# math-verify bounds each parse and comparison with signal.alarm: seconds per call
_MV_TIMEOUT_S = 2
log = logging.getLogger(__name__)


def symbolic_worth_trying(pred: str, ref: str) -> bool:
    """Whether to ask math-verify at all: equivalent forms are of similar length, and sympy on a
    long string (a sentence taken for an answer) costs seconds before it says no."""
    return len(ref) <= 200 and len(pred) <= 3 * len(ref) + 20


@functools.lru_cache(maxsize=65536)
def _mv_parse(answer: str) -> tuple:
    from math_verify import parse

    # the answer is already extracted; boxing it tells math-verify to read all of it as one answer
    return tuple(parse("\\boxed{" + answer + "}", parsing_timeout=_MV_TIMEOUT_S))


@functools.lru_cache(maxsize=65536)
def symbolic_equivalent(pred: str, ref: str) -> bool:
    """math-verify's verdict on two extracted answers (sympy: ``2\\sqrt2`` = ``\\sqrt8``).

    Cached: the k samples of one prompt repeat the same few answers. An answer math-verify cannot
    parse, or that takes longer than its timeout, is not equivalent. Main thread only (the timeout
    is a signal); needs math-verify installed.
    """
    from math_verify import verify

    gold, target = _mv_parse(ref), _mv_parse(pred)
    if not gold or not target:
        return False
    # math-verify logs each timeout/parse failure as a warning; a grading run would print thousands
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return bool(verify(list(gold), list(target), timeout_seconds=_MV_TIMEOUT_S))


@functools.lru_cache(maxsize=1)
def _note_off_main_thread() -> None:
    log.warning(
        "MATH answers graded off the main thread use curator's normaliser only: math-verify's "
        "timeouts need the main thread, and without them an answer like 10^{10^{10}} never returns"
    )


@graders.register("math")
class MathGrader(Grader):
    """MATH: the last ``\\boxed{}``; normalised string or numeric equality, then math-verify.

    Args:
        rel_tol: relative tolerance of the numeric comparison.
        symbolic: check answers the normaliser calls different with math-verify. None (default):
            when math-verify is installed; True: require it; False: the normaliser alone (faster,
            misses equivalences that need algebra, see docs/GRADING.md). math-verify is skipped
            for a prediction much longer than the reference and off the main thread.
    """

    name = "math"

    def __init__(self, rel_tol: float = 1e-6, symbolic: bool | None = None):
        self.rel_tol = rel_tol
        available = math_verify_available()
        if symbolic and not available:
            raise CuratorError("symbolic MATH grading needs math-verify: pip install math-verify")
        self.symbolic = available if symbolic is None else symbolic

    def extract(self, completion: str) -> str | None:
        boxed = last_boxed(completion)
        if boxed is not None:
            return boxed.strip() or None
        return _answer_is(completion)

    def normalized_equivalent(self, pred: str, ref: str) -> bool:
        """The fast path: equal after MATH normalisation, or equal as numbers."""
        a, b = normalize_math(pred), normalize_math(ref)
        if a == b:
            return True
        va, vb = math_value(a), math_value(b)
        if va is not None and vb is not None:
            return numbers_close(va, vb, rel_tol=self.rel_tol)
        return False

    def equivalent(self, pred: str, ref: str) -> bool:
        if self.normalized_equivalent(pred, ref):
            return True
        pred, ref = pred.strip(), str(ref).strip()
        if not self.symbolic or not symbolic_worth_trying(pred, ref):
            return False
        if threading.current_thread() is not threading.main_thread():
            _note_off_main_thread()
            return False
        return symbolic_equivalent(pred, ref)

    def __repr__(self) -> str:
        return f"MathGrader(symbolic={self.symbolic})"


@graders.register("auto")
class AutoGrader(Grader):
    """Chooses by what the text looks like: ``####`` -> gsm8k, ``\\boxed`` -> math, else numeric.

    Equivalence is numeric when both sides are numbers, MATH normalisation otherwise.
    """

    name = "auto"

    def __init__(self) -> None:
        self._gsm8k = GSM8KGrader()
        self._math = MathGrader()
        self._numeric = NumericGrader()

    def pick(self, completion: str) -> Grader:
        if "####" in completion:
            return self._gsm8k
        if "\\boxed" in completion or "\\fbox" in completion:
            return self._math
        if _answer_is(completion) is not None:
            return self._math
        return self._numeric

    def extract(self, completion: str) -> str | None:
        return self.pick(completion).extract(completion)

    def equivalent(self, pred: str, ref: str) -> bool:
        a, b = parse_number(pred), parse_number(ref)
        if a is not None and b is not None:
            return numbers_close(a, b)
        return self._math.equivalent(pred, ref)


def get_grader(name: str | Grader) -> Grader:
    """A grader instance by registry name (``gsm8k``, ``math``, ``numeric``, ``auto``), a
    ``module:Class`` path, or an instance (returned as is)."""
    if not isinstance(name, str):
        if isinstance(name, GraderProtocol):
            return name
        raise CuratorError(f"grader must be a name or a Grader, got {type(name).__name__}")
    target = graders.get(name)
    return target() if isinstance(target, type) else target


# ---------------------------------------------------------------- dataset-level check


@dataclass
class GradeReport:
    """How many reference solutions grade correct against their own answers."""

    grader: str
    n: int
    n_correct: int
    failing_ids: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.n_correct / self.n if self.n else 0.0

    def __str__(self) -> str:
        text = f"reference grading ({self.grader}): {self.n_correct}/{self.n} correct ({100 * self.rate:.1f}%)"
        if self.failing_ids:
            more = f" (+{len(self.failing_ids) - 5} more)" if len(self.failing_ids) > 5 else ""
            text += f"; failing ids: {', '.join(self.failing_ids[:5])}{more}"
        return text


def grade_references(examples: Iterable[Example], grader: str | Grader = "auto") -> GradeReport:
    """Grade each Example's own solution against its answer; a sound dataset scores 100%."""
    g = get_grader(grader)
    n = n_correct = 0
    failing: list[str] = []
    for ex in examples:
        n += 1
        if g.is_correct(ex.solution, ex.answer):
            n_correct += 1
        else:
            failing.append(ex.id)
    return GradeReport(grader=g.name, n=n, n_correct=n_correct, failing_ids=failing)
