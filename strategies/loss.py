"""`loss`: the candidates the current model finds hardest (highest mean target NLL).

Generator mode: variants of the training examples with the highest loss (strategies/variants.py).
"""

from __future__ import annotations

import numpy as np

from curator.strategy import SelectionContext
from strategies.variants import VariantsOfChosen


class HighestLoss(VariantsOfChosen):
    """Highest mean per-token NLL of the candidate's target solution under the current model."""

    name = "loss"
    needs = frozenset({"losses"})
    description = (
        "highest target loss (lowest likelihood of the reference solution) first; generator mode: "
        "variants of the highest-loss 3/4 of the training set"
    )

    def score(self, ctx: SelectionContext) -> np.ndarray:
        assert ctx.signals is not None  # the loop gives a strategy the signals its `needs` declares
        nll = ctx.signals.losses(ctx.pool)
        return np.where(np.isnan(nll), -np.inf, nll)  # an empty target has no loss: take last
