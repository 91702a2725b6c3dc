"""Pass-rate strategies for RL on verifiable rewards (and the SFT loop, from sampled answers).

- `pass-rate-band`: keep prompts whose recent pass rate lies in [lo, hi] (the curriculum band of
  verl's and Reasoning360's pass-rate samplers). Score 1 in the band, 0 outside it, ``unseen``
  (default 0.5) for a prompt with no recent outcome: known in-band prompts first, then unexplored
  ones, then those known to be too easy or too hard; ties broken at random by the shared top-k.
- `drop-solved-failed`: DAPO's dynamic sampling as a selection rule — a prompt whose recent
  rollouts were all correct or all wrong gives a GRPO group zero advantage, so it scores 0; every
  other prompt (including ones not seen recently) scores 1, drawn at random among themselves.

"Recent pass rate" is the fraction correct among the prompt's completions in the latest window it
was drawn in (see curator.integrations.rl; in the SFT loop: among ``n`` sampled answers now).
"""

from __future__ import annotations

import math

import numpy as np

from curator.data.grading import get_grader
from curator.strategy import SelectionContext, Strategy, check_param


def pass_rate(answers: list[str | None], reference: str, grader) -> float:
    """Fraction of extracted answers equivalent to the reference (no answer counts as wrong)."""
    if not answers:
        return 0.0
    return sum(a is not None and bool(grader.equivalent(a, reference)) for a in answers) / len(answers)


def recent_pass_rates(ctx: SelectionContext, n: int, grader: str) -> np.ndarray:
    """One pass rate per pool candidate; NaN where nothing recent is known.

    In an RL run the seam's signals hold the rates already (``pass_rates``, one array); elsewhere
    they come from ``n`` sampled answers graded against each candidate's reference answer.
    """
    signals = ctx.signals
    assert signals is not None  # the loop gives a strategy the signals its `needs` declares
    fast = getattr(signals, "pass_rates", None)
    if fast is not None:
        return np.asarray(fast(ctx.pool), dtype=np.float64)
    g = get_grader(grader)
    answers = signals.answers(ctx.pool, n)
    return np.array([pass_rate(a, e.answer, g) if a else math.nan for a, e in zip(answers, ctx.pool)], dtype=np.float64)


class PassRateBand(Strategy):
    """Prompts whose recent pass rate lies in [lo, hi] first; unexplored ones next."""

    name = "pass-rate-band"
    needs = frozenset({"answers"})
    description = "recent pass rate in [lo, hi] first, then prompts with no recent outcome (RL curriculum band)"

    def __init__(self, lo: float = 0.2, hi: float = 0.8, unseen: float = 0.5, n: int = 5, grader: str = "auto"):
        ok = isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0.0 <= lo <= hi <= 1.0
        check_param(self.name, "lo/hi", (lo, hi), ok, "numbers with 0 <= lo <= hi <= 1")
        check_param(self.name, "unseen", unseen, isinstance(unseen, (int, float)) and 0.0 <= unseen <= 1.0, "in [0, 1]")
        check_param(self.name, "n", n, isinstance(n, int) and n >= 1, "an integer >= 1")
        self.lo, self.hi, self.unseen, self.n, self.grader = float(lo), float(hi), float(unseen), n, grader

    def score(self, ctx: SelectionContext) -> np.ndarray:
        p = recent_pass_rates(ctx, self.n, self.grader)
        known = ~np.isnan(p)
        inside = known & (p >= self.lo - 1e-12) & (p <= self.hi + 1e-12)
        return np.where(known, inside.astype(np.float64), self.unseen)


class DropSolvedFailed(Strategy):
    """DAPO dynamic sampling: never prompts whose recent rollouts were all right or all wrong."""

    name = "drop-solved-failed"
    needs = frozenset({"answers"})
    description = "drop prompts recently all-correct or all-wrong (DAPO dynamic sampling); the rest at random"

    def __init__(self, n: int = 5, grader: str = "auto"):
        check_param(self.name, "n", n, isinstance(n, int) and n >= 1, "an integer >= 1")
        self.n, self.grader = n, grader

    def score(self, ctx: SelectionContext) -> np.ndarray:
        p = recent_pass_rates(ctx, self.n, self.grader)
        degenerate = ~np.isnan(p) & ((p <= 0.0) | (p >= 1.0))
        return np.where(degenerate, 0.0, 1.0)
