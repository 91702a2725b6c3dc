"""`uncertainty`: disagreement among sampled answers (entropy of the extracted final answers).

Generator mode: variants of the training examples with the most disagreement (strategies/variants.py).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from curator.strategy import SelectionContext, check_param
from strategies.variants import VariantsOfChosen


def answer_entropy(answers: Sequence[str | None]) -> float:
    """Entropy (nats) of the empirical distribution of answers; no answer (None) is one outcome."""
    if not answers:
        return 0.0
    counts = Counter(None if a is None else str(a).strip() for a in answers)
    n = len(answers)
    return float(-sum(c / n * math.log(c / n) for c in counts.values()))


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
        return np.array([answer_entropy(a) for a in ctx.signals.answers(ctx.pool, self.n)])
