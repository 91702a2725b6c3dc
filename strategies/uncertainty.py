"""`uncertainty`: disagreement among sampled answers (entropy of the extracted final answers).

Generator mode: variants of the training examples with the most disagreement (strategies/variants.py).
"""

from __future__ import annotations

import numpy as np

from curator.dynamics.metrics import answer_entropy
from curator.strategy import SelectionContext, check_param
from strategies.variants import VariantsOfChosen

__all__ = ["AnswerEntropy", "answer_entropy"]


class AnswerEntropy(VariantsOfChosen):
    """Entropy of the final answers over n sampled completions per candidate."""

    name = "uncertainty"
    needs = frozenset({"answers"})
    description = "most disagreement among n sampled answers (answer entropy) first"

    def __init__(self, n: int = 5):
        check_param(self.name, "n", n, isinstance(n, int) and n >= 2, "an integer >= 2")
        self.n = n

    def score(self, ctx: SelectionContext) -> np.ndarray:
        assert ctx.signals is not None  # the loop gives a strategy the signals its `needs` declares
        fast = getattr(ctx.signals, "answer_entropies", None)
        if fast is not None:  # an RL run's seam: one array, without a 100k-prompt loop each step
            return np.asarray(fast(ctx.pool), dtype=np.float64)
        return np.array([answer_entropy(a) for a in ctx.signals.answers(ctx.pool, self.n)])
