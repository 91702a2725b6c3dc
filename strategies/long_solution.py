"""`long-solution`: the longest reference solutions first (Kang et al.'s heuristic baseline).

Length is the number of line breaks in the solution, as the authors' code counts them
(``answer.count("\\n")`` in ``gsm8k_train13_huer.py``): in the GSM8K layout, one per reasoning
step before the ``#### answer`` line. Ties (many problems have the same number of steps) go in the
round's seeded random order, through the shared top-k.

Generator mode (strategies/variants.py): variants of the ``parents`` fraction of the training set
with the longest solutions — default 0.75, Kang's "above the 25th percentile".
"""

from __future__ import annotations

import numpy as np

from curator.strategy import SelectionContext
from strategies.variants import VariantsOfChosen, check_parents


def solution_lines(solution: str) -> int:
    """Line breaks in a solution: its reasoning steps, in the GSM8K layout."""
    return solution.count("\n")


class LongestSolution(VariantsOfChosen):
    """Most line breaks (reasoning steps) in the reference solution first."""

    name = "long-solution"
    needs = frozenset()  # the candidates' text only
    description = (
        "longest reference solutions (most lines) first, Kang et al.'s heuristic; generator mode: "
        "variants of the longest `parents` fraction of the training set"
    )

    def __init__(self, parents: float = 0.75):
        check_parents(self.name, parents)
        self.parents = float(parents)

    def score(self, ctx: SelectionContext) -> np.ndarray:
        return np.array([solution_lines(e.solution) for e in ctx.pool], dtype=np.float64)
