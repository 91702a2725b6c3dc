"""`learnability`: prefer candidates the current model solves about half the time.

Score p(1 - p), where p is the fraction of n sampled answers that are correct: the pass-rate
filter of online RL for reasoning (DAPO's dynamic sampling drops p = 0 and p = 1 prompts; LILO and
AdaRFT prefer p near 1/2). Problems the model always or never solves teach it least; p(1 - p) is
also the variance of one sample's reward, which is what a policy gradient learns from.

Generator mode: variants of the training examples with p nearest 1/2 (strategies/variants.py).
"""

from __future__ import annotations

import numpy as np

from curator.data.grading import get_grader
from curator.strategy import SelectionContext, check_param
from strategies.passrate import recent_pass_rates
from strategies.variants import VariantsOfChosen


def pass_rate(answers: list[str | None], reference: str, grader) -> float:
    """Fraction of extracted answers equivalent to the reference (no answer counts as wrong)."""
    if not answers:
        return 0.0
    return sum(a is not None and bool(grader.equivalent(a, reference)) for a in answers) / len(answers)


class Learnability(VariantsOfChosen):
    """p(1 - p) of the sampled accuracy p: candidates solved about half the time first."""

    name = "learnability"
    needs = frozenset({"answers"})
    description = "sampled accuracy p nearest 1/2 first (score p(1-p); DAPO / LILO / AdaRFT)"

    def __init__(self, n: int = 5, grader: str = "auto"):
        check_param(self.name, "n", n, isinstance(n, int) and n >= 2, "an integer >= 2")
        self.n, self.grader = n, grader

    def score(self, ctx: SelectionContext) -> np.ndarray:
        assert ctx.signals is not None  # the loop gives a strategy the signals its `needs` declares
        if getattr(ctx.signals, "pass_rates", None) is not None:
            # an RL run's seam holds the pass rates as one array (NaN: no recent outcome, which
            # the answers path scores as p = 0): no per-prompt grading of a 100k pool each step
            p = np.nan_to_num(recent_pass_rates(ctx, self.n, self.grader), nan=0.0)
            return p * (1.0 - p)
        grader = get_grader(self.grader)
        answers = ctx.signals.answers(ctx.pool, self.n)
        p = np.array([pass_rate(a, e.answer, grader) for a, e in zip(answers, ctx.pool)])
        return p * (1.0 - p)
