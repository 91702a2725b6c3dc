"""`learnability`: prefer candidates the current model solves about half the time.

Score p(1 - p), where p is the fraction of n sampled answers that are correct: the pass-rate
filter of online RL for reasoning (DAPO's dynamic sampling drops p = 0 and p = 1 prompts; LILO and
AdaRFT prefer p near 1/2). Problems the model always or never solves teach it least; p(1 - p) is
also the variance of one sample's reward, which is what a policy gradient learns from.

Generator mode: variants of the training examples with p nearest 1/2 (strategies/variants.py).
"""

from __future__ import annotations

import numpy as np

from curator.strategy import SelectionContext, check_param
from strategies.passrate import pass_rate, recent_pass_rates
from strategies.variants import VariantsOfChosen

__all__ = ["Learnability", "pass_rate"]


class Learnability(VariantsOfChosen):
    """p(1 - p) of the sampled accuracy p: candidates solved about half the time first."""

    name = "learnability"
    needs = frozenset({"answers"})
    description = "sampled accuracy p nearest 1/2 first (score p(1-p); DAPO / LILO / AdaRFT)"

    def __init__(self, n: int = 5, grader: str = "auto"):
        check_param(self.name, "n", n, isinstance(n, int) and n >= 2, "an integer >= 2")
        self.n, self.grader = n, grader

    def score(self, ctx: SelectionContext) -> np.ndarray:
        # one pass rate per candidate: the RL seam's array, or the n sampled answers graded; a
        # candidate with no answers (NaN) scores as p = 0
        p = np.nan_to_num(recent_pass_rates(ctx, self.n, self.grader), nan=0.0)
        return p * (1.0 - p)
