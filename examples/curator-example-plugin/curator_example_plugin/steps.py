"""`most-steps`: prefer candidates whose reference solution has the most reasoning steps."""

from __future__ import annotations

import numpy as np

from curator.strategy import SelectionContext, Strategy, check_param


def count_steps(solution: str) -> int:
    """Non-empty lines of a solution, not counting the final-answer line ("#### ...")."""
    return sum(1 for line in solution.splitlines() if line.strip() and not line.startswith("####"))


class MostSteps(Strategy):
    """Longest reasoning chains first (ties in seeded random order, by the shared top-k)."""

    name = "most-steps"
    needs = frozenset()  # uses only the candidates' text: no model signals to compute
    description = "candidates with the most reasoning steps in their reference solution first"

    def __init__(self, max_steps: int = 0):
        check_param(
            self.name,
            "max_steps",
            max_steps,
            isinstance(max_steps, int) and max_steps >= 0,
            "an integer >= 0 (0 = no cap)",
        )
        self.max_steps = max_steps

    def score(self, ctx: SelectionContext) -> np.ndarray:
        steps = np.array([count_steps(e.solution) for e in ctx.pool], dtype=float)
        if self.max_steps:
            steps[steps > self.max_steps] = -np.inf  # over the cap: never before one within it
        return steps
